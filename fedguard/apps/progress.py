"""Live progress in the ServerApp log: one compact line per round with an ETA, and within a long round at
most one line every ``interval`` seconds about the clients' batches.

Everything goes through the ``fedguard`` logger (stdout of the ServerApp), so it shows in ``flwr run --stream``
and in a deployment's ServerApp log alike. Short rounds (tests, small simulations) print only the per-round
line: the in-round line appears only once a round has run for ``interval`` seconds (default 30).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fedguard")


def duration(seconds: float) -> str:
    """``seconds`` as ``"42s"``, ``"3m 05s"`` or ``"1h 02m"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def _eps(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


class RunProgress:
    """Progress of one run of ``total_rounds`` rounds (``interval``: seconds between in-round lines)."""

    def __init__(self, total_rounds: int, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_rounds = total_rounds
        self.interval = interval
        self.clock = clock
        self.round_seconds: list[float] = []
        self._round = 0
        self._round_start = 0.0
        self._last_line = 0.0

    def round_started(self, server_round: int) -> None:
        self._round = server_round
        self._round_start = self._last_line = self.clock()

    def batches(self, done: int, total: int) -> None:
        """The clients' batches of the current round done so far (called after every exchange)."""
        now = self.clock()
        if now - self._last_line < self.interval or total <= 0:
            return
        self._last_line = now
        log.info("round %d/%d: %d/%d client batches (%.0f%%) after %s", self._round, self.total_rounds, done,
                 total, 100.0 * done / total, duration(now - self._round_start))

    def eta(self, server_round: int) -> float | None:
        """Seconds left after ``server_round``, from the mean round time so far (None before any round)."""
        if not self.round_seconds:
            return None
        return (self.total_rounds - server_round) * sum(self.round_seconds) / len(self.round_seconds)

    def round_finished(self, record: Any) -> str:
        """Log (and return) the round's compact line: quality, ε per adversary, traffic, time, ETA."""
        self.round_seconds.append(float(record.seconds))
        quality = (f"perplexity {record.perplexity:.2f}, next-token acc {record.accuracy:.4f}"
                   if record.perplexity is not None else f"acc {record.accuracy:.4f}, loss {record.loss:.4f}")
        privacy = ""
        if record.epsilon_model_certified is not None or record.epsilon_activation is not None:
            privacy = (f" | eps model {_eps(record.epsilon_model_certified)}, server "
                       f"{_eps(record.epsilon_server_certified)} (certified, delta {record.privacy_delta:g})")
        eta = self.eta(record.round)
        line = (f"round {record.round}/{self.total_rounds} | {quality}{privacy} | up {record.bytes_up / 1e6:.1f} MB, "
                f"down {record.bytes_down / 1e6:.1f} MB | {duration(record.seconds)} | "
                f"{record.clients_aggregated}/{record.clients_sampled} clients | "
                f"ETA {duration(eta) if eta is not None else '?'}")
        log.info(line)
        return line
