"""A plain Flower Strategy subclass named by dotted path trains: built with strategy-options as keyword
arguments and checked before round 1, then used for every round like a built-in strategy."""

from __future__ import annotations

from tests.apps.loopback import run_server
from tests.strategies.plain_flower_plugin import CountingFedAvg


def test_a_fedavg_subclass_by_dotted_path_trains(tmp_path):
    CountingFedAvg.aggregations = 0
    _, metrics = run_server(tmp_path, {
        "strategy": "tests.strategies.plain_flower_plugin:CountingFedAvg",
        "strategy-options": "label=mine,min-train-nodes=2,fraction-evaluate=0.0", "num-server-rounds": 2,
    })
    assert "error" not in metrics
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["aggregated"] and r["clients_aggregated"] == 2 for r in metrics["rounds"])
    assert CountingFedAvg.aggregations == 2
