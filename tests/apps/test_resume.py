"""A server that dies mid-round resumes from its last completed round without losing any privacy record.

The real ServerApp and ClientApps run in this process over a loopback Grid; the "crash" is the server's
process stopping inside round 2, between two split-learning exchanges (after some of that round's
activations already reached it).
"""

from __future__ import annotations

import json
import tomllib

import pytest
from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.privacy import PrivacyLedger
from fedguard.testing import ensure_message_identity
from tests.apps.flwr_harness import ROOT
from tests.apps.loopback import LoopbackGrid, node_contexts


class ServerCrash(BaseException):
    """Stands for the server process dying (not an Exception: nothing may catch it)."""


class CrashingGrid(LoopbackGrid):
    """Dies at the start of its ``crash_at``-th ``send_and_receive`` call."""

    def __init__(self, contexts, crash_at: int) -> None:
        super().__init__(contexts)
        self.calls, self.crash_at = 0, crash_at

    def send_and_receive(self, messages, *, timeout=None):
        self.calls += 1
        if self.calls == self.crash_at:
            raise ServerCrash
        return super().send_and_receive(messages, timeout=timeout)


def _raw(out, **overrides) -> dict:
    data = out.parent / "small.tsv"  # 4 examples per client, batch 4: every chunk re-sends (and spends) them all
    data.write_text("sentence\tlabel\n" + "".join(f"sentence {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n"
                                                  for i in range(8)))
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"dataset": str(data), "num-server-rounds": 3, "local-steps": 4, "batch-size": 4, "exchange-batches": 1, "max-length": 24,
                "eval-examples": 16, "output-dir": str(out), "dp-noise-multiplier": 1.0, "act-clip-norm": 10.0,
                "act-noise-multiplier": 1.0, **overrides})
    return raw


def _totals(ledger: PrivacyLedger) -> dict[str, dict[str, int]]:
    return {client: {kind: sum(e.steps for e in ledger.events(client, kind)) for kind in ("dp-sgd", "activation")}
            for client in ledger.clients()}


def _client_totals(contexts) -> dict[str, dict[str, int]]:
    ledger = PrivacyLedger()
    for context in contexts.values():
        for client, events in json.loads(str(context.state.config_records["fedguard.ledger"]["json"])).items():
            from fedguard.privacy import MechanismEvent
            for item in events:
                ledger.record(client, MechanismEvent.from_dict(item))
    return _totals(ledger)


def test_resume_continues_from_the_last_round_and_never_under_counts(tmp_path):
    ensure_message_identity()
    out = tmp_path / "run"
    raw = _raw(out)
    contexts = node_contexts(raw, 2)  # the clients survive the server's crash, as SuperNodes would
    # Round 1 takes 5 exchanges (4 chunks + final); the crash comes at round 2's third exchange.
    with pytest.raises(ServerCrash):
        server_app.main(CrashingGrid(contexts, crash_at=8),
                        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1]
    at_crash = _totals(PrivacyLedger.load(out / "privacy_ledger.json"))
    # Every release that reached the server is on disk: the round-2 activations included.
    assert at_crash == _client_totals(contexts)
    ledger = PrivacyLedger.load(out / "privacy_ledger.json")
    assert all(any(e.round == 2 for e in ledger.events(c, "activation")) for c in ledger.clients())

    resumed = {**raw, "resume": True}
    grid = LoopbackGrid(contexts)
    server_app.main(grid, Context(run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=resumed))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    final = _totals(PrivacyLedger.load(out / "privacy_ledger.json"))
    assert final == _client_totals(contexts)  # nothing lost, nothing invented
    for client, kinds in final.items():
        assert kinds["activation"] >= at_crash[client]["activation"]
        assert kinds["dp-sgd"] == 3 * 4  # rounds 1, 2 (re-run) and 3: the crashed round's steps never finished


def test_a_new_run_keeps_an_old_ledger_aside_instead_of_overwriting_it(tmp_path):
    ensure_message_identity()
    out = tmp_path / "run"
    raw = _raw(out, **{"num-server-rounds": 1, "local-steps": 2})
    for run_id in (1, 2):
        server_app.main(LoopbackGrid(node_contexts(raw, 2)),
                        Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    kept = list(out.glob("privacy_ledger.*.json"))
    assert len(kept) == 1 and PrivacyLedger.load(kept[0]).clients()
