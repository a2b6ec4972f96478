"""``fedguard attack`` end to end, on run directories made by the real ServerApp and ClientApps."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fedguard.attacks.membership import load_reference_model, load_trained_model
from fedguard.attacks.run_dir import load_run_config
from fedguard.cli import main
from tests.attacks.tiny_run import run_tiny, save_tiny_bert

FAST = ["--public-examples", "48", "--epochs", "2", "--max-examples", "64", "--opt-steps", "10"]
INVERSION_ENTRIES = {"nn-inversion", "nn-inversion-averaged", "learned-inversion", "learned-inversion-final",
                     "learned-inversion-averaged", "optimisation-inversion", "inversion"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="module")
def clear_run(tiny_model, tmp_path_factory):
    """Split at the embeddings, activations sent in clear."""
    return run_tiny(tmp_path_factory.mktemp("clear") / "run", tiny_model)


@pytest.fixture(scope="module")
def noised_run(tiny_model, tmp_path_factory):
    """The same with heavy activation noise (clip 0.1, sigma 10)."""
    return run_tiny(tmp_path_factory.mktemp("noised") / "run", tiny_model, **{
        "act-clip-norm": 0.1, "act-noise-multiplier": 10.0})


def test_all_attacks_write_the_report_and_the_metrics_entry(clear_run, capsys):
    assert main(["attack", "all", str(clear_run), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "[nn-inversion]" in printed and "[membership]" in printed
    report = json.loads((clear_run / "attack_report.json").read_text())
    assert report["run"]["split-layer"] == 0 and report["run"]["act-noise-multiplier"] == 0
    attacks = report["attacks"]
    # A run with captures also kept the clients' updates; it has no canaries, so no exposure entry.
    assert set(attacks) == {*INVERSION_ENTRIES, "membership", "client-update-membership"}
    for entry in attacks.values():
        assert {"attack", "threat", "release", "settings", "metrics", "verdict", "seconds"} <= set(entry)
    nn = attacks["nn-inversion"]
    assert nn["settings"]["examples"] == 32 and nn["settings"]["clients"] == [0, 1]  # 16 captured per client
    assert nn["metrics"]["content_token_recovery_rate"] > 0.9 and nn["metrics"]["rouge_l_f1"] > 0.8
    assert nn["verdict"].startswith("nearest-neighbour inversion: LEAKY")
    assert nn["samples"][0]["true"] and "reconstructed" in nn["samples"][0]
    learned = attacks["learned-inversion"]["metrics"]
    assert 0 <= learned["token_recovery_rate"] <= 1 and "prior_baseline" in learned
    membership = attacks["membership"]
    assert membership["settings"]["members"] == membership["settings"]["non_members"] > 0
    for name in ("loss-threshold", "calibrated"):
        assert 0 <= membership["metrics"][name]["auc"] <= 1 and membership["metrics"][name]["fpr"] == 0.01
    # metrics.json keeps the run's rounds and gains the attacks' metrics and verdicts.
    metrics = json.loads((clear_run / "metrics.json").read_text())
    assert metrics["rounds"] and metrics["attacks"]["report"] == "attack_report.json"
    assert metrics["attacks"]["nn-inversion"]["verdict"] == nn["verdict"]
    # The summary entry: the best of the reconstruction attacks, per metric, and the verdict on the maximum.
    best = attacks["inversion"]["best"]
    assert best["content_token_recovery_rate"]["value"] == max(
        attacks[name]["metrics"]["content_token_recovery_rate"] for name in INVERSION_ENTRIES - {"inversion"})
    assert attacks["inversion"]["verdict"].startswith("best of 6 reconstruction attacks")
    assert metrics["attacks"]["inversion"]["best"] == best


def test_heavy_activation_noise_defeats_the_inversion(noised_run, capsys):
    assert main(["attack", "inversion", str(noised_run), *FAST, "--json"]) == 0
    attacks = json.loads(capsys.readouterr().out)
    assert set(attacks) == INVERSION_ENTRIES
    nn = attacks["nn-inversion"]
    assert nn["settings"]["act-noise-multiplier"] == 10.0
    assert nn["metrics"]["content_token_recovery_rate"] < 0.02
    for name in INVERSION_ENTRIES:  # every attack, and so their maximum, is defeated
        assert "no leakage detected" in attacks[name]["verdict"], (name, attacks[name]["verdict"])
    # Running membership afterwards keeps the inversion entries.
    assert main(["attack", "membership", str(noised_run), *FAST]) == 0
    report = json.loads((noised_run / "attack_report.json").read_text())
    assert set(report["attacks"]) == {*INVERSION_ENTRIES, "membership"}


def test_a_run_without_captures_is_refused_with_what_to_do(tiny_model, tmp_path, capsys):
    run = run_tiny(tmp_path / "run", tiny_model, **{"capture-activations": 0, "seed": 7})
    assert main(["attack", "inversion", str(run)]) == 2
    assert "capture-activations=N" in capsys.readouterr().err
    assert main(["attack", "membership", str(run)]) == 2
    assert "capture-activations=N" in capsys.readouterr().err
    assert main(["attack", "all", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_reference_model_is_the_model_the_server_started_from(tiny_model, tmp_path):
    # With a vanishing learning rate the trained head stays where the server initialised it.
    run = run_tiny(tmp_path / "run", tiny_model, **{"learning-rate": 1e-12, "seed": 11, "split-layer": 1})
    config = load_run_config(run)
    trained = load_trained_model(run, config, 2)
    reference = load_reference_model(config, 2)
    head = trained.base_model.model.classifier.modules_to_save["default"]
    torch.testing.assert_close(head.weight, reference.classifier.weight, rtol=0, atol=1e-6)
    other_seed = load_reference_model(replace(config, seed=12), 2)
    assert not torch.allclose(other_seed.classifier.weight, reference.classifier.weight)


def test_a_causal_lm_run_in_the_u_shape_is_attacked_too(tmp_path, capsys):
    from tests.apps.tiny_causal_lm import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny-llama")
    run = run_tiny(tmp_path / "run", model, **{"task": "causal-lm", "split-layer": 1, "max-length": 48,
                                               "batch-size": 4})
    capsys.readouterr()  # the run's own log lines
    assert main(["attack", "all", str(run), *FAST, "--json"]) == 0
    attacks = json.loads(capsys.readouterr().out)
    assert attacks["nn-inversion"]["verdict"].startswith("nearest-neighbour inversion: LEAKY")
    assert attacks["membership"]["settings"]["loss"] == "mean response-token cross-entropy"
    # The prompt template is public: the baseline that ignores the activations already gets much of it.
    assert attacks["learned-inversion"]["metrics"]["prior_baseline"]["content_token_recovery_rate"] > 0.3
