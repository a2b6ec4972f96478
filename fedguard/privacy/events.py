"""Mechanism events recorded by the privacy ledger and composed by the accountant.

Units and invariants:

* ``noise_multiplier`` (sigma): Gaussian noise standard deviation divided by the L2 sensitivity
  (the clipping norm), finite and > 0.
* ``sample_rate`` (q): Poisson sampling probability of one example per step, in (0, 1];
  q = 1 means no subsampling (plain Gaussian mechanism).
* ``steps``: number of identical releases (optimiser steps, exchanges ...), integer >= 1.
* ``epsilon``: for pure epsilon-DP events (e.g. label randomised response), finite and >= 0, per
  step; such events carry no sigma/q and compose by basic composition (epsilons add).

* ``relation``: the neighbouring relation the event's guarantee is stated for: ``"add-remove"`` (one
  example added to or removed from the data set; the default, and the reading of ledgers written before
  the field existed) or ``"replace-one"`` (one example replaced by another; the data set's size is public).
  For a Gaussian event, sensitivity is measured per relation: a clipped sum of norm-C contributions has L2
  sensitivity C under add/remove and 2C under replace-one, so the *same* noise multiplier (noise std / C)
  gives a larger epsilon under replace-one. Pure-epsilon events are stated for their relation by the caller.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["MechanismEvent", "InvalidEventError", "KNOWN_KINDS", "RELATIONS", "ADD_REMOVE", "REPLACE_ONE",
           "validate_kind"]

KNOWN_KINDS: frozenset[str] = frozenset({"dp-sgd", "dp-sgd-server", "activation", "label-rr", "server-aggregate"})
"""Kinds accepted by default by :class:`~fedguard.privacy.ledger.PrivacyLedger` (extensible)."""

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_FIELDS = ("kind", "noise_multiplier", "sample_rate", "steps", "round", "clip_norm", "epsilon", "relation")

ADD_REMOVE = "add-remove"
REPLACE_ONE = "replace-one"
RELATIONS = (ADD_REMOVE, REPLACE_ONE)


class InvalidEventError(ValueError):
    """A mechanism event has a missing, mistyped or out-of-range field."""


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEventError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidEventError(f"{name} must be finite, got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEventError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InvalidEventError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def validate_kind(kind: Any) -> str:
    """Return ``kind`` if it is a lower-case identifier such as 'dp-sgd'; raise otherwise."""
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise InvalidEventError(
            "kind must be a lower-case identifier of 1-64 chars [a-z0-9_.-] such as 'dp-sgd', "
            f"'activation', 'label-rr'; got {kind!r}"
        )
    return kind


@dataclass(frozen=True)
class MechanismEvent:
    """One (possibly repeated) privacy mechanism applied to a client's data.

    Gaussian event: ``MechanismEvent("dp-sgd", noise_multiplier=1.1, sample_rate=0.01, steps=30)``.
    Pure-epsilon event: ``MechanismEvent("label-rr", epsilon=2.0, steps=1)`` (sigma/q left None).
    ``relation``: ``"add-remove"`` (default) or ``"replace-one"`` (see the module docstring).
    ``round`` (>= 0) and ``clip_norm`` (> 0) are informational and do not affect accounting.
    """

    kind: str
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 1
    round: int | None = None
    clip_norm: float | None = None
    epsilon: float | None = None
    relation: str = ADD_REMOVE

    def __post_init__(self) -> None:
        validate_kind(self.kind)
        if self.relation not in RELATIONS:
            raise InvalidEventError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        object.__setattr__(self, "steps", _int("steps", self.steps, 1))
        if self.round is not None:
            object.__setattr__(self, "round", _int("round", self.round, 0))
        if self.clip_norm is not None:
            c = _real("clip_norm", self.clip_norm)
            if c <= 0:
                raise InvalidEventError(f"clip_norm must be > 0 (or None), got {c!r}")
            object.__setattr__(self, "clip_norm", c)
        if self.epsilon is not None:
            if self.noise_multiplier is not None or self.sample_rate is not None:
                raise InvalidEventError(
                    "a pure-epsilon event (epsilon set) must leave noise_multiplier and sample_rate None"
                )
            e = _real("epsilon", self.epsilon)
            if e < 0:
                raise InvalidEventError(f"epsilon must be >= 0, got {e!r}")
            object.__setattr__(self, "epsilon", e)
            return
        if self.noise_multiplier is None or self.sample_rate is None:
            raise InvalidEventError(
                "a Gaussian event needs noise_multiplier (> 0) and sample_rate (in (0, 1]); "
                "a pure-epsilon event needs epsilon (>= 0)"
            )
        sigma = _real("noise_multiplier", self.noise_multiplier)
        if sigma <= 0:
            raise InvalidEventError(f"noise_multiplier must be > 0 (noise std / L2 sensitivity), got {sigma!r}")
        q = _real("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise InvalidEventError(f"sample_rate must be in (0, 1] (Poisson sampling probability), got {q!r}")
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)

    @property
    def is_pure(self) -> bool:
        """True for a pure-epsilon event (no Gaussian noise parameters)."""
        return self.epsilon is not None

    @property
    def merge_key(self) -> tuple:
        """Events with equal keys compose as one event with the summed number of steps."""
        if self.is_pure:
            return (self.kind, "pure", self.epsilon, self.relation)
        return (self.kind, "gaussian", self.noise_multiplier, self.sample_rate, self.relation)

    def merged_with(self, other: "MechanismEvent") -> "MechanismEvent":
        """This event with ``other``'s steps added (keys must match); keeps the later round."""
        if other.merge_key != self.merge_key:
            raise ValueError(f"cannot merge events with different keys {self.merge_key} and {other.merge_key}")
        rounds = [r for r in (self.round, other.round) if r is not None]
        clip = self.clip_norm if self.clip_norm == other.clip_norm else None
        return replace(
            self,
            steps=self.steps + other.steps,
            round=max(rounds) if rounds else None,
            clip_norm=clip,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "MechanismEvent":
        """Build and validate an event from a dict; unknown or missing keys are errors."""
        if not isinstance(data, dict):
            raise InvalidEventError(f"an event must be a JSON object/dict, got {type(data).__name__}")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise InvalidEventError(f"unknown event field(s) {sorted(unknown)}; allowed: {list(_FIELDS)}")
        if "kind" not in data:
            raise InvalidEventError("event field 'kind' is required")
        return cls(**data)
