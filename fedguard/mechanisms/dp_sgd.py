"""DP-SGD over the whole split model: the client adapter (Opacus) and the server half, one sensitivity per step.

Whole-model DP-SGD (group-wise clipping). Every trainable parameter on both sides of the split — the client
adapter (and, U-shape, the client's head), the server adapter and head (or, U-shape, the middle adapter) —
is updated only through clipped per-example gradients plus Gaussian noise. For each step on a batch of one
client's examples, example i's gradient has a client part g_i^c and a server part g_i^s; the client clips
g_i^c to C_c (``dp-max-grad-norm``), the server clips g_i^s to C_s (``dp-server-max-grad-norm``), so the
whole per-example gradient has L2 norm <= C = sqrt(C_c^2 + C_s^2). Each side adds N(0, (σ·C)^2) to every
coordinate of its sum and divides by the expected batch size. The concatenated step is one Gaussian
mechanism with sensitivity C (add/remove; 2C replace-one) and noise multiplier σ: :class:`WholeModelDP`.
Both sides use the σ of the client whose batch it is (the client solves it from its own sampling rate and
sends it with its activations). The server half therefore never steps on an un-noised gradient of client
data, and the released model (merged adapter) is (ε, δ)-DP against anyone who sees only it, whatever
travelled in clear between client and server: subsampling amplifies, since such an observer does not
know who was sampled (event kind ``dp-sgd``, replace-one neighbours: the shard size is public).

Against the server the amplification does not hold — it sees every sampled example's activations (and
mask, and labels unless protected), so it knows who was sampled. What the server learns from the DP-SGD
steps is the client adapter (the noised sum of the client parts; its own part it computes itself), an
*unsampled* Gaussian with sensitivity 2C_c (replace-one) and noise std σC for each step that contained
the example: event kind ``dp-sgd-server``, noise multiplier σC/C_c, q = 1, counted for the most-sampled
example (:meth:`WholeModelDP.server_event`).

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

import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.privacy import MechanismEvent
from fedguard.privacy.events import REPLACE_ONE
from fedguard.protocol.messages import ActivationBatch, DpStep
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.objectives import example_losses
from fedguard.training.server_half import BatchOutcome, MiddleTrainer, ServerHalfTrainer


@dataclass(frozen=True)
class WholeModelDP:
    """One whole-model DP-SGD step: noise multiplier σ (> 0), client clip C_c and server clip C_s (> 0).

    Noise std on every coordinate of both sums: σ·C, C = sqrt(C_c^2 + C_s^2) (see the module docstring).
    """

    noise_multiplier: float
    client_clip: float
    server_clip: float

    def __post_init__(self) -> None:
        for name, value in (("noise multiplier", self.noise_multiplier), ("dp-max-grad-norm", self.client_clip),
                            ("dp-server-max-grad-norm", self.server_clip)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"whole-model DP-SGD needs {name} > 0, got {value!r}")

    @property
    def total_clip(self) -> float:
        """C: the L2 bound of one example's whole (client + server) gradient."""
        return math.hypot(self.client_clip, self.server_clip)

    @property
    def noise_std(self) -> float:
        """σ·C: the Gaussian noise std added to every coordinate of each side's gradient sum."""
        return self.noise_multiplier * self.total_clip

    @property
    def client_noise_multiplier(self) -> float:
        """Noise std relative to the client's clip (what Opacus' optimizer is given): σ·C / C_c."""
        return self.noise_std / self.client_clip

    def model_event(self, sample_rate: float, steps: int, server_round: int) -> MechanismEvent:
        """``steps`` steps as seen by whoever sees only the released model: Poisson-subsampled Gaussian,
        noise multiplier σ, replace-one neighbours within the client's shard."""
        return MechanismEvent("dp-sgd", noise_multiplier=self.noise_multiplier, sample_rate=sample_rate,
                              steps=steps, round=server_round, clip_norm=self.total_clip, relation=REPLACE_ONE)

    def server_event(self, releases: int, server_round: int) -> MechanismEvent:
        """``releases`` more steps containing the most-sampled example, as seen by the server (no
        amplification): the client part's Gaussian, sensitivity 2C_c, noise std σC."""
        return MechanismEvent("dp-sgd-server", noise_multiplier=self.client_noise_multiplier, sample_rate=1.0,
                              steps=releases, round=server_round, clip_norm=self.client_clip, relation=REPLACE_ONE)


def private_mean_gradient(samples: Sequence[torch.Tensor], clip_norm: float, noise_std: float,
                          expected_batch_size: float, generator: torch.Generator) -> list[torch.Tensor]:
    """(Σ_i clip(g_i) + N(0, noise_std²)) / expected_batch_size for per-example gradients ``samples``
    (one ``[B, *shape]`` tensor per parameter; clipping is over all parameters jointly, to ``clip_norm``)."""
    size = samples[0].shape[0] if samples else 0
    if size:
        norms = torch.sqrt(sum(s.reshape(size, -1).pow(2).sum(1) for s in samples))
        factors = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    out = []
    for sample in samples:
        total = torch.einsum("i,i...->...", factors, sample) if size else torch.zeros(sample.shape[1:])
        noise = torch.normal(0.0, noise_std, size=total.shape, generator=generator)
        out.append((total + noise) / expected_batch_size)
    return out


def _secret_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))  # never the public seed


def _take_grad_samples(params: Sequence[torch.nn.Parameter], size: int) -> list[torch.Tensor]:
    samples = [p.grad_sample.detach().clone() if getattr(p, "grad_sample", None) is not None
               else torch.zeros((size, *p.shape)) for p in params]
    for p in params:
        p.grad_sample = None
        p.grad = None
    return samples


class DPServerHalfTrainer(ServerHalfTrainer):
    """The server half under whole-model DP-SGD: per-example gradients (Opacus), clipped to C_s, noise σ·C.

    An empty Poisson batch is a noise-only step (the number of server steps does not depend on the data).
    """

    def __init__(self, half: nn.Module, learning_rate: float, client_clip: float, server_clip: float) -> None:
        super().__init__(half, learning_rate)
        self.client_clip, self.server_clip = client_clip, server_clip
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum")
        self._noise = _secret_generator()

    def close(self) -> None:
        self.gsm._close()

    def per_example_gradients(self, batch: ActivationBatch) -> tuple[list[torch.Tensor], BatchOutcome]:
        """dℓ_i/dθ of every example i for each server parameter θ (``[B, *θ.shape]``), and the outcome to
        return to the client (d mean loss / d hidden, the mean loss). No parameter changes."""
        size = batch.hidden.shape[0]
        self.half.train()
        if size == 0:
            return ([torch.zeros((0, *p.shape)) for p in self.params],
                    BatchOutcome(torch.zeros_like(batch.hidden), float("nan"), 0))
        for p in self.params:
            p.grad_sample = None
        hidden = batch.hidden.detach().requires_grad_(True)
        losses = example_losses(self.gsm(hidden, batch.attention_mask), batch.labels)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        samples = _take_grad_samples(self.params, size)
        # The client expects the gradient of the *mean* batch loss (row i = dℓ_i/dh_i / B).
        return samples, BatchOutcome(hidden.grad.detach() / size, float(losses.detach().mean()), size)

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

    def __init__(self, half: nn.Module, learning_rate: float, client_clip: float, server_clip: float) -> None:
        super().__init__(half, learning_rate)
        self.client_clip, self.server_clip = client_clip, server_clip
        self.gsm = GradSampleModule(half, batch_first=True, loss_reduction="sum") if self.params else None
        self._noise = _secret_generator()

    def close(self) -> None:
        if self.gsm is not None:
            self.gsm._close()

    def backward(self, batch: ActivationBatch, seed: int, grad_top: torch.Tensor,
                 step: DpStep | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        if step is None:
            raise ValueError("whole-model DP-SGD: the client's chunk carries no DP-SGD parameters")
        dp = WholeModelDP(step.noise_multiplier, self.client_clip, self.server_clip)
        size = batch.hidden.shape[0]
        if size == 0:
            grad_hidden = torch.zeros_like(batch.hidden)
            samples = [torch.zeros((0, *p.shape)) for p in self.params]
        else:
            for p in self.params:
                p.grad_sample = None
            hidden = batch.hidden.detach().requires_grad_(True)
            top = self._run(batch, seed, hidden)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                top.backward(grad_top * size)  # rows of the per-example losses' gradients
            samples = _take_grad_samples(self.params, size)
            grad_hidden = hidden.grad.detach() / size
        grads = private_mean_gradient(samples, self.server_clip, dp.noise_std, step.expected_batch_size,
                                      self._noise)
        return grad_hidden, list(grads)


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
