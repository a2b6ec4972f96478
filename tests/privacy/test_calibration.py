import time

import pytest

from fedguard.privacy import EdgeworthAccountant, MechanismEvent, noise_multiplier_for


@pytest.mark.parametrize(
    "target,q,steps",
    [(2.0, 0.004, 10_000), (0.5, 0.01, 1000), (1.0, 1.0, 1), (0.05, 0.01, 1000), (0.2, 0.001, 100)],
)
@pytest.mark.parametrize("order", [1, 2])
def test_edgeworth_round_trip_within_1e_4_and_fast(target, q, steps, order):
    t0 = time.perf_counter()
    sigma = noise_multiplier_for(target, 1e-5, q, steps, order=order, method="edgeworth")
    assert time.perf_counter() - t0 < 5.0
    acc = EdgeworthAccountant(None, order)
    acc.add(sigma, q, steps)
    assert abs(acc.epsilon_estimate(1e-5) - target) <= 1e-4


def test_searches_well_above_2_5():
    sigma = noise_multiplier_for(0.05, 1e-5, 0.01, 1000, method="edgeworth")
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


def test_certified_calibration_is_the_default_and_conservative():
    sigma = noise_multiplier_for(1.0, 1e-5, 0.02, 200)
    assert sigma == noise_multiplier_for(1.0, 1e-5, 0.02, 200, method="certified")
    acc = EdgeworthAccountant()
    acc.add(sigma, 0.02, 200)
    cert = acc.epsilon_certified(1e-5)
    assert 0.995 <= cert <= 1.0


def test_the_edgeworth_root_of_a_short_small_sigma_run_is_not_a_guarantee():
    # privacy-pitfalls: q = 0.00143 over 180 steps, target 8 -> Edgeworth sigma 0.282 (certified eps ~16.5),
    # certified sigma 0.363.
    edgeworth = noise_multiplier_for(8.0, 1e-5, 0.00143, 180, method="edgeworth")
    certified = noise_multiplier_for(8.0, 1e-5, 0.00143, 180)
    assert edgeworth == pytest.approx(0.282, abs=0.002) and certified == pytest.approx(0.363, abs=0.002)
    acc = EdgeworthAccountant()
    acc.add(edgeworth, 0.00143, 180)
    assert acc.epsilon_certified(1e-5) > 15


def test_replace_one_calibration_needs_more_noise_than_add_remove():
    add_remove = noise_multiplier_for(2.0, 1e-5, 0.01, 300)
    replace_one = noise_multiplier_for(2.0, 1e-5, 0.01, 300, relation="replace-one")
    assert replace_one > add_remove
    acc = EdgeworthAccountant()
    acc.add_event(MechanismEvent("dp-sgd", noise_multiplier=replace_one, sample_rate=0.01, steps=300,
                                 relation="replace-one"))
    assert 1.99 <= acc.epsilon_certified(1e-5) <= 2.0
