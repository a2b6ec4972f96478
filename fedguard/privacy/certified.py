"""Certified upper bounds from Google ``dp_accounting``'s privacy-loss-distribution (PLD) accountant.

Each distinct Poisson-subsampled Gaussian ``(sigma, q)`` is turned into a PLD with
``from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1, sampling_prob=q,
pessimistic_estimate=True, value_discretization_interval=vdi, use_connect_dots=True)`` under
ADD_OR_REMOVE_ONE neighbours (the PLD keeps both the remove and the add direction and reports the
worse) or, for a history key ``(sigma, q, "replace-one")``, under REPLACE_ONE neighbours (the pair
``(1-q) N(0, sigma^2) + q N(+1, sigma^2)`` vs ``(1-q) N(0, sigma^2) + q N(-1, sigma^2)``: a clipped
contribution replaced by its opposite; for q = 1 that is sensitivity 2), self-composed ``steps`` times,
and the distinct events are composed with each other.
Pessimistic rounding makes ``get_epsilon_for_delta`` an upper bound on the true epsilon
(up to floating point), hence "certified".  ``vdi`` defaults to 1e-4, the library default.

Caching keeps per-round use cheap: composed PLDs are cached per ``(sigma, q, steps)`` (LRU); a new
history that extends a cached one (the per-round case) is obtained by composing the cached total with
only the new steps (pessimistic PLDs stay pessimistic under composition, so the bound stays valid;
values can differ from a from-scratch composition in the last digits); the
fully composed PLDs of recently queried event multisets are kept (LRU), and answers are cached per (event multiset, delta or epsilon), so repeated queries on an unchanged
history cost a dictionary lookup.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

from dp_accounting import privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy.special import log_ndtr

__all__ = ["PldCertifier", "DEFAULT_VALUE_DISCRETIZATION_INTERVAL", "default_certifier"]

DEFAULT_VALUE_DISCRETIZATION_INTERVAL = 1e-4

GaussianHistory = Mapping[tuple, int]
"""Composition history: ``{(noise_multiplier, sample_rate): steps}`` (add/remove neighbours) and/or
``{(noise_multiplier, sample_rate, "replace-one"): steps}`` (replace-one neighbours)."""

REPLACE_ONE = "replace-one"
ADD_REMOVE = "add-remove"


def _items(history: GaussianHistory) -> frozenset[tuple[float, float, int, str]]:
    """``{(sigma, q, steps, relation)}`` of a history (relation ``add-remove`` for 2-tuple keys)."""
    out = set()
    for key, n in history.items():
        relation = key[2] if len(key) > 2 else ADD_REMOVE
        if relation not in (ADD_REMOVE, REPLACE_ONE):
            raise ValueError(f"unknown neighbouring relation {relation!r} in history key {key!r}")
        if n > 0:
            out.add((float(key[0]), float(key[1]), int(n), relation))
    return frozenset(out)


class PldCertifier:
    """Pessimistic PLD upper bounds on epsilon(delta) / delta(epsilon) for a Gaussian history.

    ``value_discretization_interval`` is the PLD's privacy-loss grid spacing (in nats); smaller is
    tighter and slower.  ``cache_size`` bounds the number of cached ``(sigma, q, steps)`` PLDs.
    """

    def __init__(
        self,
        value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
        cache_size: int = 64,
    ) -> None:
        if not (math.isfinite(value_discretization_interval) and 0 < value_discretization_interval < 1):
            raise ValueError(
                "value_discretization_interval must be finite and in (0, 1), "
                f"got {value_discretization_interval!r}"
            )
        self.value_discretization_interval = float(value_discretization_interval)
        self._cache_size = int(cache_size)
        self._composed: OrderedDict[tuple[float, float, int], object] = OrderedDict()
        self._totals: OrderedDict[frozenset, object] = OrderedDict()
        self._answers: OrderedDict[tuple, float] = OrderedDict()

    @property
    def method(self) -> str:
        """Human-readable name of the bound, including the discretisation interval."""
        return f"dp_accounting PLD (pessimistic, connect-the-dots, vdi={self.value_discretization_interval:g})"

    def _event_pld(self, sigma: float, q: float, steps: int, relation: str = ADD_REMOVE):
        key = (float(sigma), float(q), int(steps), relation)
        hit = self._composed.get(key)
        if hit is not None:
            self._composed.move_to_end(key)
            return hit
        neighbours = (privacy_accountant.NeighboringRelation.REPLACE_ONE if relation == REPLACE_ONE
                      else privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE)
        base = pld_lib.from_gaussian_mechanism(
            standard_deviation=float(sigma),
            sensitivity=1.0,
            sampling_prob=float(q),
            pessimistic_estimate=True,
            value_discretization_interval=self.value_discretization_interval,
            use_connect_dots=True,
            neighboring_relation=neighbours,
        )
        pld = base.self_compose(int(steps)) if steps > 1 else base
        self._composed[key] = pld
        if len(self._composed) > self._cache_size:
            self._composed.popitem(last=False)
        return pld

    def pld(self, history: GaussianHistory):
        """The composed pessimistic PLD of ``history`` (None for an empty history)."""
        items = _items(history)
        if items in self._totals:
            self._totals.move_to_end(items)
            return self._totals[items]
        wanted = {(s, q, r): n for s, q, n, r in items}
        total, missing = None, dict(wanted)
        # Incremental path: extend the largest cached composition that is a sub-history of this one
        # (per-round use adds one event or a few steps), composing only the difference.
        best = None
        for key in reversed(self._totals):
            old = {(s, q, r): n for s, q, n, r in key}
            if all(wanted.get(k, 0) >= n for k, n in old.items()):
                if best is None or sum(old.values()) > sum(best[1].values()):
                    best = (key, old)
        if best is not None:
            total = self._totals[best[0]]
            missing = {k: n - best[1].get(k, 0) for k, n in wanted.items() if n - best[1].get(k, 0) > 0}
        for (sigma, q, relation), steps in sorted(missing.items()):
            pld = self._event_pld(sigma, q, steps, relation)
            total = pld if total is None else total.compose(pld)
        self._totals[items] = total
        if len(self._totals) > self._cache_size:
            self._totals.popitem(last=False)
        return total

    def _answer(self, history: GaussianHistory, what: str, x: float) -> float:
        items = _items(history)
        key = (items, what, float(x))
        if key in self._answers:
            self._answers.move_to_end(key)
            return self._answers[key]
        if items and all(q == 1.0 for _, q, _, _ in items):
            # Unsampled Gaussians compose exactly into one Gaussian mechanism with mu = sqrt(sum n (s/sigma)^2),
            # s = 1 (add/remove) or 2 (replace-one): its privacy curve is known in closed form, so the bound is
            # exact (and PLD would need huge grids for the tiny sigmas of local activation noise).
            mu = math.sqrt(sum(n * (2.0 if r == REPLACE_ONE else 1.0) ** 2 / s**2 for s, _, n, r in items))
            value = gaussian_epsilon(mu, x) if what == "epsilon" else gaussian_delta(mu, x)
            self._answers[key] = value
            return value
        pld = self.pld(history)
        if pld is None:
            value = 0.0
        elif what == "epsilon":
            value = float(pld.get_epsilon_for_delta(x))
        else:
            value = float(pld.get_delta_for_epsilon(x))
        self._answers[key] = value
        if len(self._answers) > 16 * self._cache_size:
            self._answers.popitem(last=False)
        return value

    def epsilon(self, history: GaussianHistory, delta: float) -> float:
        """Certified upper bound on epsilon at ``delta`` (0 for an empty history)."""
        return self._answer(history, "epsilon", delta)

    def delta(self, history: GaussianHistory, epsilon: float) -> float:
        """Certified upper bound on delta at ``epsilon`` (0 for an empty history)."""
        return self._answer(history, "delta", epsilon)


_DEFAULT: dict[float, PldCertifier] = {}


def default_certifier(value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL) -> PldCertifier:
    """A process-wide shared certifier per discretisation interval (shares the PLD cache)."""
    key = float(value_discretization_interval)
    if key not in _DEFAULT:
        _DEFAULT[key] = PldCertifier(key)
    return _DEFAULT[key]


def gaussian_delta(mu: float, epsilon: float) -> float:
    """Exact delta(epsilon) of a Gaussian mechanism with sensitivity/std ratio ``mu`` (Balle & Wang 2018)."""
    a, b = -epsilon / mu + mu / 2, -epsilon / mu - mu / 2
    return max(0.0, math.exp(log_ndtr(a)) - math.exp(epsilon + log_ndtr(b)))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon >= 0 with gaussian_delta(mu, epsilon) <= delta (bisection; delta is decreasing)."""
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, mu * mu / 2 + 10 * mu + 10
    while gaussian_delta(mu, hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if gaussian_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi
