"""The privacy numbers of a run's ``metrics.json``: which ε field is which guarantee, against whom.

Each round entry may carry any of the keys of :data:`EPSILON_FIELDS` (missing or ``null`` = no guarantee for
that release), ``privacy_delta``, and ``metrics.json`` may carry a top-level ``privacy`` object (``delta``,
``neighbouring``, ``model``, ``server``: text describing each guarantee or why there is none). Certified
values are upper bounds (guarantees); estimates are approximations and guarantee nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ADVERSARIES", "EPSILON_FIELDS", "EpsilonField", "epsilon_series", "last_value", "privacy_delta",
           "privacy_notes", "server_view_unprotected"]

ADVERSARIES: dict[str, str] = {
    "model": "third parties who see only the released model",
    "server": "the server, which sees the activations, labels and adapter updates",
    "adapter": "adapter, legacy: the released client adapter (runs before the model/server split of guarantees)",
}


@dataclass(frozen=True)
class EpsilonField:
    """One ε key of a round entry: against which adversary, for which release, of which client, and whether
    it is a certified upper bound (a guarantee) or an estimate (not a guarantee)."""

    key: str
    adversary: str  # a key of ADVERSARIES
    release: str
    statistic: str  # "worst client" or "median client"
    guarantee: bool

    @property
    def label(self) -> str:
        """A plot legend / column label that says whether the number is a guarantee."""
        kind = "guarantee" if self.guarantee else "estimate, not a guarantee"
        return f"{self.release}, {self.statistic} ({kind})"


EPSILON_FIELDS: tuple[EpsilonField, ...] = (
    EpsilonField("epsilon_model_certified", "model", "released model (DP-SGD)", "worst client", True),
    EpsilonField("epsilon_model_certified_median", "model", "released model (DP-SGD)", "median client", True),
    EpsilonField("epsilon_model_estimate", "model", "released model (DP-SGD)", "worst client", False),
    EpsilonField("epsilon_server_certified", "server", "everything the server sees", "worst client", True),
    EpsilonField("epsilon_server_certified_median", "server", "everything the server sees", "median client", True),
    EpsilonField("epsilon_activation", "server", "activations", "worst client", True),
    EpsilonField("epsilon_activation_estimate", "server", "activations", "worst client", False),
    EpsilonField("epsilon_label", "server", "labels (randomised response)", "worst client", True),
    EpsilonField("epsilon_adapter_certified", "adapter", "adapter, legacy", "worst client", True),
    EpsilonField("epsilon_adapter_certified_median", "adapter", "adapter, legacy", "median client", True),
    EpsilonField("epsilon_adapter_estimate", "adapter", "adapter, legacy", "worst client", False),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def epsilon_series(rounds: Sequence[Mapping[str, Any]]) -> dict[EpsilonField, list[float | None]]:
    """Per field with at least one number: its value in each round (``None`` where missing or null)."""
    series = {f: [_number(r.get(f.key)) for r in rounds] for f in EPSILON_FIELDS}
    return {f: values for f, values in series.items() if any(v is not None for v in values)}


def last_value(rounds: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The last round's value of ``key`` (``None`` = no guarantee in that round, or no rounds)."""
    return _number(rounds[-1].get(key)) if rounds else None


def server_view_unprotected(rounds: Sequence[Mapping[str, Any]]) -> bool:
    """The last round records ``epsilon_server_certified = null``: part of what the server sees reaches it in
    clear, so no ε covers its whole view (even when single releases, e.g. activations, have one)."""
    last = rounds[-1] if rounds else {}
    return "epsilon_server_certified" in last and _number(last["epsilon_server_certified"]) is None


def privacy_delta(metrics: Mapping[str, Any]) -> float | None:
    """δ of the run's ε: the last round's ``privacy_delta``, else ``privacy.delta``; ``None`` if neither."""
    for entry in reversed(metrics.get("rounds") or []):
        delta = _number(entry.get("privacy_delta"))
        if delta is not None:
            return delta
    privacy = metrics.get("privacy")
    return _number(privacy.get("delta")) if isinstance(privacy, Mapping) else None


def privacy_notes(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The top-level ``privacy`` object's entries other than ``delta``, as text (``{}`` when absent)."""
    privacy = metrics.get("privacy")
    if not isinstance(privacy, Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in privacy.items()
            if k != "delta" and v is not None}
