"""The optimisation attack: relaxed token sequences pushed through the client half until they reproduce what was
received, under the mechanism's noise likelihood and a bigram prior from public text.

Tiny random models (97-token vocabulary), random token sequences; "sent" states are produced as a client
produces them (the client half in train mode, then the mechanism's clip and a fresh noise draw per release).
"""

from __future__ import annotations

import math

import pytest
import torch

from fedguard.attacks.metrics import token_recovery_rate
from fedguard.attacks.optimisation import BigramPrior, OptimisationSettings, optimisation_inversion
from fedguard.mechanisms.activations import ActivationPrivacy
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.model.split import split_model
from tests.conftest import VOCAB, make_tiny


def _sent(client, privacy, releases: int, count: int = 32, length: int = 12):  # noqa: ANN001, ANN202
    """``releases`` releases of each of ``count`` random sequences (fresh noise each), with the true tokens."""
    ids = torch.randint(2, VOCAB, (count, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    noise = torch.Generator().manual_seed(7)
    client.train()
    sent = []
    with torch.no_grad():
        for _ in range(releases):
            states = client(ids, mask)
            if privacy is not None:
                states = privacy.clip(states, mask) + privacy.noise(states, mask, noise)
            sent.append(states)
    return [[s[i] for s in sent] for i in range(count)], list(ids)


def _recovery(client, releases, truth, privacy, steps: int = 40, **kwargs) -> float:  # noqa: ANN001
    result = optimisation_inversion(client, releases, privacy, VOCAB, settings=OptimisationSettings(steps=steps),
                                    **kwargs)
    assert result.objective_final <= result.objective_initial  # never worse than its start, by its own measure
    return token_recovery_rate(result.predicted, truth)


def test_from_an_uninformed_start_it_recovers_the_tokens_sent_in_clear_at_split_1():
    client, _ = split_model(make_tiny("bert-cls"), 1)
    releases, truth = _sent(client, None, releases=1)
    # No initialiser, no prior: uniform over the whole vocabulary at every position.
    assert _recovery(client, releases, truth, None) >= 0.9


def test_it_uses_every_release_of_an_example_gaussian_noise():
    privacy = ActivationPrivacy(clip_norm=1.0, noise_multiplier=0.1)
    client, _ = split_model(make_tiny("bert-cls"), 1)
    releases, truth = _sent(client, privacy, releases=8)
    one = _recovery(client, [r[:1] for r in releases], truth, privacy)
    all_eight = _recovery(client, releases, truth, privacy)
    assert one < 0.4 and all_eight > one + 0.3  # the likelihood of 8 releases has 1/sqrt(8) of the noise


def test_it_handles_the_d_chi_mechanism_and_its_repeated_releases():
    privacy = EmbeddingDChi(eta=30.0, token_clip=1.0, max_tokens=12)
    client, _ = split_model(make_tiny("bert-cls"), 0)
    releases, truth = _sent(client, privacy, releases=4)
    one = _recovery(client, [r[:1] for r in releases], truth, privacy)
    assert 0.2 < one < 0.8 and _recovery(client, releases, truth, privacy) >= 0.9


def test_it_goes_through_a_bottleneck_at_the_cut_whatever_its_width():
    client, _ = split_model(make_tiny("bert-cls"), 1, bottleneck_dim=16, seed=0)
    releases, truth = _sent(client, None, releases=1)
    assert releases[0][0].shape == (12, 16)  # what the server receives: k = 16 numbers per token (H = 32)
    assert _recovery(client, releases, truth, None, steps=60) >= 0.8


def test_candidates_restrict_the_search_and_their_scores_start_it():
    client, _ = split_model(make_tiny("bert-cls"), 1)
    releases, truth = _sent(client, None, releases=1, count=8)
    # Two candidates per position, the true token second with a lower starting score: the search finds it.
    candidates = []
    for ids in truth:
        wrong = (ids + 1 - 2) % (VOCAB - 2) + 2
        candidates.append((torch.stack([wrong, ids], -1), torch.tensor([[0.0, -3.0]]).expand(len(ids), 2)))
    result = optimisation_inversion(client, releases, None, VOCAB, candidates=candidates)
    assert token_recovery_rate(result.predicted, truth) >= 0.95
    again = optimisation_inversion(client, releases, None, VOCAB, candidates=candidates)  # deterministic
    assert all(torch.equal(a, b) for a, b in zip(result.predicted, again.predicted))
    # Without steps the answer is the initialiser's top-1 guess: every token wrong.
    stay = optimisation_inversion(client, releases, None, VOCAB, candidates=candidates,
                                  settings=OptimisationSettings(steps=0))
    assert token_recovery_rate(stay.predicted, truth) == 0


def test_the_bigram_prior_is_smoothed_counts_of_public_token_pairs():
    prior = BigramPrior([torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4]), torch.tensor([1, 5])], vocab=6, beta=1.0)
    # c(1) = 3 continuations (2, 2, 5), trusted at 3/(3+1); unigram (c + 1)/(N + V) = (c + 1)/14.
    expected = 0.75 * (2 / 3) + 0.25 * (3 / 14)
    assert prior.bigram_logp(torch.tensor(1), torch.tensor(2)).item() == pytest.approx(math.log(expected), rel=1e-5)
    # A pair never seen keeps the unigram share; a token never seen as context falls back to the unigram.
    assert prior.bigram_logp(torch.tensor(1), torch.tensor(3)).item() == pytest.approx(
        math.log(0.25 * 2 / 14), rel=1e-5)
    assert prior.bigram_logp(torch.tensor(0), torch.tensor(2)).item() == pytest.approx(math.log(3 / 14), rel=1e-5)
    assert prior.sequence_logp(torch.tensor([1, 2])) == pytest.approx(
        math.log(4 / 14) + math.log(expected), rel=1e-5)
