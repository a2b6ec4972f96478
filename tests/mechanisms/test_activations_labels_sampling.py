"""Local mechanisms: activation clipping/noise, label randomised response, secret Poisson sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedguard.mechanisms.activations import ActivationPrivacy
from fedguard.mechanisms.labels import keep_probability, randomized_labels
from fedguard.mechanisms.sampling import poisson_batch
from fedguard.privacy import EdgeworthAccountant


def test_clipping_bounds_each_example_and_zeroes_padding():
    hidden = torch.randn(4, 5, 8) * 10
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[1, 3:] = 0
    clipped = ActivationPrivacy(clip_norm=2.0, noise_multiplier=0.0).clip(hidden, mask)
    assert torch.all(clipped.flatten(1).norm(dim=1) <= 2.0 + 1e-5)
    assert torch.all(clipped[1, 3:] == 0)
    small = torch.full((1, 2, 2), 0.1)
    torch.testing.assert_close(ActivationPrivacy(2.0, 0.0).clip(small, torch.ones(1, 2)), small)


def test_noise_has_the_configured_scale_and_spares_padding():
    mechanism = ActivationPrivacy(clip_norm=3.0, noise_multiplier=0.5)
    mask = torch.ones(64, 16, dtype=torch.long)
    mask[:, 12:] = 0
    noise = mechanism.noise(torch.zeros(64, 16, 32), mask, torch.Generator().manual_seed(0))
    assert abs(noise[:, :12].std().item() - 1.5) < 0.05
    assert torch.all(noise[:, 12:] == 0)


def test_activation_event_is_a_plain_gaussian_with_replace_one_sensitivity():
    event = ActivationPrivacy(clip_norm=1.0, noise_multiplier=4.0).release_event(releases=3, server_round=1)
    assert (event.kind, event.noise_multiplier, event.sample_rate, event.steps, event.relation) == (
        "activation", 4.0, 1.0, 3, "replace-one")
    # Three releases of a Gaussian with sensitivity 2C and std 4C: one add/remove Gaussian with sigma = 2/sqrt(3).
    composed = EdgeworthAccountant.from_events([event]).epsilon(1e-5, warn=False).epsilon_certified
    single = EdgeworthAccountant.from_events([event.__class__("activation", noise_multiplier=2 / math.sqrt(3),
                                                              sample_rate=1.0)]).epsilon(1e-5, warn=False)
    assert abs(composed - single.epsilon_certified) < 0.02 * composed
    assert ActivationPrivacy(1.0, 0.0).release_event(3, 1) is None


def test_randomized_response_keeps_the_label_at_the_rr_rate_and_is_fixed_per_example():
    labels = [i % 3 for i in range(6000)]
    indices = list(range(6000))
    noisy = randomized_labels(labels, indices, num_labels=3, epsilon=1.0, secret=7)
    kept = np.mean([a == b for a, b in zip(labels, noisy)])
    assert abs(kept - keep_probability(1.0, 3)) < 0.02
    assert all(0 <= y < 3 for y in noisy)
    assert noisy == randomized_labels(labels, indices, 3, 1.0, secret=7)  # same noisy label every release
    assert noisy != randomized_labels(labels, indices, 3, 1.0, secret=8)  # depends on the client's secret


def test_poisson_batches_have_the_sampling_rate_and_depend_on_the_secret():
    sizes = [len(poisson_batch(1000, 0.05, secret=3, server_round=1, step=s)) for s in range(200)]
    assert abs(np.mean(sizes) - 50) < 3 and len(set(sizes)) > 5
    assert poisson_batch(1000, 0.05, 3, 1, 0) == poisson_batch(1000, 0.05, 3, 1, 0)
    assert poisson_batch(1000, 0.05, 3, 1, 0) != poisson_batch(1000, 0.05, 4, 1, 0)


def test_activation_settings_are_validated():
    with pytest.raises(ValueError, match="act-clip-norm"):
        ActivationPrivacy(0.0, 1.0)
