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
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.model.lora import unwrapped
from fedguard.training.objectives import batch_loss, example_losses

_HEAD_SEED = 0x5EED  # offset of the head's dropout seed from the batch's seed


class ClientHalfTrainer:
    """Runs the (LoRA-wrapped) client half; its trainable tensors are the client adapter.

    ``freeze_lora_a``: keep every LoRA ``A`` matrix as received (FFA-LoRA); only ``B`` is trained.
    ``activation``: clip (and noise) each example's hidden states before they are sent.
    """

    def __init__(self, half: nn.Module, learning_rate: float, freeze_lora_a: bool = False,
                 activation: ActivationMechanism | None = None) -> None:
        self.half = half
        self.module: nn.Module = half
        self.activation = activation
        self._noise = torch.Generator().manual_seed(secrets.randbits(63))  # never the public seed
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((dropout_seed + _HEAD_SEED) % 2**31)
            logits = self.core.head(top, batch.attention_mask)
        return example_losses(logits, batch.labels) if per_example else batch_loss(logits, batch.labels)

    def top_gradients(self, batches: Sequence[TokenBatch], seeds: Sequence[int],
                      tops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """U-shape: d (mean batch loss) / d top hidden states for each batch — all that leaves the client."""
        out = []
        for batch, seed, top in zip(batches, seeds, tops):
            if batch.input_ids.shape[0] == 0:
                out.append(torch.zeros_like(top))
                continue
            top = top.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.head_loss(batch, top, seed), top)
            out.append(grad.detach())
        return out

    def forward(self, batch: TokenBatch, dropout_seed: int) -> torch.Tensor:
        """Hidden states at the split for ``batch`` (gradients enabled), clipped if activations are private."""
        self.module.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(dropout_seed)
            hidden = self.module(batch.input_ids, batch.attention_mask)
        return self.activation.clip(hidden, batch.attention_mask) if self.activation else hidden

    def send(self, batches: Sequence[TokenBatch], seeds: Sequence[int]) -> list[torch.Tensor]:
        """Hidden states for each batch, detached and (if configured) noised, ready to send."""
        out = []
        with torch.no_grad():
            for batch, seed in zip(batches, seeds):
                if batch.input_ids.shape[0] == 0:
                    out.append(torch.zeros((0, batch.input_ids.shape[1], self.hidden_size)))
                    continue
                hidden = self.forward(batch, seed).detach()
                if self.activation is not None:
                    hidden = hidden + self.activation.noise(hidden, batch.attention_mask, self._noise)
                out.append(hidden)
        return out

    @property
    def hidden_size(self) -> int:
        return int(self.half.config.hidden_size)

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
            hidden = self.forward(batch, seed)
            if hidden.shape != grad.shape:
                raise ValueError(f"gradient shape {tuple(grad.shape)} does not match hidden {tuple(hidden.shape)}")
            total = (hidden * grad).sum()
            if tops is not None:
                total = total + self.head_loss(batch, tops[j].detach(), seed)
            per_batch.append(list(torch.autograd.grad(total, self.params, allow_unused=True)))
        for grads_of_batch in per_batch:
            self.optimizer.zero_grad(set_to_none=True)
            for param, g in zip(self.params, grads_of_batch):
                param.grad = None if g is None else g.detach()
            self.optimizer.step()
