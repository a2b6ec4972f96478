"""``PrivacyLedger``: per-client record of mechanism events, persisted atomically.

Per client id (a string) the ledger keeps the list of :class:`MechanismEvent` with identical
(kind, sigma, q) events merged by summing steps.  Queries return a :class:`PrivacyEstimate` per
client (Edgeworth estimate + certified bound), optionally restricted to some kinds, and summaries
over clients (worst client and median; epsilons are never averaged or summed across clients).

Persistence: JSON, written to a temporary file in the same directory, flushed and fsync'ed, then
``os.replace``'d over the ledger file and the directory fsync'ed.  A crash at any point leaves
either the previous or the new complete file - recorded spending is never lost or corrupted.
With ``autosave=True`` (default when a path is given) every ``record`` is persisted before it
returns.  Pure-epsilon events (e.g. ``kind="label-rr", epsilon=...``) are composed by basic
composition (their epsilons are added to both estimate and bound).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .accountant import EdgeworthAccountant
from .certified import DEFAULT_VALUE_DISCRETIZATION_INTERVAL
from .estimate import PrivacyEstimate
from .events import KNOWN_KINDS, InvalidEventError, MechanismEvent, validate_kind

__all__ = ["PrivacyLedger", "LedgerSummary", "LedgerFormatError"]

_FORMAT = "fedguard-privacy-ledger"
_SCHEMA_VERSION = 1


class LedgerFormatError(ValueError):
    """A ledger file is not a valid FedGuard privacy ledger."""


@dataclass(frozen=True)
class LedgerSummary:
    """Per-client results and order statistics across clients at one delta."""

    delta: float
    kinds: tuple[str, ...] | None
    per_client: dict[str, PrivacyEstimate]
    worst_client: str | None
    median_epsilon_certified: float | None
    median_epsilon_estimate: float | None

    @property
    def worst(self) -> PrivacyEstimate | None:
        """The result of the client with the largest certified epsilon."""
        return None if self.worst_client is None else self.per_client[self.worst_client]

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        return {
            "delta": self.delta,
            "kinds": list(self.kinds) if self.kinds is not None else None,
            "worst_client": self.worst_client,
            "median_epsilon_certified": self.median_epsilon_certified,
            "median_epsilon_estimate": self.median_epsilon_estimate,
            "clients": {cid: est.to_dict() for cid, est in self.per_client.items()},
        }


def _check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not client_id:
        raise InvalidEventError(f"client_id must be a non-empty string, got {client_id!r}")
    return client_id


class PrivacyLedger:
    """Per-client privacy ledger (add/remove neighbours at example level).

    Parameters
    ----------
    path : path-like or None
        Ledger file (JSON).  None keeps the ledger in memory until :meth:`save` is given a path.
    order : int
        Edgeworth order of the estimates (1 or 2).
    allowed_kinds : iterable of str
        Event kinds accepted by :meth:`record` (default :data:`KNOWN_KINDS`); others are refused.
    autosave : bool
        Persist after every :meth:`record` (only when ``path`` is set).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        order: int = 1,
        allowed_kinds: Iterable[str] = KNOWN_KINDS,
        autosave: bool = True,
        value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.order = order
        self.allowed_kinds = frozenset(validate_kind(k) for k in allowed_kinds)
        self.autosave = autosave
        self.value_discretization_interval = value_discretization_interval
        self._clients: dict[str, dict[tuple, MechanismEvent]] = {}

    # ------------------------------------------------------------------ recording
    def record(self, client_id: str, event: MechanismEvent) -> None:
        """Add ``event`` to ``client_id``'s history (merged by (kind, sigma, q)) and autosave."""
        client_id = _check_client_id(client_id)
        if not isinstance(event, MechanismEvent):
            raise InvalidEventError(f"event must be a MechanismEvent, got {type(event).__name__}")
        if event.kind not in self.allowed_kinds:
            raise InvalidEventError(
                f"kind {event.kind!r} is not allowed in this ledger; allowed kinds: {sorted(self.allowed_kinds)}"
            )
        events = self._clients.setdefault(client_id, {})
        key = event.merge_key
        events[key] = events[key].merged_with(event) if key in events else event
        if self.autosave and self.path is not None:
            self.save()

    def clients(self) -> list[str]:
        """Client ids with at least one recorded event (sorted)."""
        return sorted(self._clients)

    def events(self, client_id: str, kind: str | Iterable[str] | None = None) -> list[MechanismEvent]:
        """The merged events of a client, optionally only those of the given kind(s)."""
        kinds = self._kinds(kind)
        evs = self._clients.get(client_id, {}).values()
        return [e for e in evs if kinds is None or e.kind in kinds]

    @staticmethod
    def _kinds(kind: str | Iterable[str] | None) -> tuple[str, ...] | None:
        if kind is None:
            return None
        if isinstance(kind, str):
            return (validate_kind(kind),)
        return tuple(sorted(validate_kind(k) for k in kind))

    # ------------------------------------------------------------------ queries
    def accountant(self, client_id: str, kind: str | Iterable[str] | None = None) -> EdgeworthAccountant:
        """An :class:`EdgeworthAccountant` holding this client's (filtered) events."""
        return EdgeworthAccountant.from_events(
            self.events(client_id, kind),
            order=self.order,
            value_discretization_interval=self.value_discretization_interval,
        )

    def epsilon(
        self, client_id: str, delta: float, kind: str | Iterable[str] | None = None, *, warn: bool = True
    ) -> PrivacyEstimate:
        """Estimate and certified epsilon of one client at ``delta`` (0 if nothing recorded)."""
        if client_id not in self._clients:
            raise KeyError(f"no events recorded for client {client_id!r}")
        return self.accountant(client_id, kind).epsilon(delta, warn=warn)

    def summary(self, delta: float, kind: str | Iterable[str] | None = None, *, warn: bool = True) -> LedgerSummary:
        """Per-client results, the worst client (largest certified epsilon) and the medians."""
        kinds = self._kinds(kind)
        per_client = {cid: self.epsilon(cid, delta, kinds, warn=warn) for cid in self.clients()}
        if not per_client:
            return LedgerSummary(delta, kinds, {}, None, None, None)
        worst = max(per_client, key=lambda c: (per_client[c].epsilon_certified, c))
        return LedgerSummary(
            delta=delta,
            kinds=kinds,
            per_client=per_client,
            worst_client=worst,
            median_epsilon_certified=statistics.median(e.epsilon_certified for e in per_client.values()),
            median_epsilon_estimate=statistics.median(e.epsilon_estimate for e in per_client.values()),
        )

    def worst_client(
        self, delta: float, kind: str | Iterable[str] | None = None, *, warn: bool = True
    ) -> tuple[str, PrivacyEstimate]:
        """(client id, result) of the client with the largest certified epsilon."""
        s = self.summary(delta, kind, warn=warn)
        if s.worst_client is None:
            raise KeyError("the ledger has no clients")
        return s.worst_client, s.per_client[s.worst_client]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable content."""
        return {
            "format": _FORMAT,
            "schema_version": _SCHEMA_VERSION,
            "clients": {cid: [e.to_dict() for e in evs.values()] for cid, evs in sorted(self._clients.items())},
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Atomically write the ledger (temp file + fsync + os.replace + directory fsync)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path given and the ledger has no path")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if hasattr(os, "O_DIRECTORY"):
            dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs) -> "PrivacyLedger":
        """Load and validate a ledger file; every event is re-validated (malformed -> error)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise LedgerFormatError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise LedgerFormatError(f"{path}: not a {_FORMAT} file")
        if raw.get("schema_version") != _SCHEMA_VERSION:
            raise LedgerFormatError(f"{path}: unsupported schema_version {raw.get('schema_version')!r}")
        clients = raw.get("clients")
        if not isinstance(clients, dict):
            raise LedgerFormatError(f"{path}: 'clients' must be an object")
        ledger = cls(path, **kwargs)
        for cid, events in clients.items():
            if not isinstance(events, list):
                raise LedgerFormatError(f"{path}: events of client {cid!r} must be a list")
            for i, item in enumerate(events):
                try:
                    event = MechanismEvent.from_dict(item)
                except (InvalidEventError, TypeError) as exc:
                    raise LedgerFormatError(f"{path}: client {cid!r} event #{i}: {exc}") from exc
                autosave, ledger.autosave = ledger.autosave, False
                try:
                    ledger.record(cid, event)
                finally:
                    ledger.autosave = autosave
        return ledger
