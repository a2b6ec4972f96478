"""DP-SGD on the client adapter, through the split, with Opacus.

The client's loss lives on the server, so its backward pass starts from the gradient the server returns
for the hidden states. The server averages the loss over the batch, so row i of that gradient is
(1/B)·dℓ_i/dh_i; multiplied by the batch size B it is example i's own loss gradient, and — because example
i's hidden states depend only on example i — back-propagating it through Opacus' ``GradSampleModule``
(``loss_reduction="sum"``) yields exactly the per-example gradients of the LoRA parameters. Opacus'
``DPOptimizer`` then clips each example's gradient to ``dp-max-grad-norm`` (C), adds N(0, (σC)²) to the sum,
divides by the expected batch size q·n, and takes the AdamW step.

Sampling is Poisson with rate q = batch-size / shard size (see :mod:`fedguard.mechanisms.sampling`), so each
round of ``local-steps`` steps is the Poisson-subsampled Gaussian mechanism the accountant composes
(example-level add/remove neighbours within the client's shard). Noise is drawn from a generator seeded by
the OS's CSPRNG, never from the run's public seed.

U-shaped split: the client also holds the head, so example i's gradient has two parts — through the
bottom (from the server's returned gradient, as above) and through the head (from the client's own
per-example loss on the server's top hidden states). Both are taken in one backward pass over
``B·Σ_i g_i·h_i + Σ_i ℓ_i``, so Opacus clips each example's *whole* gradient.

Opacus' ghost clipping needs the loss on the module's own device; here the loss is on the server, so the
per-sample-gradient path (small for LoRA) is used.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.privacy import MechanismEvent
from fedguard.training.client_half import ClientHalfTrainer


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int, clip_norm: float,
                 server_round: int) -> MechanismEvent:
    """The ledger event for ``steps`` DP-SGD steps (example-level add/remove, Poisson rate ``sample_rate``)."""
    return MechanismEvent("dp-sgd", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                          round=server_round, clip_norm=clip_norm)


class DPClientHalfTrainer(ClientHalfTrainer):
    """Client half trainer with per-example clipping and Gaussian noise on the adapter gradients."""

    def __init__(self, half: nn.Module, learning_rate: float, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: float, freeze_lora_a: bool = False,
                 activation: ActivationMechanism | None = None) -> None:
        if noise_multiplier <= 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError("DP-SGD needs noise_multiplier > 0, max_grad_norm > 0, expected_batch_size > 0")
        # With freeze_lora_a the A matrices stay out of self.params (never clipped, noised or stepped); their
        # requires_grad is left alone so the adapter's tensor set does not change.
        super().__init__(half, learning_rate, freeze_lora_a, activation)
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum")
        self.module = self.gsm
        generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.optimizer = DPOptimizer(
            torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0),
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=max(1, round(expected_batch_size)), loss_reduction="mean", generator=generator,
        )

    def close(self) -> None:
        """Remove Opacus' hooks (the model is cached and reused)."""
        self.gsm._close()

    def per_example_gradients(self, batch: TokenBatch, dropout_seed: int, grad_hidden: torch.Tensor,
                              top: torch.Tensor | None = None) -> list[torch.Tensor]:
        """dℓ_i/dθ for each example i and trainable parameter θ ([B, *θ.shape] each), from the server's
        gradient of the *mean* batch loss w.r.t. the hidden states (and, U-shape, the head's own loss on the
        server's ``top`` hidden states)."""
        size = batch.input_ids.shape[0]
        if size == 0:
            return [torch.zeros((0, *p.shape)) for p in self.params]
        trainable = [p for p in self.half.parameters() if p.requires_grad]
        for p in trainable:
            p.grad_sample = None
            p.grad = None
        hidden = self.forward(batch, dropout_seed)
        total = (hidden * (grad_hidden * size)).sum()
        if top is not None:
            total = total + self.head_loss(batch, top.detach(), dropout_seed, per_example=True).sum()
        with warnings.catch_warnings():  # the backward starts at the module output: expected here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            total.backward()
        samples = [p.grad_sample.detach().clone() if p.grad_sample is not None else torch.zeros((size, *p.shape))
                   for p in self.params]
        for p in trainable:
            p.grad_sample = None
            p.grad = None
        return samples

    def apply_gradients(self, batches: Sequence[TokenBatch], seeds: Sequence[int],
                        grads: Sequence[torch.Tensor], tops: Sequence[torch.Tensor] | None = None) -> None:
        """One private optimiser step per batch (all per-example gradients taken at the chunk's start)."""
        per_batch = [self.per_example_gradients(b, s, g, None if tops is None else tops[j])
                     for j, (b, s, g) in enumerate(zip(batches, seeds, grads))]
        for samples in per_batch:
            for p, sample in zip(self.params, samples):
                p.grad_sample = sample
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
