"""Against a real (tiny) run whose clients train their bottom and send each example several times: the attacker
rebuilds the client half with the run's final adapter, and the capture holds every release of the captured
examples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from fedguard.attacks.client_weights import attacker_client_half
from fedguard.model.lora import load_trainable_state
from fedguard.runtime import client_runtime
from fedguard.attacks.run_dir import load_captures, load_run_config
from fedguard.cli import main
from fedguard.data.sources import packaged_data_dir
from tests.attacks.tiny_run import run_tiny, save_tiny_bert

SHARD = 16  # rows per client; 4 steps of 8 per round: every example is sent twice a round


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Split after block 0 (the client trains LoRA on it), 2 rounds, a large learning rate (the final adapter is
    far from the initial one), shards of 16 rows, 8 examples captured per client."""
    root = tmp_path_factory.mktemp("releases")
    data = root / "data"
    data.mkdir()
    with gzip.open(packaged_data_dir("sst2") / "train.tsv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:1 + 2 * SHARD]) + "\n")
    with gzip.open(packaged_data_dir("sst2") / "dev.tsv.gz", "rt") as handle:
        (data / "dev.tsv").write_text("\n".join(handle.read().splitlines()[:65]) + "\n")
    model = save_tiny_bert(root / "model")
    return run_tiny(root / "run", model, **{"dataset": str(data), "split-layer": 1, "num-server-rounds": 2,
                                            "learning-rate": 0.01, "capture-activations": 8, "eval-examples": 8,
                                            "act-clip-norm": 20.0, "act-noise-multiplier": 0.005})


def test_every_later_release_of_a_captured_example_is_in_the_capture(run):
    captures = load_captures(run)
    assert len(captures) == 16 and set(captures.partitions) == {0, 1}
    assert captures.release_counts() == [4] * 16  # twice a round, 2 rounds
    for group, rounds, ids in zip(captures.releases, captures.release_rounds, captures.input_ids):
        assert rounds == [1, 1, 2, 2]
        assert all(r.shape == (len(ids), 64) for r in group)
        assert not torch.equal(group[0], group[1])  # fresh noise (and dropout) every release


def test_the_attacker_rebuilds_the_client_half_with_the_final_adapter_not_the_base(run):
    config = load_run_config(run)
    attacker = attacker_client_half(run, config, config.model, config.task, 2, config.split_layer)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert attacker.final is not None and checkpoint["round"] == 2
    assert attacker.final.keys() == checkpoint["global_adapter"].keys() == attacker.initial.keys()
    assert all(torch.equal(attacker.final[k], checkpoint["global_adapter"][k]) for k in attacker.final)
    assert attacker.final_differs
    # What the server sent at the start of each round is known too; round 1's is the rebuilt initial adapter.
    assert sorted(attacker.round_start) == [1, 2]
    assert all(torch.equal(attacker.round_start[1][k], attacker.initial[k]) for k in attacker.initial)
    # With the final weights the rebuilt half computes exactly what a client of the run holding the final global
    # adapter computes (the client's own runtime, as the ClientApp builds it); with the base weights it does not.
    captures = load_captures(run)
    ids = torch.nn.utils.rnn.pad_sequence(captures.input_ids, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(i) for i in captures.input_ids], batch_first=True)
    client = client_runtime(config, 2).client
    load_trainable_state(client, checkpoint["global_adapter"])
    client.eval()
    with torch.no_grad():
        expected = client(ids, mask)
        assert attacker.use("final").startswith("final global client adapter after round 2")
        attacker.half.eval()
        torch.testing.assert_close(attacker.half(ids, mask), expected, rtol=0, atol=1e-6)
        attacker.use("initial")
        assert (attacker.half(ids, mask) - expected).abs().max() > 1e-2
    assert attacker.use(2) == "global client adapter sent at the start of round 2"
    assert attacker.use(7).startswith("final global client adapter")  # a round without a record: the final one


def test_the_report_names_the_weights_and_takes_the_maximum_over_the_attacks(run, capsys):
    args = ["attack", "inversion", str(run), "--public-examples", "64", "--epochs", "2", "--opt-steps", "10", "--json"]
    assert main(args) == 0
    attacks = json.loads(capsys.readouterr().out)
    assert attacks["learned-inversion-final"]["settings"]["attacker_weights"].startswith(
        "final global client adapter after round 2")
    assert attacks["learned-inversion"]["settings"]["attacker_weights"].startswith("initial client adapter")
    assert attacks["optimisation-inversion"]["settings"]["attacker_weights"].startswith(
        "per release, the global client adapter the server sent at the start of its round (recorded for rounds [1, 2]")
    releases = attacks["nn-inversion-averaged"]["settings"]["releases"]
    assert releases == {"examples_with_repeats": 16, "mean_releases": 4.0, "max_releases": 4, "total_releases": 64}
    summary = attacks["inversion"]
    for metric, best in summary["best"].items():
        values = {name: attacks[name]["metrics"][metric] for name in summary["settings"]["attacks"]}
        assert best["value"] == max(v for v in values.values() if v is not None)
        assert values[best["attack"]] == best["value"] and summary["metrics"][metric] == best["value"]
    best_content = summary["best"]["content_token_recovery_rate"]["attack"]
    assert summary["verdict"].startswith(f"best of 6 reconstruction attacks ({best_content})")
    assert set(summary["best"]) >= {"content_token_recovery_rate", "content_token_recovery_above_prior",
                                    "exact_match_rate", "rouge_l_f1", "token_set_f1"}


def test_the_attacker_strength_probe_trains_one_inverter_on_never_captured_training_rows(run, capsys, monkeypatch):
    import runpy
    import sys

    script = Path(__file__).resolve().parents[2] / "simulations" / "attacker_strength.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(run), "--public", "train", "--public-examples", "8",
                                      "--epochs", "1", "--max-examples", "4"])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["weights"].startswith("final global client adapter after round 2")
    assert result["examples"] == 4 and 0 < result["public_examples"] <= 8  # the shards' rows minus the captured
    assert 0.0 <= result["content_token_recovery_rate"] <= 1.0
