"""Reconstruction from the hidden states a client sends: leaky in clear, defeated by heavy activation noise.

Tiny random models, random token sequences; "sent" states are produced exactly as a client produces them
(the client half in train mode, then the run's clip-and-noise mechanism).
"""

from __future__ import annotations

import pytest
import torch

from fedguard.attacks.inversion import (
    InverterSettings,
    average_releases,
    cut_of,
    embedding_candidates,
    input_embedding_table,
    nearest_neighbour_inversion,
    positional_prior,
    public_hidden_states,
    train_learned_inverter,
)
from fedguard.attacks.metrics import token_recovery_rate
from fedguard.mechanisms.activations import ActivationPrivacy
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.model.split import split_model
from tests.conftest import VOCAB, make_tiny

HEAVY = ActivationPrivacy(clip_norm=0.1, noise_multiplier=10.0)
CHANCE = 1 / VOCAB


def _batches(count: int, seed: int, length: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (count, length), generator=generator)
    mask = torch.ones(count, length, dtype=torch.long)
    mask[1::3, length - 4:] = 0  # some shorter rows
    ids = ids.masked_fill(mask == 0, 0)
    return [(ids[i:i + 16], mask[i:i + 16]) for i in range(0, count, 16)]


def _sent(client, batches, privacy, releases: int = 1):  # noqa: ANN001, ANN202
    """What the client sends (dropout on, then clip and noise), padding removed, with the true tokens; with
    ``releases`` > 1, a list of that many releases per example (a fresh forward pass and noise draw each)."""
    generator = torch.Generator().manual_seed(7)
    client.train()
    hidden, truth = [], []
    with torch.no_grad():
        for ids, mask in batches:
            sent = []
            for _ in range(releases):
                states = client(ids, mask)
                if privacy is not None:
                    states = privacy.clip(states, mask) + privacy.noise(states, mask, generator)
                sent.append(states)
            for j, n in enumerate(mask.sum(1).tolist()):
                hidden.append(sent[0][j, :n] if releases == 1 else [s[j, :n] for s in sent])
                truth.append(ids[j, :n])
    return hidden, truth


@pytest.mark.parametrize("name", ["bert-cls", "roberta-cls", "gpt2-lm", "llama-lm"])
def test_candidates_are_what_the_embedding_layer_sends_at_each_position(name, padded_batch):
    model = make_tiny(name).eval()
    client, _ = split_model(model, 0)
    ids, mask = padded_batch
    with torch.no_grad():
        sent = client(ids, mask)
    for t in range(ids.shape[1]):
        table = embedding_candidates(model, t)
        assert table.shape == (VOCAB, sent.shape[-1])
        for row in range(ids.shape[0]):
            if mask[row, t]:
                torch.testing.assert_close(sent[row, t], table[ids[row, t]], rtol=1e-5, atol=1e-5)


def test_nearest_neighbour_recovers_almost_every_token_sent_in_clear_at_split_0():
    model = make_tiny("bert-cls")
    client, _ = split_model(model, 0)
    hidden, truth = _sent(client, _batches(48, seed=1), privacy=None)
    assert token_recovery_rate(nearest_neighbour_inversion(hidden, model), truth) >= 0.95
    # Clipping alone changes each example's scale, not its direction: cosine similarity does not care.
    hidden, truth = _sent(client, _batches(48, seed=1), ActivationPrivacy(0.5, 0.0))
    assert token_recovery_rate(nearest_neighbour_inversion(hidden, model), truth) >= 0.95


def test_nearest_neighbour_is_at_chance_under_heavy_activation_noise():
    model = make_tiny("bert-cls")
    client, _ = split_model(model, 0)
    hidden, truth = _sent(client, _batches(48, seed=1), HEAVY)
    assert token_recovery_rate(nearest_neighbour_inversion(hidden, model), truth) <= 3 * CHANCE + 0.02


def test_with_a_bottleneck_candidates_go_through_the_cut_too():
    model = make_tiny("bert-cls")
    client, _ = split_model(model, 0, bottleneck_dim=24, seed=0)
    hidden, truth = _sent(client, _batches(48, seed=1), ActivationPrivacy(0.5, 0.0))
    assert hidden[0].shape[-1] == 24 and cut_of(client) is client.cut_down
    assert token_recovery_rate(nearest_neighbour_inversion(hidden, model, project=cut_of(client)), truth) >= 0.95
    assert cut_of(split_model(model, 0)[0]) is None


def test_averaging_independent_releases_beats_one_release_where_one_is_weak():
    model = make_tiny("bert-cls")
    client, _ = split_model(model, 0)
    releases, truth = _sent(client, _batches(48, seed=1), ActivationPrivacy(1.0, 0.1), releases=8)
    one = token_recovery_rate(nearest_neighbour_inversion([r[0] for r in releases], model), truth)
    averaged = token_recovery_rate(nearest_neighbour_inversion(average_releases(releases), model), truth)
    assert one < 0.4 and averaged > 0.75  # 8 releases: the mean has 1/sqrt(8) of the noise


def test_bit_identical_releases_average_to_that_release():
    release = torch.randn(5, 4)
    assert torch.equal(average_releases([[release, release.clone(), release.clone()]])[0], release)
    assert average_releases([[release]])[0] is release


def _learned_recovery(privacy: ActivationPrivacy | EmbeddingDChi | None, split: int = 1) -> float:
    model = make_tiny("bert-cls")
    client, _ = split_model(model, split)
    public = public_hidden_states(client, _batches(160, seed=2), privacy, views=2)  # public text: other sequences
    inverter = train_learned_inverter(public, input_embedding_table(model), privacy,
                                      InverterSettings(width=128, epochs=6))
    hidden, truth = _sent(client, _batches(48, seed=1), privacy)
    return token_recovery_rate(inverter.predict(hidden), truth)


def test_learned_inverter_at_split_1_recovers_far_above_chance_in_clear():
    assert _learned_recovery(None) >= 0.8


def test_learned_inverter_drops_to_chance_under_heavy_activation_noise():
    assert _learned_recovery(HEAVY) <= 3 * CHANCE + 0.02


def test_learned_inverter_is_trained_under_the_d_chi_mechanism_too():
    assert _learned_recovery(EmbeddingDChi(eta=100.0, token_clip=1.0, max_tokens=12), split=0) >= 0.8
    assert _learned_recovery(EmbeddingDChi(eta=0.5, token_clip=1.0, max_tokens=12), split=0) <= 3 * CHANCE + 0.02


def test_positional_prior_guesses_the_most_frequent_public_token_at_each_position():
    public = [torch.tensor([5, 7, 9]), torch.tensor([5, 8]), torch.tensor([6, 8, 9, 9])]
    guesses = positional_prior(public, [2, 5])
    assert guesses[0].tolist() == [5, 8] and guesses[1].tolist() == [5, 8, 9, 9, 9]
