"""The FedGuard ServerApp with replies polled every ``FASTPOLL_INTERVAL`` seconds instead of every 3 s.

Flower 1.41's deployment grid (``HttpGrid.send_and_receive``) sleeps 3 s between two pulls of the replies,
so every split-learning exchange waits 1.5 s on average (up to 3 s) after the last client answered. This
wrapper replaces ``send_and_receive`` with Flower's public ``push_messages`` + ``pull_messages`` and a short
poll, and otherwise runs ``fedguard.apps.server_app.main`` unchanged. It exists to measure the change
proposed for ``fedguard/apps/split_rounds.py`` (see docs/deployment.md, "Latency");
``simulations/deploy/measure_latency.py`` packs it into a throw-away app next to a copy of pyproject.toml.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedguard.apps import server_app

POLL_SECONDS = float(os.environ.get("FASTPOLL_INTERVAL", "0.2"))


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float | None,
                     poll: float = POLL_SECONDS) -> list[Message]:
    """``grid.send_and_receive`` with a ``poll``-second pull interval (same semantics otherwise)."""
    pending = {mid for mid in grid.push_messages(messages) if mid}
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(poll)
    return replies


class FastPollGrid:
    """Delegates everything to the real grid except ``send_and_receive``."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return send_and_receive(self._grid, messages, timeout)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    server_app.main(FastPollGrid(grid), context)
