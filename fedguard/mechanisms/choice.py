"""Which activation mechanism a client applies, from its settings (the one rule shared by the client and by the
attack harness, which must model exactly what the client did)."""

from __future__ import annotations

from fedguard.mechanisms.activations import ActivationMechanism, ActivationPrivacy
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi


def choose_activation_mechanism(act_clip_norm: float, act_noise_multiplier: float, dchi_eta: float,
                         dchi_token_clip: float, max_length: int) -> ActivationMechanism | None:
    """``act-clip-norm`` C > 0 → Gaussian :class:`ActivationPrivacy` (C, σ = ``act-noise-multiplier``); else
    ``dchi-eta`` η > 0 → :class:`EmbeddingDChi` (η, token clip, ``max-length`` tokens); else None (sent in
    clear). The run config never has both (validated)."""
    if act_clip_norm > 0:
        return ActivationPrivacy(act_clip_norm, act_noise_multiplier)
    if dchi_eta > 0:
        return EmbeddingDChi(dchi_eta, dchi_token_clip, max_length)
    return None
