"""The adapter's model card: peft's README.md format, the run's numbers, and its privacy guarantees per adversary."""

from __future__ import annotations

import re

import yaml

from fedguard.apps.model_card import write_model_card
from fedguard.config import RunConfig

BASE = "/models/all-MiniLM-L6-v2"


def rounds(**privacy):
    """Two rounds of a classification run; ``privacy`` fields go into the last one."""
    return [{"round": 1, "accuracy": 0.8119, "loss": 0.43, "perplexity": None},
            {"round": 2, "accuracy": 0.8326, "loss": 0.40, "perplexity": None, **privacy}]


def card(tmp_path, config, metrics, clients=3):
    path = write_model_card(tmp_path / "adapter", config, metrics, BASE, clients)
    assert path == tmp_path / "adapter" / "README.md"
    text = path.read_text()
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, flags=re.DOTALL)
    assert match, "README.md must start with YAML front matter between --- lines"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_front_matter_is_peft_style_and_parses(tmp_path):
    front, body = card(tmp_path, RunConfig(), {"rounds": rounds()})
    assert front["base_model"] == BASE and front["library_name"] == "peft"
    assert front["pipeline_tag"] == "text-classification"
    assert {"lora", "fedguard", f"base_model:adapter:{BASE}"} <= set(front["tags"])
    for heading in ("## Model Details", "## Uses", "## Training Details", "## Evaluation", "### Framework versions"):
        assert f"\n{heading}\n" in body
    assert re.search(r"^- PEFT \d+\.\d+", body, flags=re.MULTILINE)  # as peft writes it


def test_run_numbers_are_recorded(tmp_path):
    config = RunConfig(num_server_rounds=3, local_steps=7, dataset="sst2", lora_r=4)
    metrics = {"rounds": rounds(), "best_accuracy": 0.8326, "best_round": 2, "final_accuracy": 0.8326,
               "initial": {"accuracy": 0.5, "loss": 0.7, "eval_examples": 872}}
    _, body = card(tmp_path, config, metrics, clients=5)
    assert f"`{BASE}`" in body and "`sst2`, split over 5 clients" in body
    assert "- **Rounds:** 2 completed of 3 planned" in body
    assert "- **Clients:** 5" in body and "- **Local steps per round:** 7" in body and "LoRA r=4" in body
    assert "- **Final accuracy:** 0.8326 (round 2)" in body
    assert "- **Held-out examples:** 872" in body


def test_causal_lm_card_has_perplexity_and_generation_pipeline(tmp_path):
    metrics = {"rounds": [{"round": 1, "accuracy": 0.586, "loss": 1.821, "perplexity": 6.1786}]}
    front, body = card(tmp_path, RunConfig(task="causal-lm"), metrics)
    assert front["pipeline_tag"] == "text-generation"
    assert "- **Final perplexity:** 6.1786" in body and "AutoModelForCausalLM" in body


def test_non_private_run_says_there_is_no_guarantee(tmp_path):
    front, body = card(tmp_path, RunConfig(), {"rounds": rounds(epsilon_model_certified=None)})
    assert "trained with no differential-privacy guarantee" in body
    assert "- **Against third parties who see only the released model:** no differential-privacy guarantee\n" in body
    assert "- **Against the server, which sees the activations, labels and adapter updates:** no " \
           "differential-privacy guarantee\n" in body
    assert "differential-privacy" not in front["tags"]
    assert "adapter, legacy" not in body


def test_private_run_records_each_guarantee_with_delta_and_neighbouring_relation(tmp_path):
    metrics = {"rounds": rounds(epsilon_model_certified=8.0, epsilon_model_certified_median=7.5,
                                epsilon_model_estimate=2.64, epsilon_server_certified=None, privacy_delta=1e-5),
               "privacy": {"delta": 1e-5, "neighbouring": "replace-one example of one client's shard",
                           "server": "labels reach the server in clear"}}
    front, body = card(tmp_path, RunConfig(dp_noise_multiplier=1.0), metrics)
    assert "differential-privacy" in front["tags"]
    assert "- **δ:** 1e-05" in body
    assert "- **Neighbouring relation:** replace-one example of one client's shard" in body
    model_line = next(line for line in body.splitlines() if line.startswith("- **Against third parties"))
    assert "worst client: ε = 8 (certified)" in model_line and "median client: ε = 7.5 (certified)" in model_line
    assert "ε = 2.64 (estimate, not a guarantee)" in model_line
    server_line = next(line for line in body.splitlines() if line.startswith("- **Against the server"))
    assert server_line.endswith(":** no differential-privacy guarantee — labels reach the server in clear")
    assert "trained with no differential-privacy guarantee" not in body


def test_server_components_do_not_hide_that_the_whole_server_view_is_unprotected(tmp_path):
    metrics = {"rounds": rounds(epsilon_server_certified=None, epsilon_activation=1.02e5, privacy_delta=1e-5)}
    _, body = card(tmp_path, RunConfig(act_clip_norm=30.0, act_noise_multiplier=0.3), metrics)
    server_line = next(line for line in body.splitlines() if line.startswith("- **Against the server"))
    assert "everything it sees together: no differential-privacy guarantee" in server_line
    assert "activations, worst client: ε = 1.02e+05 (certified)" in server_line


def test_legacy_adapter_fields_are_shown_as_legacy(tmp_path):
    metrics = {"rounds": rounds(epsilon_adapter_certified=3.0, epsilon_adapter_estimate=1.2, privacy_delta=1e-6)}
    _, body = card(tmp_path, RunConfig(dp_noise_multiplier=1.0), metrics)
    legacy = next(line for line in body.splitlines() if "adapter, legacy" in line and line.startswith("- **Against"))
    assert "ε = 3 (certified)" in legacy and "ε = 1.2 (estimate, not a guarantee)" in legacy
    assert "- **δ:** 1e-06" in body
