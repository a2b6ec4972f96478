"""The trainers of whole-model DP-SGD (:mod:`fedguard.mechanisms.dp_sgd`): the client half through Opacus, the
server half and the U-shape's middle blocks with per-example gradients clipped to C_s and noised with σ·C.

Client. The client's loss lives on the server, so its backward pass starts from the gradient the server returns
for the hidden states. The server averages the loss over the batch, so row i of that gradient is
(1/B)·dℓ_i/dh_i; multiplied by the batch size B it is example i's own loss gradient, and — because example
i's hidden states depend only on example i — back-propagating it through Opacus' ``GradSampleModule``
(``loss_reduction="sum"``) yields exactly the per-example gradients of the LoRA parameters. Opacus'
``DPOptimizer`` then clips each example's gradient to C_c, adds the noise, divides by the expected batch size
q·n, and takes the AdamW step. U-shape: example i's gradient also has a part through the head (the client's own
per-example loss on the server's top hidden states); both are taken in one backward pass, so Opacus clips each
example's *whole* client gradient. Opacus' ghost clipping needs the loss on the module's own device; here the
loss is on the server, so the per-sample-gradient path (small for LoRA) is used.

Noise is drawn from generators seeded by the OS's CSPRNG, never from the run's public seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.mechanisms.dp_sgd import WholeModelDP, private_mean_gradient
from fedguard.model.device import autocast, batch_to, secret_generator, to_wire
from fedguard.protocol.messages import ActivationBatch, DpStep
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.objectives import example_losses
from fedguard.training.server_half import BatchOutcome, MiddleTrainer, ServerHalfTrainer


def forget_activations(module: nn.Module) -> None:
    """Drop the inputs Opacus recorded for a backward that will never come (it keeps them on the modules)."""
    for sub in module.modules():
        if hasattr(sub, "activations"):
            sub.activations = []


def _take_grad_samples(params: Sequence[torch.nn.Parameter], size: int) -> list[torch.Tensor]:
    """Each parameter's per-example gradients ``[size, *shape]`` (float32, on its device; zeros for one
    that got none), and clear them from the parameters."""
    samples = [p.grad_sample.detach().float().clone() if getattr(p, "grad_sample", None) is not None
               else torch.zeros((size, *p.shape), device=p.device) for p in params]
    for p in params:
        p.grad_sample = None
        p.grad = None
    return samples


class DPServerHalfTrainer(ServerHalfTrainer):
    """The server half under whole-model DP-SGD: per-example gradients (Opacus), clipped to C_s, noise σ·C.

    An empty Poisson batch is a noise-only step (the number of server steps does not depend on the data).
    """

    def __init__(self, half: nn.Module, learning_rate: float, client_clip: float, server_clip: float, *,
                 precision: str = "fp32") -> None:
        super().__init__(half, learning_rate, precision=precision)
        self.client_clip, self.server_clip = client_clip, server_clip
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum")
        self._noise = secret_generator(self.device)

    def close(self) -> None:
        self.gsm._close()
        forget_activations(self.half)

    def per_example_gradients(self, batch: ActivationBatch) -> tuple[list[torch.Tensor], BatchOutcome]:
        """dℓ_i/dθ of every example i for each server parameter θ (``[B, *θ.shape]``, float32 on
        :attr:`device`), and the outcome to return to the client (d mean loss / d hidden, float32 on CPU; the
        mean loss). No parameter changes."""
        size = batch.hidden.shape[0]
        self.half.train()
        if size == 0:
            return ([torch.zeros((0, *p.shape), device=p.device) for p in self.params],
                    BatchOutcome(to_wire(torch.zeros_like(batch.hidden)), float("nan"), 0))
        for p in self.params:
            p.grad_sample = None
        batch = batch_to(batch, self.device)
        hidden = batch.hidden.detach().float().requires_grad_(True)
        with autocast(self.device, self.precision):
            logits = self.gsm(hidden, batch.attention_mask)
        losses = example_losses(logits, batch.labels)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        samples = _take_grad_samples(self.params, size)
        # The client expects the gradient of the *mean* batch loss (row i = dℓ_i/dh_i / B).
        return samples, BatchOutcome(to_wire(hidden.grad / size), float(losses.detach().mean()), size)

    def train_batch(self, batch: ActivationBatch, step: DpStep | None = None) -> BatchOutcome:
        if step is None:
            raise ValueError("whole-model DP-SGD: the client's chunk carries no DP-SGD parameters")
        if batch.labels is None:
            raise ValueError("the server's head needs the batch's labels (or use the U-shaped split)")
        dp = WholeModelDP(step.noise_multiplier, self.client_clip, self.server_clip)
        samples, outcome = self.per_example_gradients(batch)
        grads = private_mean_gradient(samples, self.server_clip, dp.noise_std, step.expected_batch_size,
                                      self._noise)
        self.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(self.params, grads):
            param.grad = grad
        self.optimizer.step()
        return outcome


class DPMiddleTrainer(MiddleTrainer):
    """U-shape middle blocks under whole-model DP-SGD: per-example gradients from the client's per-example
    d loss / d top rows, clipped to C_s, noise σ·C; :meth:`backward` returns the private mean gradient."""

    def __init__(self, half: nn.Module, learning_rate: float, client_clip: float, server_clip: float, *,
                 precision: str = "fp32") -> None:
        super().__init__(half, learning_rate, precision=precision)
        self.client_clip, self.server_clip = client_clip, server_clip
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum") if self.params else None
        self._noise = secret_generator(self.device)

    def close(self) -> None:
        if self.gsm is not None:
            self.gsm._close()
            forget_activations(self.half)

    def backward(self, batch: ActivationBatch, seed: int, grad_top: torch.Tensor,
                 step: DpStep | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        if step is None:
            raise ValueError("whole-model DP-SGD: the client's chunk carries no DP-SGD parameters")
        dp = WholeModelDP(step.noise_multiplier, self.client_clip, self.server_clip)
        size = batch.hidden.shape[0]
        if size == 0:
            grad_hidden = torch.zeros_like(batch.hidden)
            samples = [torch.zeros((0, *p.shape), device=p.device) for p in self.params]
        else:
            for p in self.params:
                p.grad_sample = None
            batch = batch_to(batch, self.device)
            hidden = batch.hidden.detach().float().requires_grad_(True)
            top = self._run(batch, seed, hidden)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                # rows of the per-example losses' gradients
                top.backward(grad_top.to(self.device, torch.float32) * size)
            samples = _take_grad_samples(self.params, size)
            grad_hidden = hidden.grad / size
        grads = private_mean_gradient(samples, self.server_clip, dp.noise_std, step.expected_batch_size,
                                      self._noise)
        return to_wire(grad_hidden), list(grads)


class DPClientHalfTrainer(ClientHalfTrainer):
    """Client half trainer with per-example clipping and Gaussian noise on the adapter gradients."""

    def __init__(self, half: nn.Module, learning_rate: float, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: float, freeze_lora_a: bool = False,
                 activation: ActivationMechanism | None = None, *, precision: str = "fp32",
                 decorrelation: float = 0.0, deterministic: bool = False,
                 token_noise_scale: torch.Tensor | None = None) -> None:
        if noise_multiplier <= 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError("DP-SGD needs noise_multiplier > 0, max_grad_norm > 0, expected_batch_size > 0")
        # With freeze_lora_a the A matrices stay out of self.params (never clipped, noised or stepped); their
        # requires_grad is left alone so the adapter's tensor set does not change.
        super().__init__(half, learning_rate, freeze_lora_a, activation, precision=precision,
                         decorrelation=decorrelation, deterministic=deterministic,
                         token_noise_scale=token_noise_scale)
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum")
        self.module = self.gsm
        generator = secret_generator(self.device)  # Opacus draws its noise on the parameters' device
        self.optimizer = DPOptimizer(
            torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0),
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=max(1, round(expected_batch_size)), loss_reduction="mean", generator=generator,
        )

    def close(self) -> None:
        """Remove Opacus' hooks and any activations it still holds (the model is cached and reused: a round that
        ended between a forward and its backward must not leave them to the next client of this process)."""
        self.gsm._close()
        forget_activations(self.half)
        self._kept = []

    def per_example_gradients(self, batch: TokenBatch, dropout_seed: int, grad_hidden: torch.Tensor,
                              top: torch.Tensor | None = None, index: int | None = None) -> list[torch.Tensor]:
        """dℓ_i/dθ for each example i and trainable parameter θ ([B, *θ.shape] each), from the server's
        gradient of the *mean* batch loss w.r.t. the hidden states (and, U-shape, the head's own loss on the
        server's ``top`` hidden states). Float32, on :attr:`device`; the inputs may be on any device."""
        size = batch.input_ids.shape[0]
        if size == 0:
            return [torch.zeros((0, *p.shape), device=p.device) for p in self.params]
        trainable = [p for p in self.half.parameters() if p.requires_grad]
        for p in trainable:
            p.grad_sample = None
            p.grad = None
        # The graph kept by send(keep_graph=True) for batch ``index`` (Opacus recorded its activations), or a
        # recomputation with the same weights and seed.
        hidden = self.forward(batch, dropout_seed) if index is None else self.hidden_for(index, batch, dropout_seed)
        total = (hidden * (grad_hidden.to(self.device, torch.float32) * size)).sum()
        total = total + self.decorrelation_terms(batch, hidden).sum()  # per example: ℓ_i + λ·dCor_i
        if top is not None:
            total = total + self.head_loss(batch, top.detach(), dropout_seed, per_example=True).sum()
        with warnings.catch_warnings():  # the backward starts at the module output: expected here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            total.backward()
        samples = [p.grad_sample.detach().float().clone() if p.grad_sample is not None
                   else torch.zeros((size, *p.shape), device=p.device) for p in self.params]
        for p in trainable:
            p.grad_sample = None
            p.grad = None
        return samples

    def apply_gradients(self, batches: Sequence[TokenBatch], seeds: Sequence[int],
                        grads: Sequence[torch.Tensor], tops: Sequence[torch.Tensor] | None = None) -> None:
        """One private optimiser step per batch (all per-example gradients taken at the chunk's start)."""
        per_batch = [self.per_example_gradients(b, s, g, None if tops is None else tops[j], index=j)
                     for j, (b, s, g) in enumerate(zip(batches, seeds, grads))]
        for samples in per_batch:
            for p, sample in zip(self.params, samples):
                p.grad_sample = sample
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
