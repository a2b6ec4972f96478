"""The client's side of split training: forward to the split, then back-propagate the server's gradients.

Between sending a chunk's hidden states and receiving their gradients the client keeps no autograd graph
(in a deployment the next message may arrive in a new process). It recomputes the chunk's forward pass
with the same adapter weights and the same dropout seeds, which reproduces the sent hidden states exactly
(before any activation noise, which is additive and so passes gradients through unchanged), then
back-propagates the received gradients through it.

Staleness with ``exchange-batches = B > 1``: all B batches of a chunk are forwarded with the adapter as it
was at the start of the chunk, and their gradients are computed at that point; the client then takes B
optimiser steps with them, one per batch, in order. So batch j's update is applied j-1 steps late
(delayed-gradient SGD, staleness up to B-1 client steps). With ``B = 1`` (the default) training is exact
sequential split learning. The server half is always exact: it updates after every batch it receives.

U-shaped split: the client half also holds the head. The server returns its top hidden states; the client
computes the loss there and sends back only d loss / d top hidden (:meth:`ClientHalfTrainer.top_gradients`).
When the gradients for the split arrive, the client recomputes both ends (same seeds, same weights) and
takes one step on the whole loss: bottom gradients from the server, head gradients from its own loss.

Devices (:mod:`fedguard.model.device`): the trainer runs on the device of the half's parameters. Its methods
take batches and gradients on any device (CPU, as decoded from the wire) and return what is sent (hidden
states, top gradients) as float32 CPU tensors. ``precision = "bf16"`` autocasts the forward passes; the
adapter, its gradients, the optimiser state, the loss and the activation noise stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.model.device import autocast, batch_to, check_precision, fork_rng, module_device, secret_generator, to_wire
from fedguard.model.lora import unwrapped
from fedguard.training.decorrelation import example_decorrelation
from fedguard.training.objectives import batch_loss, example_losses

_HEAD_SEED = 0x5EED  # offset of the head's dropout seed from the batch's seed


class ClientHalfTrainer:
    """Runs the (LoRA-wrapped) client half; its trainable tensors are the client adapter.

    ``freeze_lora_a``: keep every LoRA ``A`` matrix as received (FFA-LoRA); only ``B`` is trained.
    ``activation``: clip (and noise) each example's hidden states before they are sent.
    ``precision``: ``fp32`` or ``bf16`` (autocast of the forward passes). The trainer computes on the device
    of ``half``'s parameters (:attr:`device`). ``decorrelation`` λ >= 0: add λ·dCor(input token embeddings,
    sent states) per example to the client's objective (:mod:`fedguard.training.decorrelation`).
    ``deterministic``: run the bottom without dropout, so an example's clean representation is the same at
    every release (needed to resend one noise draw: run-config ``activation-reuse``). ``token_noise_scale``
    ``[V]``: multiply the noise at each position by its token's entry (``dchi-importance``; no guarantee).
    """

    def __init__(self, half: nn.Module, learning_rate: float, freeze_lora_a: bool = False,
                 activation: ActivationMechanism | None = None, *, precision: str = "fp32",
                 decorrelation: float = 0.0, deterministic: bool = False,
                 token_noise_scale: torch.Tensor | None = None) -> None:
        self.half = half
        self.token_noise_scale = None if token_noise_scale is None else token_noise_scale.to(module_device(half))
        self.module: nn.Module = half
        self.activation = activation
        self.decorrelation = float(decorrelation)
        self.deterministic = deterministic
        self.device = module_device(half)
        self.precision = check_precision(precision)
        self._noise = secret_generator(self.device)  # never the public seed; draws on the half's device
        self.params = [p for name, p in half.named_parameters()
                       if p.requires_grad and not (freeze_lora_a and ".lora_A." in name)]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0) if self.params else None

    def close(self) -> None:
        """Release per-message resources (hooks); the cached model stays usable."""

    @property
    def core(self) -> nn.Module:
        """The client half itself (inside peft's wrapper), whose :meth:`head` the U-shaped split uses."""
        return unwrapped(self.half)

    def head_loss(self, batch: TokenBatch, top: torch.Tensor, dropout_seed: int, per_example: bool = False) -> torch.Tensor:
        """U-shape: the loss of ``batch`` given the server's top hidden states (mean, or per example)."""
        self.module.train()
        batch, top = batch_to(batch, self.device), top.to(self.device)
        with fork_rng(self.device), autocast(self.device, self.precision):
            torch.manual_seed((dropout_seed + _HEAD_SEED) % 2**31)
            logits = self.core.head(top, batch.attention_mask)
        return example_losses(logits, batch.labels) if per_example else batch_loss(logits, batch.labels)

    def top_gradients(self, batches: Sequence[TokenBatch], seeds: Sequence[int],
                      tops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """U-shape: d (mean batch loss) / d top hidden states for each batch — all that leaves the client
        (float32, on CPU)."""
        out = []
        for batch, seed, top in zip(batches, seeds, tops):
            if batch.input_ids.shape[0] == 0:
                out.append(to_wire(torch.zeros_like(top)))
                continue
            top = top.detach().to(self.device).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.head_loss(batch, top, seed), top)
            out.append(to_wire(grad))
        return out

    def forward(self, batch: TokenBatch, dropout_seed: int) -> torch.Tensor:
        """Hidden states at the split for ``batch`` (gradients enabled, on :attr:`device`, float32 whatever the
        precision), clipped if activations are private."""
        self.module.train(not self.deterministic)
        batch = batch_to(batch, self.device)
        with fork_rng(self.device), autocast(self.device, self.precision):
            torch.manual_seed(dropout_seed)
            hidden = self.module(batch.input_ids, batch.attention_mask)
        hidden = hidden.float()  # a no-op in fp32; clipping norms are privacy-relevant: float32
        return self.activation.clip(hidden, batch.attention_mask) if self.activation else hidden

    def send(self, batches: Sequence[TokenBatch], seeds: Sequence[int], keep_graph: bool = False,
             noise_keys: Sequence[Sequence[int]] | None = None) -> list[torch.Tensor]:
        """Hidden states for each batch, detached and (if configured) noised, ready to send: float32, on CPU.

        ``keep_graph``: keep each batch's autograd graph until :meth:`apply_gradients`, which then
        back-propagates through it instead of recomputing the forward pass (the data-plane transport, where the
        gradients come back to this same process; one batch per chunk).
        ``noise_keys`` (one secret 63-bit key per example of each batch): draw example i's noise from a
        generator seeded with its key, over its real tokens only — the same key gives the same noise whatever
        the batch, so with a deterministic bottom the same release is resent (``activation-reuse``).
        """
        out: list[torch.Tensor] = []
        self._kept: list[torch.Tensor | None] = []
        for j, (batch, seed) in enumerate(zip(batches, seeds)):
            if batch.input_ids.shape[0] == 0:
                out.append(torch.zeros((0, batch.input_ids.shape[1], self.hidden_size)))
                self._kept.append(None)
                continue
            with torch.set_grad_enabled(keep_graph):
                computed = self.forward(batch, seed)
            self._kept.append(computed if keep_graph else None)
            hidden = computed.detach()
            if self.activation is not None:
                mask = batch.attention_mask.to(self.device)
                keys = None if noise_keys is None else noise_keys[j]
                noise = (self.activation.noise(hidden, mask, self._noise) if keys is None
                         else self._keyed_noise(hidden, mask, keys))
                if self.token_noise_scale is not None:
                    noise = noise * self.token_noise_scale[batch.input_ids.to(self.device)].unsqueeze(-1)
                hidden = hidden + noise
            out.append(to_wire(hidden))
        return out

    def _keyed_noise(self, hidden: torch.Tensor, mask: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        """Noise of each example from its own key, over its real tokens (padding stays zero)."""
        if len(keys) != hidden.shape[0]:
            raise ValueError(f"{len(keys)} noise keys for a batch of {hidden.shape[0]} examples")
        noise = torch.zeros_like(hidden)
        lengths = mask.sum(1).tolist()
        for i, (key, n) in enumerate(zip(keys, lengths)):
            generator = torch.Generator(device=self.device).manual_seed(int(key))
            n = int(n)
            noise[i, :n] = self.activation.noise(hidden[i:i + 1, :n], mask[i:i + 1, :n], generator)[0]
        return noise

    def decorrelation_terms(self, batch: TokenBatch, hidden: torch.Tensor) -> torch.Tensor:
        """``[B]``: λ·dCor(input token embeddings, sent states) of each example (zeros when λ = 0)."""
        if self.decorrelation == 0:
            return hidden.new_zeros(hidden.shape[0])
        batch = batch_to(batch, self.device)
        with torch.no_grad():
            tokens = self.core.base.get_input_embeddings()(batch.input_ids).float()
        return self.decorrelation * example_decorrelation(tokens, hidden, batch.attention_mask)

    def hidden_for(self, j: int, batch: TokenBatch, seed: int) -> torch.Tensor:
        """Batch ``j``'s hidden states with their graph: kept from :meth:`send` if it kept them (used once), else
        recomputed with the same weights and dropout seed (identical to what was sent, before the noise)."""
        kept = getattr(self, "_kept", [])
        if j < len(kept) and kept[j] is not None:
            hidden, kept[j] = kept[j], None
            return hidden
        return self.forward(batch, seed)

    @property
    def hidden_size(self) -> int:
        """Width of what is sent: the bottleneck's k, else the model's hidden size."""
        return self.core.cut_width

    def apply_gradients(self, batches: Sequence[TokenBatch], seeds: Sequence[int], grads: Sequence[torch.Tensor],
                        tops: Sequence[torch.Tensor] | None = None) -> None:
        """Back-propagate the server's d loss / d hidden for each batch and take one optimiser step per batch.

        ``tops`` (U-shape): the server's top hidden states of each batch; the head's own loss gradients are
        added to the bottom's.
        """
        if self.optimizer is None:
            return
        per_batch: list[list[torch.Tensor | None]] = []
        for j, (batch, seed, grad) in enumerate(zip(batches, seeds, grads)):
            if batch.input_ids.shape[0] == 0:
                continue
            hidden = self.hidden_for(j, batch, seed)
            if hidden.shape != grad.shape:
                raise ValueError(f"gradient shape {tuple(grad.shape)} does not match hidden {tuple(hidden.shape)}")
            total = (hidden * grad.to(self.device, torch.float32)).sum()
            total = total + self.decorrelation_terms(batch, hidden).mean()
            if tops is not None:
                total = total + self.head_loss(batch, tops[j].detach(), seed)
            per_batch.append(list(torch.autograd.grad(total, self.params, allow_unused=True)))
        for grads_of_batch in per_batch:
            self.optimizer.zero_grad(set_to_none=True)
            for param, g in zip(self.params, grads_of_batch):
                param.grad = None if g is None else g.detach()
            self.optimizer.step()
