"""The whole-model DP-SGD mechanism: one sensitivity over both halves (group-wise clipping), its events per
adversary, and the clip-noise-normalise step."""

from __future__ import annotations

import pytest
import torch


def test_private_mean_gradient_clips_each_example_jointly_then_noises_and_normalises():
    from fedguard.mechanisms.dp_sgd import private_mean_gradient

    a = torch.tensor([[3.0, 0.0], [0.3, 0.0]])  # example 0: norm 5 over both tensors; example 1: norm 0.5
    b = torch.tensor([[4.0], [0.4]])
    out = private_mean_gradient([a, b], clip_norm=1.0, noise_std=0.0, expected_batch_size=2.0,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[0], (torch.tensor([0.6, 0.0]) + torch.tensor([0.3, 0.0])) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], (torch.tensor([0.8]) + torch.tensor([0.4])) / 2, atol=1e-5, rtol=0)
    noisy = private_mean_gradient([a, b], 1.0, 10.0, 2.0, torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy[0], out[0])


def test_whole_model_noise_covers_both_groups_with_one_sensitivity():
    from fedguard.mechanisms.dp_sgd import WholeModelDP

    dp = WholeModelDP(noise_multiplier=0.8, client_clip=3.0, server_clip=4.0)
    assert dp.total_clip == pytest.approx(5.0) and dp.noise_std == pytest.approx(4.0)
    assert dp.client_noise_multiplier == pytest.approx(4.0 / 3.0)  # what Opacus gets for std 4 at clip 3
    model = dp.model_event(sample_rate=0.01, steps=7, server_round=2)
    assert (model.kind, model.noise_multiplier, model.sample_rate, model.steps, model.relation) == (
        "dp-sgd", 0.8, 0.01, 7, "replace-one")
    server = dp.server_event(releases=2, server_round=2)  # unamplified: q = 1, sensitivity 2 C_c
    assert (server.kind, server.noise_multiplier, server.sample_rate, server.steps, server.relation) == (
        "dp-sgd-server", pytest.approx(4.0 / 3.0), 1.0, 2, "replace-one")
    with pytest.raises(ValueError, match="dp-server-max-grad-norm"):
        WholeModelDP(1.0, 1.0, 0.0)
