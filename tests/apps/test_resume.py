"""A server process that is killed mid-round resumes from its last completed round without losing any privacy
record.

The real ServerApp and ClientApps run in a child process over a loopback grid (tests/apps/killed_server.py);
the child is SIGKILLed inside round 2, between two split-learning exchanges, after some of that round's
activations already reached the server. The clients keep their ledgers on disk (node config ``ledger-path``),
as SuperNodes do, so their own record of what they released is the reference.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib

from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.privacy import PrivacyLedger
from fedguard.testing import ensure_message_identity
from tests.apps.flwr_harness import ROOT
from tests.apps.killed_server import client_contexts
from tests.apps.loopback import LoopbackGrid, node_contexts


def _raw(out, **overrides) -> dict:
    data = out.parent / "small.tsv"  # 4 examples per client, batch 4: every chunk re-sends (and spends) them all
    data.write_text("sentence\tlabel\n" + "".join(f"sentence {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n"
                                                  for i in range(8)))
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"dataset": str(data), "num-server-rounds": 3, "local-steps": 4, "batch-size": 4, "exchange-batches": 1, "max-length": 24,
                "eval-examples": 16, "output-dir": str(out), "dp-noise-multiplier": 1.0, "act-clip-norm": 10.0,
                "act-noise-multiplier": 1.0, "split-transport": "flower", **overrides})  # killed between messages
    return raw


def _totals(ledger: PrivacyLedger) -> dict[str, dict[str, int]]:
    return {client: {kind: sum(e.steps for e in ledger.events(client, kind)) for kind in ("dp-sgd", "activation")}
            for client in ledger.clients()}


def _client_totals(ledger_dir) -> dict[str, dict[str, int]]:
    ledger = PrivacyLedger()
    for path in sorted(ledger_dir.glob("client-*.json")):
        own = PrivacyLedger.load(path)
        for client in own.clients():
            for event in own.events(client):
                ledger.record(client, event)
    return _totals(ledger)


def _killed_server(raw: dict, ledger_dir, kill_at: int) -> subprocess.CompletedProcess:
    config = ledger_dir.parent / "run-config.json"
    config.write_text(json.dumps(raw))
    return subprocess.run([sys.executable, "-m", "tests.apps.killed_server", str(config), str(ledger_dir),
                           str(kill_at)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_resume_after_the_server_process_is_killed_never_under_counts(tmp_path):
    out, ledger_dir = tmp_path / "run", tmp_path / "client-ledgers"
    ledger_dir.mkdir()
    raw = _raw(out)
    # Round 1 takes 5 exchanges (4 chunks + final); the kill comes at round 2's third exchange.
    killed = _killed_server(raw, ledger_dir, kill_at=8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1]
    at_kill = _totals(PrivacyLedger.load(out / "privacy_ledger.json"))
    # Every release that reached the server is on disk, the round-2 activations included.
    assert at_kill == _client_totals(ledger_dir)
    ledger = PrivacyLedger.load(out / "privacy_ledger.json")
    assert all(any(e.round == 2 for e in ledger.events(c, "activation")) for c in ledger.clients())

    ensure_message_identity()
    resumed = {**raw, "resume": True}
    server_app.main(LoopbackGrid(client_contexts(resumed, ledger_dir)),
                    Context(run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=resumed))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    final = _totals(PrivacyLedger.load(out / "privacy_ledger.json"))
    assert final == _client_totals(ledger_dir)  # nothing lost, nothing invented
    for client, kinds in final.items():
        assert kinds["activation"] > at_kill[client]["activation"]
        # Round 1 (4 steps) and the two chunks of round 2 that left before the kill (their steps count: the
        # server half stepped on them), then rounds 2 (re-run) and 3.
        assert at_kill[client]["dp-sgd"] == 4 + 2
        assert kinds["dp-sgd"] == 4 + 2 + 4 + 4


def test_a_new_run_keeps_an_old_ledger_aside_instead_of_overwriting_it(tmp_path):
    ensure_message_identity()
    out = tmp_path / "run"
    raw = _raw(out, **{"num-server-rounds": 1, "local-steps": 2})
    for run_id in (1, 2):
        server_app.main(LoopbackGrid(node_contexts(raw, 2)),
                        Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    kept = list(out.glob("privacy_ledger.*.json"))
    assert len(kept) == 1 and PrivacyLedger.load(kept[0]).clients()
