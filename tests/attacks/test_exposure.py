"""``fedguard attack exposure`` end to end, on run directories with canaries made by the real ServerApp and
ClientApps."""

from __future__ import annotations

import json
import math

from fedguard.cli import main
from tests.apps.tiny_causal_lm import save_tiny_llama
from tests.attacks.tiny_run import run_tiny, save_tiny_bert


def _printed_json(capsys) -> dict:  # noqa: ANN001 - pytest's capsys
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the server may log before it


def test_exposure_of_a_causal_lm_run_lands_in_the_report_and_metrics(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny-llama", layers=2)
    run = run_tiny(tmp_path / "run", model, **{
        "task": "causal-lm", "split-layer": 1, "max-length": 64, "batch-size": 4,
        "canaries": 2, "canary-repeats": 8, "canary-digits": 3})
    trained = json.loads((run / "captures" / "partition-0-trained.json").read_text())
    assert trained and min(trained) >= 0  # canary copies are no training-set row
    assert main(["attack", "exposure", str(run), "--json"]) == 0
    entry = _printed_json(capsys)["exposure"]
    assert entry["settings"]["candidates"] == 1000 and entry["settings"]["methods"] == ["exact"]
    metrics = entry["metrics"]
    assert metrics["log2_candidates"] == math.log2(1000) and len(metrics["canaries"]) == 2
    for canary in metrics["canaries"]:
        assert len(canary["secret"]) == 3
        for model_name in ("trained", "reference"):
            assert 0 <= canary[model_name]["exposure"] <= math.log2(1000) and canary[model_name]["scored"] == 999
    assert entry["verdict"].startswith("canary exposure: ")
    report = json.loads((run / "attack_report.json").read_text())
    assert report["run"]["canaries"] == 2 and "exposure" in report["attacks"]
    assert json.loads((run / "metrics.json").read_text())["attacks"]["exposure"]["verdict"] == entry["verdict"]


def test_label_flip_canaries_stay_out_of_the_accuracy_and_are_reported(tmp_path, capsys):
    model = save_tiny_bert(tmp_path / "tiny-bert", hidden=32, layers=1)
    run = run_tiny(tmp_path / "run", model, **{"canaries": 8, "canary-repeats": 4, "eval-examples": 0,
                                               "capture-activations": 0})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["initial"]["eval_examples"] == 872 - 16  # SST-2 dev without 8 canaries and 8 controls
    assert main(["attack", "exposure", str(run), "--json"]) == 0
    entry = _printed_json(capsys)["label-flip-memorisation"]
    assert len(entry["settings"]["canary_rows"]) == len(entry["settings"]["control_rows"]) == 8
    for model_name in ("trained", "reference"):
        assert 0 <= entry["metrics"][model_name]["canary_flip_rate"] <= 1
        assert 0 <= entry["metrics"][model_name]["margin_auc"] <= 1
    assert entry["verdict"].startswith("label-flip memorisation: ")


def test_a_run_without_canaries_is_refused_with_what_to_do(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"task": "classification"}))
    assert main(["attack", "exposure", str(tmp_path)]) == 2
    assert "canaries=N" in capsys.readouterr().err
    assert main(["attack", "exposure", str(tmp_path), "--max-candidates", "0"]) == 2
    assert "--max-candidates=0: must be >= 1" in capsys.readouterr().err
