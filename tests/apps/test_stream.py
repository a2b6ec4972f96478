"""The stream transport through the real apps: one Flower message per client per round, the split exchanges
over the data plane — exactly sequential split learning, U-shape with several clients included."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForSequenceClassification

from fedguard.runtime import client_shard, split_runtime
from fedguard.config import RunConfig
from fedguard.data.batches import round_batches
from fedguard.model.loading import ModelSpec, load_tokenizer
from fedguard.model.lora import LoraSettings, trainable_state
from fedguard.protocol import messages as proto
from fedguard.training.objectives import batch_loss
from tests.apps.loopback import run_server
from tests.apps.tiny_causal_lm import save_tiny_llama


def _tiny_llama_classifier(folder):
    """A tiny Llama sequence classifier without dropout (so a step is deterministic), with the MiniLM tokenizer."""
    tokenizer = load_tokenizer(ModelSpec("", "classification"))
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_labels=2, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_stream_round_equals_sequential_unsplit_lora_steps(tmp_path):
    model = str(_tiny_llama_classifier(tmp_path / "tiny"))
    overrides = {"model": model, "local-steps": 3, "batch-size": 4, "exchange-batches": 1, "min-fit-clients": 1,
                 "learning-rate": 0.01, "split-transport": "stream", "group-by-length": False}
    grid, metrics = run_server(tmp_path, overrides, num_nodes=1)
    entry = metrics["rounds"][0]
    assert entry["transport"] == "stream" and entry["clients_aggregated"] == 1 and entry["exchanges"] == 3 + 1
    # One Flower message each way for the whole round; the three batches went over the data plane.
    assert sum(proto.ADAPTER in m.content.array_records for m in grid.sent) == 1
    assert sum(proto.ACTIVATIONS in m.content.array_records for m in grid.received) == 3

    # Reference: the unsplit model (both halves' LoRA and the head) trained with one AdamW on the same batches.
    config = RunConfig(model=model, local_steps=3, batch_size=4, learning_rate=0.01, group_by_length=False)
    fresh = split_runtime.__wrapped__(ModelSpec(model, "classification", 2), config.split_layer,
                                      LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout,
                                                   config.lora_target_modules), config.seed)
    params = [p for half in (fresh.client, fresh.server) for p in half.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=0.0)
    shard = client_shard(config, 0, 1)
    for indices in round_batches(len(shard), 4, 3, config.seed, 0, 1, None):
        batch = fresh.encode(shard, indices, config.max_length)
        optimizer.zero_grad()
        batch_loss(fresh.logits(batch.input_ids, batch.attention_mask), batch.labels).backward()
        optimizer.step()
    out = tmp_path / "run"
    for folder, half in (("client_adapter", fresh.client), ("server_adapter", fresh.server)):
        saved = load_file(str(out / folder / "adapter_model.safetensors"))
        expected = trainable_state(half)
        assert len(saved) == len(expected)
        for name, tensor in expected.items():  # peft saves without the adapter name and the copy's wrapper
            torch.testing.assert_close(saved[name.replace(".modules_to_save", "").replace(".default", "")], tensor,
                                       rtol=1e-4, atol=1e-6)


def test_the_u_shape_with_several_clients_over_the_stream(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny-llama")
    grid, metrics = run_server(tmp_path, {"task": "causal-lm", "model": str(model), "split-layer": 1,
                                          "split-transport": "stream", "exchange-batches": 1}, num_nodes=3)
    entry = metrics["rounds"][0]
    assert entry["transport"] == "stream" and entry["clients_aggregated"] == 3 and not entry["clients_dropped"]
    assert entry["exchanges"] == 2 * 4 + 1  # per batch: activations up, d loss / d top up; then the final reply
    uploads = [m for m in grid.received if proto.TOP_GRADIENTS in m.content.array_records]
    assert len(uploads) == 3 * 4
