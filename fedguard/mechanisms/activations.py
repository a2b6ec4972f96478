"""Privatised activations: per-example clipping and Gaussian noise on the hidden states a client sends.

For each example, its hidden states ``h`` ([seq, hidden], padding positions zeroed) are scaled to L2
norm at most ``C = act-clip-norm`` and every real-token coordinate gets N(0, (σ·C)²) noise, σ =
``act-noise-multiplier``. This is a *local* mechanism: each release protects that example's
representation against the server whatever else happens. Neighbouring relation: replace one example
(its text) by any other text *of the same token length* (the padding mask travels in clear, so the length
is not hidden), so the sensitivity is 2C and one release is a Gaussian mechanism with sensitivity 2C and
noise std σC (recorded as noise multiplier σ under ``relation="replace-one"``, q = 1); releases of the same
example compose.

Back-propagation: the noise is additive, so d/dh of the sent tensor is the identity through it; the
clipping is differentiated as usual when the client recomputes its forward pass (without the noise).

Devices: noise is drawn on the device of the tensor it is added to, so the generator must live there too
(a ``torch.Generator`` draws on its own device only; see :func:`fedguard.model.device.secret_generator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedguard.privacy import MechanismEvent
from fedguard.privacy.events import REPLACE_ONE


def check_generator(generator: torch.Generator, like: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``generator`` draws on ``like``'s device type (noise is drawn where the
    tensor it is added to lives)."""
    if generator.device.type != like.device.type:
        raise ValueError(f"noise generator is on {generator.device} but the hidden states are on {like.device}: "
                         "create the generator on the hidden states' device "
                         "(fedguard.model.device.secret_generator(device))")


class ActivationMechanism(Protocol):
    """What a client applies to the hidden states it sends (this module's Gaussian mechanism, or
    :class:`fedguard.mechanisms.embedding_dchi.EmbeddingDChi`)."""

    def clip(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Bound what is sent (differentiable: the client back-propagates through it)."""

    def noise(self, like: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Additive noise for one release, on ``like``'s device (``generator`` must be on that device)."""

    def release_event(self, releases: int, server_round: int) -> MechanismEvent | None:
        """The ledger event for ``releases`` more releases of the most-released example."""


@dataclass(frozen=True)
class ActivationPrivacy:
    """``clip_norm`` C > 0 (L2, per example); ``noise_multiplier`` σ >= 0 (noise std = σ·C)."""

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ValueError(f"act-clip-norm={self.clip_norm}: must be > 0")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"act-noise-multiplier={self.noise_multiplier}: must be >= 0")

    def clip(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Zero padding positions and scale each example to L2 norm <= C (differentiable)."""
        masked = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        norms = masked.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (self.clip_norm / norms).clamp(max=1.0)
        return masked * factor.view(-1, 1, 1)

    def noise(self, like: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N(0, (σC)²) on every real-token coordinate (zero on padding), drawn on ``like``'s device with
        ``generator`` (which must be on that device)."""
        if self.noise_multiplier == 0:
            return torch.zeros_like(like)
        check_generator(generator, like)
        draw = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        mask = attention_mask.to(like.device).unsqueeze(-1).to(like.dtype)
        return draw * (self.noise_multiplier * self.clip_norm) * mask

    def release_event(self, releases: int, server_round: int) -> MechanismEvent | None:
        """The ledger event for ``releases`` more releases of the most-released example (None if no noise)."""
        if self.noise_multiplier == 0 or releases < 1:
            return None
        return MechanismEvent("activation", noise_multiplier=self.noise_multiplier, sample_rate=1.0,
                              steps=releases, round=server_round, clip_norm=self.clip_norm, relation=REPLACE_ONE)
