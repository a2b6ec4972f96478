"""`flwr run .` with `task='causal-lm'` instruction-tunes a tiny Llama through the U-shaped split."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedguard.runtime import RunData, run_data
from fedguard.data.instructions import tokenize_instructions
from fedguard.model.loading import ModelSpec, load_tokenizer
from fedguard.training.objectives import token_losses
from tests.apps.flwr_harness import flwr_run
from tests.apps.tiny_causal_lm import save_tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("causal")
    model = save_tiny_llama(tmp / "tiny-llama")
    out = tmp / "run"
    result = flwr_run(tmp, {
        "task": "causal-lm", "model": str(model), "split-layer": 1, "num-server-rounds": 2, "local-steps": 8,
        "batch-size": 8, "exchange-batches": 4, "learning-rate": 0.01, "max-length": 64, "eval-examples": 32,
        "output-dir": str(out),
    }, num_supernodes=2)
    assert (out / "metrics.json").exists(), f"no metrics.json\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return model, out, result


def test_held_out_perplexity_falls_and_generations_are_written_each_round(finished_run):
    _, out, _ = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["label-protection"] == "u-shape" and config["dataset"] == "alpaca-libre"
    perplexities = [metrics["initial"]["perplexity"]] + [r["perplexity"] for r in metrics["rounds"]]
    assert perplexities[-1] < perplexities[0], perplexities
    assert metrics["final_perplexity"] == perplexities[-1]
    assert all(r["clients_aggregated"] == 2 for r in metrics["rounds"])
    samples = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted({s["round"] for s in samples}) == [0, 1, 2]
    assert all(s["prompt"].rstrip().endswith("### Response:") for s in samples)


def test_the_merged_adapter_reloads_onto_the_whole_model_with_the_same_perplexity(finished_run):
    model_dir, out, _ = finished_run
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out / "adapter")).eval()
    tokenizer = load_tokenizer(ModelSpec(str(model_dir), "causal-lm"))
    data: RunData = run_data("causal-lm", "alpaca-libre", "sentence", "label")
    dev = data.dev.subset(list(range(32)))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 32, 8):
            batch = tokenize_instructions(tokenizer, dev, list(range(start, start + 8)), 64)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            tokens, counts = token_losses(logits, batch.labels)
            total, count = total + float(tokens.sum()), count + int(counts.sum())
    final = json.loads((out / "metrics.json").read_text())["rounds"][-1]["loss"]
    assert abs(total / count - final) < 1e-3
