"""SAP-style d_χ-privacy on the token embeddings a client sends (split at the embedding layer).

Split-and-Privatize (arXiv 2312.15603) perturbs each token's embedding with noise of density
∝ exp(−η‖z‖₂): a direction uniform on the unit sphere of R^H and a length drawn from Gamma(H, 1/η). That is
η·d_χ-privacy: for two token vectors x, x' the output densities differ by at most exp(η‖x − x'‖₂).

To turn it into an ε per example, each token vector is first clipped to L2 norm ``C`` (``dchi-token-clip``),
so any two tokens are within 2C: one release of one token is (2ηC)-DP (pure, replace one token by any
other), and one release of one example of at most T tokens (T = ``max-length``) is (2ηC·T)-DP, replace one
example by another *of the same token length* (the padding mask travels in clear). That is the event recorded (kind ``activation``, pure ε) and it composes over releases like any pure
ε. It is a worst case over all token pairs; SAP's utility comes from tokens that are close in embedding space
being hard to tell apart, which no ε of this kind reflects. The padding mask (sequence length) is not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedguard.mechanisms.activations import check_generator
from fedguard.privacy import MechanismEvent
from fedguard.privacy.events import REPLACE_ONE


@dataclass(frozen=True)
class EmbeddingDChi:
    """``eta`` η > 0 (per unit of L2 distance), ``token_clip`` C > 0, ``max_tokens`` T (tokens per example)."""

    eta: float
    token_clip: float
    max_tokens: int

    def __post_init__(self) -> None:
        if not self.eta > 0 or not self.token_clip > 0 or self.max_tokens < 1:
            raise ValueError(f"d_chi needs eta > 0, token clip > 0, max tokens >= 1; got {self}")

    def clip(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Zero padding positions and scale every token vector to L2 norm <= C (differentiable)."""
        masked = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        norms = masked.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return masked * (self.token_clip / norms).clamp(max=1.0)

    def noise(self, like: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise with density ∝ exp(−η‖z‖) on every real token (zero on padding), on ``like``'s device.

        ``generator`` (on ``like``'s device) draws the directions there and seeds the lengths, which are
        sampled on the CPU (small: one per token) and moved."""
        check_generator(generator, like)
        size = like.shape[-1]
        direction = torch.randn(like.shape, generator=generator, dtype=torch.float64, device=like.device)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        gamma = torch.distributions.Gamma(torch.tensor(float(size), dtype=torch.float64),
                                          torch.tensor(self.eta, dtype=torch.float64))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
            length = gamma.sample(like.shape[:-1] + (1,)).to(like.device)
        mask = attention_mask.to(like.device).unsqueeze(-1).to(like.dtype)
        return (direction * length).to(like.dtype) * mask

    @property
    def epsilon_per_release(self) -> float:
        """Pure ε of one release of one example (replace-one example): 2ηC·T."""
        return 2.0 * self.eta * self.token_clip * self.max_tokens

    def release_event(self, releases: int, server_round: int) -> MechanismEvent | None:
        """The ledger event for ``releases`` more releases of the most-released example."""
        if releases < 1:
            return None
        return MechanismEvent("activation", epsilon=self.epsilon_per_release, steps=releases, round=server_round,
                              clip_norm=self.token_clip, relation=REPLACE_ONE)
