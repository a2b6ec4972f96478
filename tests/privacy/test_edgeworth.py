import numpy as np
import pytest
from scipy.optimize import fsolve
from scipy.stats import norm

from fedguard.privacy.cumulants import pllr_cumulants
from fedguard.privacy.edgeworth import edgeworth_delta, edgeworth_delta_by_direction, epsilon_for_delta


def test_gaussian_mechanism_is_exact():
    # q = 1: L is Gaussian, both orders reduce to the analytic Gaussian delta(eps).
    sigma, steps, eps = 2.0, 10, 1.5
    mu = np.sqrt(steps) / sigma
    exact = norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    total = pllr_cumulants(sigma, 1.0).scaled(steps)
    for order in (1, 2):
        assert edgeworth_delta(eps, total, order) == pytest.approx(exact, rel=1e-10)


def test_reference_values_from_the_issue():
    long_run = pllr_cumulants(1.0, 0.004).scaled(10_000)
    assert epsilon_for_delta(1e-5, long_run, 1) == pytest.approx(2.246, abs=1e-3)
    short = pllr_cumulants(0.9, 0.05).scaled(30)
    assert epsilon_for_delta(1e-5, short, 1, direction="remove") == pytest.approx(2.136, abs=1e-3)
    # the worse of the two directions is reported
    both = epsilon_for_delta(1e-5, short, 1)
    assert both == max(epsilon_for_delta(1e-5, short, 1, direction=d) for d in ("remove", "add"))


def test_non_monotone_second_order_root():
    """sigma=0.9, q=0.05, 30 steps: a naive solve of the order-2 delta(eps) = 1e-5 stops at a spurious
    root where delta is ~4.2e-3; the accountant returns the last crossing instead."""
    total = pllr_cumulants(0.9, 0.05).scaled(30)
    remove = lambda e: edgeworth_delta_by_direction(e, total, 2)["remove"]  # noqa: E731
    assert remove(0.884) == pytest.approx(4.2e-3, rel=0.02)
    naive = float(fsolve(lambda e: remove(e) - 1e-5, 0.5)[0])
    assert abs(remove(naive) - 1e-5) > 1e-4  # fsolve's answer does not satisfy its own equation
    eps = epsilon_for_delta(1e-5, total, 2, direction="remove")
    assert eps > 2.0
    grid = np.linspace(eps, eps + 20, 20_001)
    assert np.all(remove(grid) <= 1e-5 * (1 + 1e-9))
    assert remove(eps - 1e-6) > 1e-5 * (1 - 1e-6)
    assert epsilon_for_delta(1e-5, total, 2) >= eps


def test_empty_and_tiny_compositions():
    assert epsilon_for_delta(1e-5, pllr_cumulants(1.0, 0.1).scaled(0), 1) == 0.0
    assert epsilon_for_delta(0.5, pllr_cumulants(100.0, 0.001).scaled(1), 1) == 0.0


def test_rejects_bad_inputs():
    total = pllr_cumulants(1.0, 0.1).scaled(10)
    with pytest.raises(ValueError, match="order"):
        epsilon_for_delta(1e-5, total, 3)
    with pytest.raises(ValueError, match="delta"):
        epsilon_for_delta(0.0, total, 1)
