"""Membership inference against single clients' updates, on run directories made by the real apps.

Two clients hold partitions 0 and 1 of four; partitions 2 and 3 are never trained on and give the
non-members. Labels are random (4 classes), so the only way to fit them is to memorise the members. In the
U-shaped split the head is part of the client's update, so the update itself memorises.
"""

from __future__ import annotations

import json
import random

import pytest

from fedguard.attacks.client_updates import load_client_updates
from fedguard.attacks.run_dir import RunDirError
from fedguard.cli import main
from tests.attacks.tiny_run import run_tiny, save_tiny_bert

# Clients in lock-step (one Flower message per exchange): in the in-process loopback the stream transport runs
# the clients one after the other, which changes what the server half has seen when each client trains.
SETTINGS = {"split-layer": 1, "label-protection": "u-shape", "num-server-rounds": 2, "local-steps": 48,
            "batch-size": 8, "learning-rate": 0.01, "exchange-batches": 1, "capture-activations": 4,
            "split-transport": "flower"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client-updates")
    rng = random.Random(0)
    data = tmp / "random-labels.tsv"
    words = "red green blue cat dog tree river stone cloud lamp door bird fish road hill song".split()
    data.write_text("sentence\tlabel\n" + "".join(
        f"{' '.join(rng.choices(words, k=6))} {i}\t{rng.randint(0, 3)}\n" for i in range(64)))
    return save_tiny_bert(tmp / "model"), data, tmp


def _attack(run_dir, capsys) -> dict:
    assert main(["attack", "client-update", str(run_dir), "--max-examples", "32", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["client-update-membership"]


def test_each_client_keeps_its_updates_and_the_server_its_half_per_round(setup):
    model, data, tmp = setup
    run = run_tiny(tmp / "clear", model, num_partitions=4, dataset=str(data), **SETTINGS)
    updates = load_client_updates(run)
    assert [(u.partition, u.round) for u in updates] == [(0, 1), (1, 1)]  # each client's first update
    assert all(len(u.trained_rows) == 16 and u.adapter for u in updates)  # 48 x 8 draws cover each 16-row shard
    captures = run / "captures"
    for r in (1, 2):
        assert (captures / f"server-adapter-round-{r}.pt").is_file()
        assert all((captures / f"partition-{p}-update-round-{r}.pt").is_file() for p in (0, 1))


def test_a_memorising_client_update_gives_its_members_away(setup, capsys):
    model, data, tmp = setup
    run = tmp / "clear"
    if not run.exists():
        run_tiny(run, model, num_partitions=4, dataset=str(data), **SETTINGS)
    entry = _attack(run, capsys)
    assert "LEAKY" in entry["verdict"], entry["verdict"]
    assert entry["metrics"]["isolated-update-difference"]["auc"] > 0.75
    assert [c["partition"] for c in entry["metrics"]["per_client"]] == [0, 1]
    assert json.loads((run / "metrics.json").read_text())["attacks"]["client-update-membership"]["verdict"]


def test_dp_sgd_with_heavy_noise_hides_the_members(setup, capsys):
    model, data, tmp = setup
    run = run_tiny(tmp / "dp", model, num_partitions=4, dataset=str(data),
                   **{**SETTINGS, "dp-noise-multiplier": 30.0, "dp-max-grad-norm": 0.01})
    entry = _attack(run, capsys)
    assert "no membership signal detected from the update alone" in entry["verdict"], entry["verdict"]


def test_a_run_without_captured_updates_is_refused(tmp_path):
    (tmp_path / "captures").mkdir()
    with pytest.raises(RunDirError, match="capture-activations"):
        load_client_updates(tmp_path)
