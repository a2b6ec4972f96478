"""Edgeworth approximation of (epsilon, delta) from composed PLLR cumulants.

Reference: H. Wang, S. Gao, H. Zhang, M. Shen, W. J. Su, "Analytical Composition of Differential
Privacy via the Edgeworth Accountant", arXiv:2206.04236.

For one neighbouring direction with privacy loss ``L = log dP/dQ`` the hockey-stick divergence is

    delta(eps) = Pr_P[L > eps] - e^eps * Pr_Q[L > eps].

Both tail probabilities are replaced by Edgeworth expansions of the standardised sum
``Z = (L - K1) / sqrt(K2)`` with skewness ``l3 = K3 / K2^1.5`` and excess kurtosis ``l4 = K4 / K2^2``:

    order 1:  Pr[Z > z] ~ Phi(-z) + phi(z) * l3/6 * He2(z)
    order 2:  ... + phi(z) * (l4/24 * He3(z) + l3^2/72 * He5(z))

The two add/remove directions are ``(P, Q) = (M, N0)`` with loss L ("remove") and
``(P, Q) = (N0, M)`` with loss -L ("add"); the reported delta is the larger of the two.

This is an *approximation*, not a bound: it can under-state epsilon (badly for short runs).  The
approximate delta(eps) need not be monotone (especially at order 2), so ``epsilon_for_delta``
returns the smallest eps such that delta(eps') <= delta for every eps' >= eps, found on a grid
followed by bisection of the last up-crossing -- never an unchecked root solve.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_ndtr

from .cumulants import PllrCumulants

__all__ = ["edgeworth_delta", "edgeworth_delta_by_direction", "epsilon_for_delta", "DIRECTIONS"]

DIRECTIONS = ("remove", "add")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_GRID_POINTS = 4097


def _check_order(order: int) -> None:
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2 (Edgeworth expansion order), got {order!r}")


def _log_weighted_tail(
    eps: np.ndarray, cum: tuple[float, float, float, float], order: int, shift: np.ndarray
) -> np.ndarray:
    """exp(shift) * Pr[L > eps] under an Edgeworth expansion, computed in log space per term."""
    k1, k2, k3, k4 = cum
    sd = math.sqrt(k2)
    z = (eps - k1) / sd
    l3 = k3 / k2**1.5
    corr = l3 / 6.0 * (z * z - 1.0)
    if order == 2:
        l4 = k4 / (k2 * k2)
        z2 = z * z
        corr = corr + l4 / 24.0 * z * (z2 - 3.0) + l3 * l3 / 72.0 * z * (z2 * z2 - 10.0 * z2 + 15.0)
    log_phi = -0.5 * z * z - _LOG_SQRT_2PI
    return np.exp(shift + log_ndtr(-z)) + np.exp(shift + log_phi) * corr


def _neg(c: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return (-c[0], c[1], -c[2], c[3])


def edgeworth_delta_by_direction(
    epsilon: np.ndarray | float, total: PllrCumulants, order: int = 1
) -> dict[str, np.ndarray]:
    """Approximate delta(eps) for each neighbouring direction ('remove', 'add'); eps >= 0."""
    _check_order(order)
    eps = np.asarray(epsilon, dtype=float)
    if total.is_zero:
        zero = np.zeros_like(eps)
        return {"remove": zero, "add": zero}
    pairs = {"remove": (total.alt, total.null), "add": (_neg(total.null), _neg(total.alt))}
    out = {}
    zero = np.zeros_like(eps)
    with np.errstate(over="ignore", invalid="ignore"):
        for name, (cum_p, cum_q) in pairs.items():
            value = _log_weighted_tail(eps, cum_p, order, zero) - _log_weighted_tail(eps, cum_q, order, eps)
            # Overflow (e^eps times a tail far outside the expansion's range) is treated as "delta is
            # large here", which can only make the reported epsilon larger.
            out[name] = np.where(np.isfinite(value), value, np.inf)
    return out


def edgeworth_delta(epsilon: np.ndarray | float, total: PllrCumulants, order: int = 1) -> np.ndarray | float:
    """Approximate delta(eps) = max over add/remove directions (an estimate, not a bound)."""
    by_dir = edgeworth_delta_by_direction(epsilon, total, order)
    out = np.maximum(by_dir["remove"], by_dir["add"])
    return float(out) if np.ndim(out) == 0 else out


def _last_crossing(f, delta: float, total: PllrCumulants) -> float:
    """Smallest eps >= 0 with f(eps') <= delta for all eps' >= eps (grid + bisection)."""
    scale = max(
        max(abs(c[0]) + 10.0 * math.sqrt(c[1]) for c in (total.null, total.alt)), 1.0
    )
    hi = scale
    for _ in range(80):  # the expansion tails decay like exp(-z^2/2); make sure we are past them
        probe = np.linspace(hi, 2.0 * hi, 64)
        if np.all(f(probe) <= delta * 1e-2):
            break
        hi *= 2.0
    else:  # pragma: no cover - only for absurd inputs
        raise ArithmeticError("Edgeworth delta(eps) did not decay; cannot bracket epsilon")
    grid = np.linspace(0.0, hi, _GRID_POINTS)
    vals = f(grid)
    above = np.nonzero(vals > delta)[0]
    if above.size == 0:
        return 0.0
    i = int(above[-1])
    return float(brentq(lambda e: float(f(np.asarray(e))) - delta, grid[i], grid[i + 1], xtol=1e-12, rtol=1e-13))


def epsilon_for_delta(
    delta: float, total: PllrCumulants, order: int = 1, direction: str | None = None
) -> float:
    """Edgeworth estimate of the smallest eps with delta(eps') <= delta for all eps' >= eps.

    ``direction`` None takes the worse of 'remove' and 'add'; otherwise only that direction.
    """
    _check_order(order)
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be finite and in (0, 1), got {delta!r}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} or None, got {direction!r}")
    if total.is_zero:
        return 0.0
    if direction is None:
        f = lambda e: edgeworth_delta(e, total, order)  # noqa: E731
    else:
        f = lambda e: edgeworth_delta_by_direction(e, total, order)[direction]  # noqa: E731
    return _last_crossing(f, delta, total)
