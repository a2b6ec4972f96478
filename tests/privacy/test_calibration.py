import time

import pytest

from fedguard.privacy import EdgeworthAccountant, noise_multiplier_for


@pytest.mark.parametrize(
    "target,q,steps",
    [(2.0, 0.004, 10_000), (0.5, 0.01, 1000), (1.0, 1.0, 1), (0.05, 0.01, 1000), (0.2, 0.001, 100)],
)
@pytest.mark.parametrize("order", [1, 2])
def test_round_trip_within_1e_4_and_fast(target, q, steps, order):
    t0 = time.perf_counter()
    sigma = noise_multiplier_for(target, 1e-5, q, steps, order=order)
    assert time.perf_counter() - t0 < 5.0
    acc = EdgeworthAccountant(None, order)
    acc.add(sigma, q, steps)
    assert abs(acc.epsilon_estimate(1e-5) - target) <= 1e-4


def test_searches_well_above_2_5():
    sigma = noise_multiplier_for(0.05, 1e-5, 0.01, 1000)
    assert sigma > 2.5


def test_unreachable_and_too_loose_targets_raise():
    with pytest.raises(ValueError, match="unreachable"):
        noise_multiplier_for(1e-6, 1e-5, 1.0, 100_000)
    with pytest.raises(ValueError, match="smallest sigma"):
        noise_multiplier_for(1e6, 1e-5, 0.001, 1)
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_multiplier_for(-1.0, 1e-5, 0.1, 10)
    with pytest.raises(ValueError, match="steps"):
        noise_multiplier_for(1.0, 1e-5, 0.1, 0)


def test_certified_calibration_is_conservative():
    sigma = noise_multiplier_for(1.0, 1e-5, 0.02, 200, method="certified")
    acc = EdgeworthAccountant()
    acc.add(sigma, 0.02, 200)
    cert = acc.epsilon_certified(1e-5)
    assert 0.995 <= cert <= 1.0
