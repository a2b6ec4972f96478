"""Live progress: a compact line per round with an ETA; in-round lines only for long rounds; errors that end a
run are summarised in one last log line and in metrics.json."""

from __future__ import annotations

import json
import logging
import tomllib
from types import SimpleNamespace

import pytest

from flwr.app import Context, RecordDict

from fedguard.apps import server_app
from fedguard.apps.progress import RunProgress, duration
from fedguard.testing import ensure_message_identity
from tests.apps.flwr_harness import ROOT
from tests.apps.loopback import LoopbackGrid, node_contexts


def _record(round_: int, seconds: float, **privacy) -> SimpleNamespace:
    fields = dict(epsilon_model_certified=None, epsilon_server_certified=None, epsilon_activation=None,
                  privacy_delta=1e-5)
    fields.update(privacy)
    return SimpleNamespace(round=round_, seconds=seconds, accuracy=0.8125, loss=0.42, perplexity=None,
                           bytes_up=14_200_000, bytes_down=13_900_000, clients_aggregated=3, clients_sampled=3,
                           **fields)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def caplog(caplog):
    """``caplog`` listening to the ``fedguard`` logger directly (the app's logger does not propagate)."""
    logger = logging.getLogger("fedguard")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


def test_round_line_has_quality_privacy_traffic_and_eta(caplog):
    clock = Clock()
    progress = RunProgress(total_rounds=4, interval=30.0, clock=clock)
    progress.round_started(1)
    line = progress.round_finished(_record(1, 40.0, epsilon_model_certified=2.5, epsilon_activation=9.0))
    progress.round_started(2)
    second = progress.round_finished(_record(2, 20.0))
    assert line.startswith("round 1/4 | acc 0.8125, loss 0.4200 | eps model 2.5, server none (certified")
    assert "up 14.2 MB, down 13.9 MB" in line and "ETA 2m 00s" in line  # 3 rounds left x 40 s
    assert "eps" not in second and "ETA 1m 00s" in second  # mean of 40 s and 20 s, 2 rounds left
    assert [r.getMessage() for r in caplog.records] == [line, second]


def test_in_round_progress_only_at_the_interval(caplog):
    clock = Clock()
    progress = RunProgress(total_rounds=2, interval=30.0, clock=clock)
    progress.round_started(1)
    for done, now in ((10, 5.0), (20, 29.0), (30, 31.0), (40, 45.0), (90, 62.0)):
        clock.now = now
        progress.batches(done, 90)
    assert [r.getMessage() for r in caplog.records] == [
        "round 1/2: 30/90 client batches (33%) after 31s", "round 1/2: 90/90 client batches (100%) after 1m 02s"]
    assert duration(3725) == "1h 02m"


def test_an_error_that_ends_the_run_is_the_last_line_and_in_metrics(tmp_path, caplog):
    ensure_message_identity()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"output-dir": str(tmp_path / "run"), "strategy": "json:dumps", "eval-examples": 8})
    server_app.main(LoopbackGrid(node_contexts(raw, 2)),
                    Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    last = caplog.records[-1]
    assert last.levelname == "ERROR" and last.getMessage().startswith("FedGuard run FAILED: ")
    assert "json:dumps" in last.getMessage() and "a factory takes the RunConfig" in last.getMessage()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "json:dumps" in metrics["error"] and metrics["rounds"] == []
