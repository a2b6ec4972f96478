"""SAP-style d_χ noise on token embeddings: the right noise law, a bounded sensitivity, an honest ε."""

from __future__ import annotations

import math

import pytest
import torch

from fedguard.config import ConfigError, RunConfig
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.privacy import PrivacyLedger


def test_noise_length_follows_gamma_h_over_eta_and_padding_stays_zero():
    mechanism = EmbeddingDChi(eta=4.0, token_clip=1.0, max_tokens=16)
    like = torch.zeros(64, 16, 32)
    mask = torch.ones(64, 16, dtype=torch.long)
    mask[:, 12:] = 0
    noise = mechanism.noise(like, mask, torch.Generator().manual_seed(0))
    lengths = noise[:, :12].norm(dim=-1).flatten()
    # |z| ~ Gamma(H, 1/eta): mean H/eta = 8, variance H/eta^2 = 2.
    assert abs(float(lengths.mean()) - 8.0) < 0.1 and abs(float(lengths.var()) - 2.0) < 0.3
    assert torch.count_nonzero(noise[:, 12:]) == 0
    # Directions are isotropic: the mean direction is near zero.
    assert float((noise[:, :12] / lengths.view(64, 12, 1)).mean(dim=(0, 1)).norm()) < 0.05


def test_every_token_is_clipped_so_the_sensitivity_is_2c():
    mechanism = EmbeddingDChi(eta=1.0, token_clip=0.5, max_tokens=8)
    hidden = torch.randn(3, 8, 32) * 10
    clipped = mechanism.clip(hidden, torch.ones(3, 8, dtype=torch.long))
    assert float(clipped.norm(dim=-1).max()) <= 0.5 + 1e-6


def test_each_release_is_a_pure_epsilon_event_that_composes():
    mechanism = EmbeddingDChi(eta=0.5, token_clip=2.0, max_tokens=10)
    event = mechanism.release_event(3, server_round=1)
    assert event.kind == "activation" and event.epsilon == pytest.approx(2 * 0.5 * 2.0 * 10)
    ledger = PrivacyLedger()
    ledger.record("c", event)
    assert ledger.epsilon("c", 1e-5, "activation", warn=False).epsilon_certified == pytest.approx(3 * 20.0)


@pytest.mark.parametrize("overrides,message", [
    ({"dchi-eta": 1.0, "split-layer": 2}, "needs split-layer=0"),
    ({"dchi-eta": 1.0, "split-layer": 0, "act-clip-norm": 1.0}, "choose one"),
    ({"dchi-eta": math.nan, "split-layer": 0}, "dchi-eta=nan"),
])
def test_d_chi_is_only_offered_where_it_means_something(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(overrides)
