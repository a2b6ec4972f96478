"""Single-use session tickets: who may open a data-plane connection for this round.

The server issues one random 256-bit ticket per sampled node and round; it travels in that node's train
message (over Flower's authenticated channel). A connection must present the node id and its ticket: the
ticket is compared in constant time against the one issued *for that node*, and is consumed on first use, so
it cannot be replayed, used by another node, or guessed.
"""

from __future__ import annotations

import hmac
import secrets
import threading


class TicketBook:
    """Tickets of the current round, by node id (thread-safe)."""

    def __init__(self) -> None:
        self._tickets: dict[int, str] = {}
        self._lock = threading.Lock()

    def issue(self, node_id: int) -> str:
        """A fresh ticket (64 hex characters) for ``node_id``, replacing any earlier one."""
        ticket = secrets.token_hex(32)
        with self._lock:
            self._tickets[int(node_id)] = ticket
        return ticket

    def redeem(self, node_id: int, ticket: str) -> bool:
        """True (and the ticket is gone) if ``ticket`` is the one issued for ``node_id``; False otherwise."""
        with self._lock:
            expected = self._tickets.get(int(node_id))
            given = ticket if isinstance(ticket, str) else ""
            ok = expected is not None and hmac.compare_digest(expected.encode(), given.encode())
            if ok:
                del self._tickets[int(node_id)]
            return ok

    def revoke_all(self) -> None:
        """Forget every unused ticket (the round is over)."""
        with self._lock:
            self._tickets.clear()
