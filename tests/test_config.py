"""The run config is validated once, before training, with errors that name the key and what is allowed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedguard.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]


def _app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_run_config_is_valid_and_complete():
    config = RunConfig.from_run_config(_app_config())
    # Every field is declared in pyproject (otherwise `flwr run --run-config` could not override it).
    assert set(config.to_dict()) == set(_app_config())


@pytest.mark.parametrize("key,value,message", [
    ("learning-rate", -0.1, "learning-rate=-0.1: must be a positive finite number"),
    ("learning-rate", float("nan"), "learning-rate=nan"),
    ("partitioner", "zipf", "partitioner='zipf': unknown; allowed iid, dirichlet, pathological"),
    ("split-layer", -1, "split-layer=-1: must be >= 0"),
    ("lora-r", 0, "lora-r=0"),
    ("fraction-train", 1.5, "fraction-train=1.5: must be in (0, 1]"),
    ("batch-size", "32", "batch-size='32': expected an integer"),
    ("exchange-batches", 0, "exchange-batches=0: must be >= 1"),
    ("dirichlet-alpha", 0.0, "dirichlet-alpha=0.0: must be > 0"),
    ("dp-noise-multiplier", -1.0, "dp-noise-multiplier=-1.0: must be a finite number >= 0"),
    ("act-clip-norm", float("nan"), "act-clip-norm=nan"),
    ("dp-delta", 1.0, "dp-delta=1.0: must be in (0, 1)"),
    ("dp-max-grad-norm", 0.0, "dp-max-grad-norm=0.0: must be > 0"),
    ("label-protection", "hide", "allowed auto, clear, randomized-response, u-shape"),
    ("label-protection", "randomized-response", "needs label-epsilon > 0"),
    ("max-epsilon", 8.0, "max-epsilon needs DP-SGD"),
    ("act-noise-multiplier", 1.0, "needs act-clip-norm > 0"),
    ("accountant", "moments", "allowed edgeworth, pld, rdp"),
    ("bottleneck-dim", -1, "bottleneck-dim=-1: must be >= 0"),
    ("activation-reuse", "sometimes", "allowed none, round, run"),
    ("dcor-weight", -1.0, "dcor-weight=-1.0: must be a finite number >= 0"),
])
def test_bad_values_are_rejected_with_the_key_and_the_allowed_range(key, value, message):
    raw = {**_app_config(), key: value}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(raw)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    ({"task": "causal-lm", "dataset": "sst2"}, "dataset='sst2' is a classification set"),
    ({"task": "causal-lm", "partitioner": "dirichlet"}, "task='causal-lm' has none: use 'iid'"),
    ({"task": "causal-lm", "label-protection": "randomized-response", "label-epsilon": 1.0},
     "the labels are the text itself"),
])
def test_causal_lm_rejects_what_only_makes_sense_for_class_labels(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({**_app_config(), **overrides})


def test_auto_resolves_per_task_so_causal_lm_keeps_its_text_on_the_client():
    classification = RunConfig.from_run_config(_app_config())
    assert (classification.dataset, classification.label_protection) == ("sst2", "clear")
    assert not classification.u_shape
    causal = RunConfig.from_run_config({**_app_config(), "task": "causal-lm"})
    assert (causal.dataset, causal.label_protection) == ("alpaca-libre", "u-shape") and causal.u_shape
    # What was resolved is what the run directory records.
    assert causal.to_dict()["label-protection"] == "u-shape"


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config({"learning-rate": -1.0, "local-steps": 0})
    assert "learning-rate" in str(err.value) and "local-steps" in str(err.value)


def test_unknown_keys_are_rejected_not_ignored():
    with pytest.raises(ConfigError, match="unknown run-config key.*learnig-rate"):
        RunConfig.from_run_config({"learnig-rate": 0.1})


def test_target_modules_parse_from_a_comma_separated_string():
    config = RunConfig.from_run_config({"lora-target-modules": "query, value ,key"})
    assert config.lora_target_modules == ("query", "value", "key")
    assert config.to_dict()["lora-target-modules"] == "query,value,key"


def test_exchanges_per_round_rounds_up():
    assert RunConfig(local_steps=10, exchange_batches=4).exchanges_per_round == 3


def test_noise_multiplier_and_target_epsilon_are_exclusive():
    with pytest.raises(ConfigError, match="both set"):
        RunConfig.from_run_config({"dp-noise-multiplier": 1.0, "dp-target-epsilon": 8.0})
    assert RunConfig.from_run_config({"dp-target-epsilon": 8.0}).dp_enabled


def test_the_decorrelation_penalty_needs_something_trainable_below_the_cut():
    with pytest.raises(ConfigError, match="dcor-weight > 0 needs something the client trains below the cut"):
        RunConfig.from_run_config({**_app_config(), "split-layer": 0, "dcor-weight": 1.0})
    RunConfig.from_run_config({**_app_config(), "split-layer": 0, "dcor-weight": 1.0, "bottleneck-dim": 8})


@pytest.mark.parametrize("path", sorted((ROOT / "simulations").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_run_config_file_is_valid(path):
    RunConfig.from_run_config({**_app_config(), **tomllib.loads(path.read_text())})
