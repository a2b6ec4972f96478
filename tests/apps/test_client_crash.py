"""A client that dies mid-round has already recorded, in its own ledger and in the server's, everything it
released: each chunk's activation releases and whole-model DP-SGD steps are spent before the chunk leaves."""

from __future__ import annotations

import json
import tomllib

import pytest
from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.dataplane.client import DataPlaneClient
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


def _die_on_the_data_plane(monkeypatch, victim: int, chunks: int) -> None:
    """The victim's process dies right after its ``chunks``-th chunk reached the server: its connection closes
    without a word (no reply read, nothing more sent)."""
    exchange = DataPlaneClient.exchange
    sent: dict[int, int] = {}

    def dying(self, content):
        if self.node_id == victim:
            sent[victim] = sent.get(victim, 0) + 1
            if sent[victim] > chunks:
                self.conn.close()
                raise ConnectionAbortedError("the client process died")
        return exchange(self, content)

    monkeypatch.setattr(DataPlaneClient, "exchange", dying)


def _steps(ledger: PrivacyLedger, client: str) -> dict[str, int]:
    return {kind: sum(e.steps for e in ledger.events(client, kind)) for kind in KINDS}


@pytest.mark.parametrize("transport", ["stream", "flower"])
def test_a_client_killed_mid_round_has_its_partial_round_in_both_ledgers(tmp_path, transport, monkeypatch):
    ensure_message_identity()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"num-server-rounds": 1, "local-steps": 6, "batch-size": 4, "exchange-batches": 1, "max-length": 24,
                "eval-examples": 16, "output-dir": str(tmp_path / "run"), "dp-noise-multiplier": 1.0,
                "act-clip-norm": 10.0, "act-noise-multiplier": 1.0, "min-fit-clients": 2, "split-transport": transport,
                "round-timeout": 20.0})
    contexts = node_contexts(raw, 3)
    for context in contexts.values():
        context.node_config["ledger-path"] = str(tmp_path / f"client-{context.node_config['partition-id']}.json")
    victim = max(contexts)
    # The victim sends three chunks, then dies: on the data plane its connection breaks after its third chunk;
    # on the Flower path it answers its train message and two gradient messages, then never again.
    if transport == "stream":
        _die_on_the_data_plane(monkeypatch, victim, chunks=3)
        grid = LoopbackGrid(contexts)
    else:
        grid = CrashingGrid(contexts, victim, messages=3)
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    entry = metrics["rounds"][0]
    assert str(victim) in entry["clients_dropped"] and entry["clients_aggregated"] == 2
    client = f"partition-{contexts[victim].node_config['partition-id']}"
    own = _steps(PrivacyLedger.load(tmp_path / f"client-{contexts[victim].node_config['partition-id']}.json"), client)
    server = _steps(PrivacyLedger.load(tmp_path / "run" / "privacy_ledger.json"), client)
    assert server["dp-sgd"] == 3  # three batches reached the server, which stepped its half on each
    if transport == "flower":
        assert own == server  # the victim never got the fourth message
    else:  # the victim recorded its fourth chunk, then died while sending it: the client errs on the safe side
        assert own["dp-sgd"] == 4 and all(own[k] >= server[k] for k in KINDS)
    assert own["activation"] >= 1 and own["dp-sgd-server"] >= 1
    # The finished clients spent all six steps; the round's model epsilon covers the victim too.
    for other in (c for c in contexts if c != victim):
        name = f"partition-{contexts[other].node_config['partition-id']}"
        assert _steps(PrivacyLedger.load(tmp_path / "run" / "privacy_ledger.json"), name)["dp-sgd"] == 6
    assert entry["epsilon_model_certified"] > 0 and entry["epsilon_server_certified"] is None
