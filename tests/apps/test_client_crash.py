"""A client that dies mid-round has already recorded, in its own ledger and in the server's, everything it
released: each chunk's activation releases and whole-model DP-SGD steps are spent before the chunk leaves."""

from __future__ import annotations

import json
import tomllib

from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.privacy import PrivacyLedger
from fedguard.testing import ensure_message_identity
from tests.apps.flwr_harness import ROOT
from tests.apps.loopback import LoopbackGrid, node_contexts

KINDS = ("dp-sgd", "dp-sgd-server", "activation")


class CrashingGrid(LoopbackGrid):
    """Delivers nothing to ``victim`` after its ``messages``-th message: the node is gone (no reply, ever)."""

    def __init__(self, contexts, victim: int, messages: int) -> None:
        super().__init__(contexts)
        self.victim, self.limit, self.delivered = victim, messages, 0

    def send_and_receive(self, messages, *, timeout=None):
        alive = []
        for message in messages:
            if message.metadata.dst_node_id == self.victim:
                self.delivered += 1
                if self.delivered > self.limit:
                    continue
            alive.append(message)
        return super().send_and_receive(alive, timeout=timeout)


def _steps(ledger: PrivacyLedger, client: str) -> dict[str, int]:
    return {kind: sum(e.steps for e in ledger.events(client, kind)) for kind in KINDS}


def test_a_client_killed_mid_round_has_its_partial_round_in_both_ledgers(tmp_path):
    ensure_message_identity()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"num-server-rounds": 1, "local-steps": 6, "batch-size": 4, "exchange-batches": 1, "max-length": 24,
                "eval-examples": 16, "output-dir": str(tmp_path / "run"), "dp-noise-multiplier": 1.0,
                "act-clip-norm": 10.0, "act-noise-multiplier": 1.0, "min-fit-clients": 2})
    contexts = node_contexts(raw, 3)
    for context in contexts.values():
        context.node_config["ledger-path"] = str(tmp_path / f"client-{context.node_config['partition-id']}.json")
    victim = max(contexts)
    # The victim answers its train message and two gradient messages (three chunks sent), then dies.
    grid = CrashingGrid(contexts, victim, messages=3)
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    entry = metrics["rounds"][0]
    assert str(victim) in entry["clients_dropped"] and entry["clients_aggregated"] == 2
    client = f"partition-{contexts[victim].node_config['partition-id']}"
    own = _steps(PrivacyLedger.load(tmp_path / f"client-{contexts[victim].node_config['partition-id']}.json"), client)
    server = _steps(PrivacyLedger.load(tmp_path / "run" / "privacy_ledger.json"), client)
    assert own == server
    assert own["dp-sgd"] == 3  # three batches reached the server, which stepped its half on each
    assert own["activation"] >= 1 and own["dp-sgd-server"] >= 1
    # The finished clients spent all six steps; the round's model epsilon covers the victim too.
    for other in (c for c in contexts if c != victim):
        name = f"partition-{contexts[other].node_config['partition-id']}"
        assert _steps(PrivacyLedger.load(tmp_path / "run" / "privacy_ledger.json"), name)["dp-sgd"] == 6
    assert entry["epsilon_model_certified"] > 0 and entry["epsilon_server_certified"] is None
