"""``EdgeworthAccountant``: fast Edgeworth estimates plus certified PLD bounds, Flower-compatible.

What it accounts: compositions of Poisson-subsampled Gaussian mechanisms (noise multiplier sigma =
noise std / L2 sensitivity, Poisson sampling probability q in (0, 1]; q = 1 is the plain Gaussian
mechanism) under *add/remove-one* neighbours — or, for events with ``relation="replace-one"``, under
replace-one neighbours (the data set's size is public) — plus optional pure-epsilon events (basic
composition: their epsilons are added to both the estimate and the bound).  The history is stored as
``{(sigma, q): steps}`` (and ``{(sigma, q, "replace-one"): steps}``; O(number of distinct events)), and the
Edgeworth query costs O(number of distinct events), independent of the number of steps.

Estimate vs guarantee.  The Edgeworth value is an approximation, not a guarantee.  Measured against
``dp_accounting`` PLD (pessimistic, vdi 1e-4) at delta = 1e-5 on sigma in {0.6, 0.8, 1, 1.5, 2} x
q in {0.001, 0.004, 0.01, 0.05} x steps in {30 ... 10,000} (first order; docs/privacy-accounting.md):

* reliable: sigma >= 1, steps >= 300, epsilon <~ 10: within [-2 %, +6 %] (sigma >= 1.5 and
  steps >= 1000: within [0 %, +4 %]), e.g. sigma=1.0, q=0.004, 10,000 steps: 2.246 vs 2.182 (+2.9 %);
* under-states (dangerous) for sigma < 1 unless q*steps is large, and for short runs: sigma=0.9,
  q=0.05, 30 steps: 2.164 vs 2.865 (-24 %); sigma=0.8, q=0.004, 30 steps: -57 %; sigma=0.6,
  q=0.001: -78 % at 30 steps and still -23 % at 10,000 steps; sigma=1, q<=0.01, <=100 steps: to -32 %;
* over-states when epsilon is large (sigma <= 0.8, q=0.05, >= 1000 steps: +12 % ... +107 %), where the
  second-order expansion is within +-2 %.

Therefore every query also returns the certified upper bound (see :mod:`.certified`); budget
decisions (``get_epsilon``, ``would_exceed``, ``get_privacy_spent``) use the certified value, and
a :class:`~fedguard.privacy.estimate.EdgeworthUnderstatementWarning` is emitted when the estimate
is more than 2 % below it.

Flower drop-in: with a ``flwr.serverapp.PrivacyConfig`` the class satisfies
``flwr.serverapp.PrivacyAccountant`` and mirrors Flower's ``RdpAccountant`` event semantics:
``NO_AMPLIFICATION`` -> q = 1 (sample metadata only reported), ``POISSON`` -> q =
sample_size / population_size.  ``WITHOUT_REPLACEMENT`` (replace-one neighbours) is not supported
(ValueError).  In Flower's DP wrappers sigma is the noise multiplier of the aggregate, so epsilon is
client-level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import edgeworth
from .certified import DEFAULT_VALUE_DISCRETIZATION_INTERVAL, PldCertifier, default_certifier
from .cumulants import PllrCumulants, pllr_cumulants, pllr_cumulants_replace_one
from .estimate import UNDERSTATEMENT_TOLERANCE, PrivacyEstimate, warn_if_understated
from .events import REPLACE_ONE, MechanismEvent

if TYPE_CHECKING:  # pragma: no cover
    from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, PrivacySpent

__all__ = ["EdgeworthAccountant"]

_STATE_SCHEMA_VERSION = 1
_BACKEND = "edgeworth"


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be finite and strictly between 0 and 1, got {delta!r}")
    return float(delta)


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return float(epsilon)


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    return count


class EdgeworthAccountant:
    """Privacy accountant for Poisson-subsampled Gaussian compositions (add/remove neighbours).

    Parameters
    ----------
    config : flwr.serverapp.PrivacyConfig or None
        Needed only for the Flower protocol methods (``compose``, ``get_privacy_spent``, ...).
    order : int
        Edgeworth expansion order for the estimate, 1 or 2.
    value_discretization_interval : float
        PLD grid spacing for the certified bound (default 1e-4).
    warn_tolerance : float
        Warn when the estimate is more than this fraction below the certified bound (0.02).
    """

    def __init__(
        self,
        config: "PrivacyConfig | None" = None,
        order: int = 1,
        *,
        value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
        warn_tolerance: float = UNDERSTATEMENT_TOLERANCE,
        certifier: PldCertifier | None = None,
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2 (Edgeworth expansion order), got {order!r}")
        if config is not None:
            from flwr.serverapp import SamplingMethod

            if config.sampling_method is SamplingMethod.WITHOUT_REPLACEMENT:
                raise ValueError(
                    "EdgeworthAccountant supports sampling_method 'poisson' and 'no-amplification' "
                    "(add-or-remove-one neighbours); 'without-replacement' (replace-one) is not supported."
                )
        self._config = config
        self.order = order
        self.warn_tolerance = float(warn_tolerance)
        self._certifier = certifier or default_certifier(value_discretization_interval)
        self._gaussian: dict[tuple[float, float], int] = {}  # add/remove neighbours
        self._replace: dict[tuple[float, float], int] = {}  # replace-one neighbours
        self._pure_epsilon = 0.0
        self._pure_steps = 0
        self._compositions: list[tuple[Any, int]] = []  # Flower events, consecutive duplicates merged
        self._num_releases = 0

    # ------------------------------------------------------------------ generic composition API
    def add(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Compose ``steps`` Poisson-subsampled Gaussian steps (sigma > 0, q in (0, 1], steps >= 1)."""
        event = MechanismEvent("dp-sgd", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        self.add_event(event)

    def add_event(self, event: MechanismEvent) -> None:
        """Compose a validated :class:`MechanismEvent` (Gaussian or pure-epsilon)."""
        if not isinstance(event, MechanismEvent):
            raise TypeError(f"expected MechanismEvent, got {type(event).__name__}")
        if event.is_pure:
            self._pure_epsilon += float(event.epsilon) * event.steps  # type: ignore[arg-type]
            self._pure_steps += event.steps
            return
        key = (float(event.noise_multiplier), float(event.sample_rate))  # type: ignore[arg-type]
        table = self._replace if event.relation == REPLACE_ONE else self._gaussian
        table[key] = table.get(key, 0) + event.steps

    @classmethod
    def from_events(cls, events: Iterable[MechanismEvent], order: int = 1, **kwargs: Any) -> "EdgeworthAccountant":
        """An accountant (without Flower config) holding the composition of ``events``."""
        acc = cls(None, order, **kwargs)
        for event in events:
            acc.add_event(event)
        return acc

    @property
    def history(self) -> dict[tuple, int]:
        """Copy of the Gaussian history: ``{(sigma, q): steps}`` for add/remove events and
        ``{(sigma, q, "replace-one"): steps}`` for replace-one events."""
        out: dict[tuple, int] = dict(self._gaussian)
        out.update({(s, q, REPLACE_ONE): n for (s, q), n in self._replace.items()})
        return out

    @property
    def pure_epsilon(self) -> float:
        """Total epsilon of pure-epsilon events (basic composition)."""
        return self._pure_epsilon

    @property
    def num_steps(self) -> int:
        """Total number of composed steps (Gaussian and pure)."""
        return sum(self._gaussian.values()) + sum(self._replace.values()) + self._pure_steps

    @property
    def method(self) -> str:
        """Name of the estimate's method."""
        return f"edgeworth-order{self.order}"

    @property
    def certified_method(self) -> str:
        """Name of the certified bound's method."""
        extra = " + basic composition of pure-epsilon events" if self._pure_steps else ""
        return self._certifier.method + extra

    def cumulants(self) -> PllrCumulants:
        """Summed PLLR cumulants of the Gaussian history (deterministic order: sorted keys)."""
        total = PllrCumulants.zero()
        for (sigma, q), steps in sorted(self._gaussian.items()):
            total = total + pllr_cumulants(sigma, q).scaled(steps)
        for (sigma, q), steps in sorted(self._replace.items()):
            total = total + pllr_cumulants_replace_one(sigma, q).scaled(steps)
        return total

    def epsilon_estimate(self, delta: float) -> float:
        """Edgeworth epsilon at ``delta`` (approximation; cost independent of the number of steps)."""
        delta = _check_delta(delta)
        return edgeworth.epsilon_for_delta(delta, self.cumulants(), self.order) + self._pure_epsilon

    def epsilon_certified(self, delta: float) -> float:
        """Certified upper bound on epsilon at ``delta`` (pessimistic PLD, cached)."""
        delta = _check_delta(delta)
        return self._certifier.epsilon(self.history, delta) + self._pure_epsilon

    def epsilon(self, delta: float, *, warn: bool = True) -> PrivacyEstimate:
        """Estimate and certified epsilon at ``delta``; warns when the estimate under-states by > 2 %."""
        delta = _check_delta(delta)
        result = PrivacyEstimate(
            epsilon_estimate=self.epsilon_estimate(delta),
            epsilon_certified=self.epsilon_certified(delta),
            delta=delta,
            method=self.method,
            certified_method=self.certified_method,
            num_steps=self.num_steps,
        )
        if warn:
            warn_if_understated(result, self.warn_tolerance)
        return result

    def delta_estimate(self, epsilon: float) -> float:
        """Edgeworth delta at ``epsilon`` (approximation, clipped to [0, 1])."""
        epsilon = _check_epsilon(epsilon) - self._pure_epsilon
        if epsilon < 0:
            return 1.0
        value = float(edgeworth.edgeworth_delta(epsilon, self.cumulants(), self.order))
        return min(max(value, 0.0), 1.0)

    def delta_certified(self, epsilon: float) -> float:
        """Certified upper bound on delta at ``epsilon`` (pessimistic PLD)."""
        epsilon = _check_epsilon(epsilon) - self._pure_epsilon
        if epsilon < 0:
            return 1.0
        return min(self._certifier.delta(self.history, epsilon), 1.0)

    # ------------------------------------------------------------------ Flower PrivacyAccountant
    @property
    def config(self) -> "PrivacyConfig":
        """The Flower privacy configuration (required for the Flower protocol methods)."""
        if self._config is None:
            raise ValueError("this EdgeworthAccountant was created without a flwr PrivacyConfig")
        return self._config

    @property
    def num_releases(self) -> int:
        """Number of Flower releases composed via :meth:`compose`."""
        return self._num_releases

    def _to_key(self, event: "GaussianPrivacyEvent") -> tuple[float, float]:
        from flwr.serverapp import GaussianPrivacyEvent, SamplingMethod

        if not isinstance(event, GaussianPrivacyEvent):
            raise TypeError(f"expected flwr GaussianPrivacyEvent, got {type(event).__name__}")
        config = self.config
        if event.population_size != config.population_size:
            raise ValueError(
                "Privacy event population_size does not match PrivacyConfig: "
                f"{event.population_size} != {config.population_size}."
            )
        if config.sampling_method is SamplingMethod.POISSON:
            q = event.sample_size / event.population_size
        else:  # NO_AMPLIFICATION: sampling metadata is reported only, q = 1
            q = 1.0
        return float(event.noise_multiplier), float(q)

    def _project(self, event: "GaussianPrivacyEvent", count: int) -> dict[tuple[float, float], int]:
        key = self._to_key(event)
        history = self.history
        history[key] = history.get(key, 0) + count
        return history

    def compose(self, event: "GaussianPrivacyEvent", count: int = 1) -> None:
        """Compose ``count`` identical Flower Gaussian releases."""
        count = _check_count(count)
        sigma, q = self._to_key(event)
        self.add(sigma, q, count)
        self._num_releases += count
        if self._compositions and self._compositions[-1][0] == event:
            self._compositions[-1] = (event, self._compositions[-1][1] + count)
        else:
            self._compositions.append((event, count))

    def get_epsilon(self, delta: float) -> float:
        """Certified cumulative epsilon at ``delta`` (a guarantee; see :meth:`get_epsilon_estimate`)."""
        return self.epsilon_certified(delta)

    def get_epsilon_estimate(self, delta: float) -> float:
        """Edgeworth estimate of the cumulative epsilon at ``delta`` (not a guarantee)."""
        return self.epsilon_estimate(delta)

    def get_delta(self, epsilon: float) -> float:
        """Certified cumulative delta at ``epsilon``."""
        return self.delta_certified(epsilon)

    def get_privacy_spent(self, delta: float | None = None) -> "PrivacySpent":
        """Certified cumulative spending at ``delta`` (default ``config.target_delta``).

        ``accounting_method`` names the certified bound and carries the Edgeworth estimate,
        e.g. ``"pld-pessimistic(vdi=0.0001); edgeworth-order1 estimate=2.246"``.
        """
        from flwr.serverapp import PrivacySpent

        target = self.config.target_delta if delta is None else _check_delta(delta)
        result = self.epsilon(target)
        return PrivacySpent(
            epsilon=result.epsilon_certified,
            delta=target,
            num_releases=self.num_releases,
            accounting_method=(
                f"pld-pessimistic(vdi={self._certifier.value_discretization_interval:g}); "
                f"{self.method} estimate={result.epsilon_estimate:.6g}"
            ),
            optimal_order=None,
        )

    def would_exceed(
        self, event: "GaussianPrivacyEvent", max_epsilon: float | None = None, count: int = 1
    ) -> bool:
        """Whether composing ``event`` ``count`` times would push the *certified* epsilon at
        ``config.target_delta`` above ``max_epsilon`` (default ``config.max_epsilon``).  No mutation."""
        count = _check_count(count)
        limit = self.config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be supplied either in PrivacyConfig or to would_exceed().")
        if isinstance(limit, bool) or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"max_epsilon must be positive and finite, got {limit!r}")
        projected = self._certifier.epsilon(self._project(event, count), self.config.target_delta)
        return bool(projected + self._pure_epsilon > limit)

    def state_dict(self) -> dict[str, object]:
        """JSON-serialisable state (Flower schema: config + compositions; plus order)."""
        config = self.config
        return {
            "schema_version": _STATE_SCHEMA_VERSION,
            "backend": _BACKEND,
            "order": self.order,
            "config": {
                "target_delta": config.target_delta,
                "population_size": config.population_size,
                "neighboring_relation": config.neighboring_relation.value,
                "sampling_method": config.sampling_method.value,
                "max_epsilon": config.max_epsilon,
            },
            "compositions": [
                {
                    "event": {
                        "noise_multiplier": ev.noise_multiplier,
                        "sample_size": ev.sample_size,
                        "population_size": ev.population_size,
                    },
                    "count": count,
                }
                for ev, count in self._compositions
            ],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output; the config must equal this accountant's config."""
        from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod

        if not isinstance(state, dict) or state.get("schema_version") != _STATE_SCHEMA_VERSION:
            raise ValueError(f"Unsupported accountant state schema version: {state.get('schema_version') if isinstance(state, dict) else state!r}.")
        if state.get("backend") != _BACKEND:
            raise ValueError("Accountant state was produced by a different backend.")
        try:
            c = state["config"]
            restored = PrivacyConfig(
                target_delta=float(c["target_delta"]),
                population_size=int(c["population_size"]),
                neighboring_relation=NeighboringRelation(c["neighboring_relation"]),
                sampling_method=SamplingMethod(c["sampling_method"]),
                max_epsilon=None if c["max_epsilon"] is None else float(c["max_epsilon"]),
            )
            comps = [
                (GaussianPrivacyEvent(**item["event"]), _check_count(item["count"]))
                for item in state["compositions"]  # type: ignore[union-attr]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"Invalid accountant state: {exc}") from exc
        if restored != self.config:
            raise ValueError("Accountant state privacy configuration does not match the current configuration.")
        fresh = EdgeworthAccountant(self._config, self.order, certifier=self._certifier, warn_tolerance=self.warn_tolerance)
        for ev, count in comps:
            fresh.compose(ev, count)
        self._gaussian, self._replace, self._compositions = fresh._gaussian, fresh._replace, fresh._compositions
        self._num_releases, self._pure_epsilon, self._pure_steps = fresh._num_releases, 0.0, 0
