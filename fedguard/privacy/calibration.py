"""Noise calibration: the noise multiplier that reaches a target epsilon."""

from __future__ import annotations

import math

from scipy.optimize import brentq

from . import edgeworth
from .certified import DEFAULT_VALUE_DISCRETIZATION_INTERVAL, default_certifier
from .cumulants import pllr_cumulants, pllr_cumulants_replace_one
from .events import ADD_REMOVE, RELATIONS, REPLACE_ONE

__all__ = ["noise_multiplier_for", "DEFAULT_SIGMA_RANGE"]

DEFAULT_SIGMA_RANGE = (0.1, 1000.0)


def _validate(target_epsilon: float, delta: float, q: float, steps: int) -> None:
    if isinstance(target_epsilon, bool) or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if not math.isfinite(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be finite and in (0, 1), got {delta!r}")
    if not math.isfinite(q) or not 0 < q <= 1:
        raise ValueError(f"q (sample rate) must be finite and in (0, 1], got {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    q: float,
    steps: int,
    *,
    order: int = 1,
    method: str = "certified",
    relation: str = ADD_REMOVE,
    sigma_range: tuple[float, float] = DEFAULT_SIGMA_RANGE,
    tolerance: float = 1e-4,
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """Noise multiplier sigma (noise std / L2 sensitivity) reaching ``target_epsilon`` at ``delta``
    after ``steps`` Poisson-subsampled Gaussian steps with sampling probability ``q``.

    ``method="certified"`` (default): the smallest sigma (to relative 1e-4) whose certified PLD epsilon
    is <= target - a guarantee; slower (seconds for long runs).
    ``method="edgeworth"``: |eps_edgeworth(sigma) - target| <= ``tolerance`` (1e-4).  This is an
    estimate, not a guarantee: for short runs or small sigma the true epsilon at that sigma can be far
    above the target (q = 0.00143, 180 steps, target 8: sigma 0.282, whose certified epsilon is 16.5).
    ``relation``: ``"add-remove"`` (default) or ``"replace-one"`` neighbours.

    Raises ValueError when no sigma in ``sigma_range`` (default [0.1, 1000]) reaches the target.
    """
    _validate(target_epsilon, delta, q, steps)
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    lo, hi = map(float, sigma_range)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"sigma_range must satisfy 0 < lo < hi < inf, got {sigma_range!r}")
    if method == "edgeworth":
        return _edgeworth_sigma(target_epsilon, delta, q, steps, order, lo, hi, tolerance, relation)
    if method == "certified":
        return _certified_sigma(target_epsilon, delta, q, steps, order, lo, hi, value_discretization_interval,
                                relation)
    raise ValueError(f"method must be 'edgeworth' or 'certified', got {method!r}")


def _unreachable(target: float, sigma: float, eps: float, q: float, steps: int, delta: float) -> ValueError:
    return ValueError(
        f"target_epsilon={target} is unreachable: even sigma={sigma:g} gives epsilon={eps:.4g} "
        f"(q={q}, steps={steps}, delta={delta}); widen sigma_range or relax the target."
    )


def _too_loose(target: float, sigma: float, eps: float, q: float, steps: int, delta: float) -> ValueError:
    return ValueError(
        f"target_epsilon={target} is above epsilon={eps:.4g} at the smallest sigma={sigma:g} "
        f"in sigma_range (q={q}, steps={steps}, delta={delta}); any sigma >= {sigma:g} meets it."
    )


def _edgeworth_sigma(target, delta, q, steps, order, lo, hi, tolerance, relation=ADD_REMOVE) -> float:
    cumulants = pllr_cumulants_replace_one if relation == REPLACE_ONE else pllr_cumulants
    eps = lambda s: edgeworth.epsilon_for_delta(delta, cumulants(s, q).scaled(steps), order)  # noqa: E731
    eps_hi = eps(hi)
    if eps_hi > target:
        raise _unreachable(target, hi, eps_hi, q, steps, delta)
    eps_lo = eps(lo)
    if eps_lo < target:
        raise _too_loose(target, lo, eps_lo, q, steps, delta)
    f = lambda log_s: eps(math.exp(log_s)) - target  # noqa: E731
    a, b = math.log(lo), math.log(hi)
    for _ in range(4):  # narrow the bracket coarsely before Brent's method
        mid = 0.5 * (a + b)
        if f(mid) > 0:
            a = mid
        else:
            b = mid
    sigma = math.exp(brentq(f, a, b, xtol=1e-12, rtol=4 * 2.23e-16, maxiter=200))
    err = abs(eps(sigma) - target)
    if err > tolerance:
        raise ArithmeticError(
            f"Edgeworth epsilon(sigma) jumps near sigma={sigma:.6g} (|eps - target| = {err:.3g}); "
            "the order-2 expansion can be discontinuous - use order=1 or method='certified'."
        )
    return sigma


def _certified_sigma(target, delta, q, steps, order, lo, hi, vdi, relation=ADD_REMOVE) -> float:
    """Brent on the certified epsilon, started from the Edgeworth sigma; returns the smallest
    evaluated sigma whose certified epsilon is <= target (conservative side of the root)."""
    cert = default_certifier(vdi)
    safe: list[float] = []

    def f(log_s: float) -> float:
        s = math.exp(log_s)
        value = cert.epsilon({(s, q, relation): steps}, delta) - target
        if value <= 0:
            safe.append(s)
        return value

    try:
        start = _edgeworth_sigma(target, delta, q, steps, order, lo, hi, float("inf"), relation)
    except ValueError:
        start = math.sqrt(lo * hi)
    a = b = math.log(start)
    step = math.log(1.1)
    while f(b) > 0:  # expand upwards until certified eps <= target
        a, b = b, min(b + step, math.log(hi))
        step *= 2
        if a == b:
            raise _unreachable(target, hi, f(b) + target, q, steps, delta)
    step = math.log(1.1)
    while a == b or f(a) <= 0:  # expand downwards until certified eps > target
        if a <= math.log(lo):
            raise _too_loose(target, lo, f(math.log(lo)) + target, q, steps, delta)
        a = max(a - step, math.log(lo))
        step *= 2
    brentq(f, a, b, xtol=1e-4, maxiter=100)
    return min(safe)
