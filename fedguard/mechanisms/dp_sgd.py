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

Sampling is Poisson with rate q = batch-size / shard size (see :mod:`fedguard.mechanisms.sampling`), drawn from
the client's secret, so each round of ``local-steps`` steps is the Poisson-subsampled Gaussian mechanism the
accountant composes.

The trainers that run these steps (Opacus per-example gradients on the client, the server half and the U-shape's
middle) are in :mod:`fedguard.training.dp_trainers`; this module holds the mechanism itself.

Devices and precision (:mod:`fedguard.model.device`): per-example gradients, their norms, the clipped sums
and the noise are float32 and live on the trained half's device (the noise generators are created there,
seeded from the OS's CSPRNG); under ``precision = "bf16"`` only the forward passes are autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedguard.privacy import MechanismEvent
from fedguard.privacy.events import REPLACE_ONE


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
    (one ``[B, *shape]`` tensor per parameter; clipping is over all parameters jointly, to ``clip_norm``).

    Computed in float32 on the samples' device; ``generator`` must be on that device (the noise is drawn
    there)."""
    samples = [s.float() for s in samples]  # the same tensors when they are float32 already
    size = samples[0].shape[0] if samples else 0
    if size:
        norms = torch.sqrt(sum(s.reshape(size, -1).pow(2).sum(1) for s in samples))
        factors = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    out = []
    for sample in samples:
        total = (torch.einsum("i,i...->...", factors, sample) if size
                 else torch.zeros(sample.shape[1:], device=sample.device))
        if generator.device.type != total.device.type:
            raise ValueError(f"DP-SGD noise generator is on {generator.device} but the gradients are on "
                             f"{total.device}: create it on the gradients' device (secret_generator(device))")
        noise = torch.normal(0.0, noise_std, size=total.shape, generator=generator, device=total.device)
        out.append((total + noise) / expected_batch_size)
    return out
