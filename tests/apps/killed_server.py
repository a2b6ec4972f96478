"""Run the real ServerApp and ClientApps (loopback grid) in this process and SIGKILL the process mid-round.

``python -m tests.apps.killed_server RUN_CONFIG_JSON CLIENT_LEDGER_DIR KILL_AT`` runs the ServerApp with the
run config read from ``RUN_CONFIG_JSON`` and two clients whose privacy ledgers live on disk under
``CLIENT_LEDGER_DIR`` (node config ``ledger-path``, as in a deployment), and sends itself ``SIGKILL`` at the
start of the grid's ``KILL_AT``-th exchange: no exception handler, ``finally``, ``atexit`` or buffered write
runs, exactly as when the operating system kills a server. With ``KILL_AT = 0`` it runs to the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.testing import ensure_message_identity
from tests.apps.loopback import LoopbackGrid, node_contexts


class KillingGrid(LoopbackGrid):
    def __init__(self, contexts, kill_at: int) -> None:
        super().__init__(contexts)
        self.calls, self.kill_at = 0, kill_at

    def send_and_receive(self, messages, *, timeout=None):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().send_and_receive(messages, timeout=timeout)


def client_contexts(run_config: dict, ledger_dir: Path) -> dict:
    """Two clients, each with its own on-disk ledger (it survives a restart of the process)."""
    contexts = node_contexts(run_config, 2)
    for context in contexts.values():
        partition = context.node_config["partition-id"]
        context.node_config["ledger-path"] = str(ledger_dir / f"client-{partition}.json")
    return contexts


def main(argv: list[str]) -> None:
    run_config = json.loads(Path(argv[0]).read_text())
    ensure_message_identity()
    grid = KillingGrid(client_contexts(run_config, Path(argv[1])), int(argv[2]))
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))


if __name__ == "__main__":
    main(sys.argv[1:])
