"""LoRA goes on each half independently; only adapters (and the server's head) train; adapters round-trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from peft import PeftModel

from fedguard.model.lora import (
    LoraSettings,
    attach_lora,
    check_targets_exist,
    load_trainable_state,
    trainable_state,
)
from fedguard.model.split import family_of, split_model
from tests.conftest import make_tiny


def _lora_halves(name: str, cut: int, settings: LoraSettings = LoraSettings(r=4, alpha=8)):
    model = make_tiny(name)
    family = family_of(model)
    client, server = split_model(model, cut)
    return model, attach_lora(client, settings, family), attach_lora(server, settings, family)


@pytest.mark.parametrize("name,client_target,server_head", [
    ("bert-cls", "query", "classifier"),
    ("gpt2-cls", "c_attn", "score"),
    ("llama-cls", "q_proj", "score"),
    ("llama-lm", "q_proj", None),
    ("distilbert-cls", "q_lin", "classifier"),
    ("deberta-v2-cls", "query_proj", "classifier"),
    ("electra-cls", "query", "classifier"),
    ("phi3-cls", "qkv_proj", "score"),
    ("gpt-neox-lm", "query_key_value", None),
    ("opt-cls", "q_proj", "score"),
])
def test_only_adapters_and_server_head_are_trainable(name, client_target, server_head):
    _, client, server = _lora_halves(name, 2)
    client_trainable = [n for n, p in client.named_parameters() if p.requires_grad]
    server_trainable = [n for n, p in server.named_parameters() if p.requires_grad]
    assert client_trainable and all("lora_" in n for n in client_trainable)
    assert any(client_target in n for n in client_trainable)
    head = [n for n in server_trainable if "lora_" not in n]
    if server_head is None:
        assert head == []
    else:
        assert head and all(server_head in n for n in head)
    # Blocks 0-1 are adapted only on the client, 2-3 only on the server.
    assert all(".0." in n or ".1." in n for n in client_trainable)
    assert not any(".0." in n or ".1." in n for n in server_trainable if "lora_" in n)


def test_rank_alpha_dropout_and_targets_are_applied():
    settings = LoraSettings(r=3, alpha=6, dropout=0.25, target_modules=("query", "key"))
    _, client, _ = _lora_halves("bert-cls", 2, settings)
    config = client.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (3, 6, 0.25)
    assert set(config.target_modules) == {"query", "key"}
    shapes = {n: tuple(p.shape) for n, p in client.named_parameters() if "lora_A" in n}
    assert all(shape[0] == 3 for shape in shapes.values())
    assert any(".key." in n for n in shapes) and not any(".value." in n for n in shapes)


def test_unknown_target_module_is_a_clear_error():
    model = make_tiny("bert-cls")
    with pytest.raises(ValueError, match=r"match no module.*linear modules are:.*query"):
        check_targets_exist(model, LoraSettings(target_modules=("q_proj",)), family_of(model))


def test_auto_targets_without_a_default_ask_for_explicit_ones():
    family = dataclasses.replace(family_of(make_tiny("bert-cls")), default_lora_targets=())
    with pytest.raises(ValueError, match=r"no default LoRA targets for model type 'bert'.*lora-target-modules"):
        LoraSettings().targets_for(family)
    assert LoraSettings(target_modules=("key",)).targets_for(family) == ("key",)


def test_split_at_zero_leaves_a_client_without_trainable_parameters():
    _, client, server = _lora_halves("bert-cls", 0)
    assert not any(p.requires_grad for p in client.parameters())
    assert isinstance(server, PeftModel)


def test_training_changes_the_adapters_and_nothing_else(padded_batch):
    ids, mask = padded_batch
    model, client, server = _lora_halves("bert-cls", 2)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n
                     and "classifier" not in n}
    adapters_before = {**trainable_state(client), **trainable_state(server)}
    params = [p for half in (client, server) for p in half.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(server(client(ids, mask), mask), torch.tensor([0, 1, 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = {**trainable_state(client), **trainable_state(server)}
    changed = [n for n in adapters_before if not torch.equal(adapters_before[n], after[n])]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any("classifier" in n for n in changed)
    for name, value in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(value.detach(), frozen_before[name]), name


def test_adapter_round_trips_through_flower_records():
    _, client, _ = _lora_halves("llama-cls", 2)
    with torch.no_grad():
        for p in client.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    state = trainable_state(client)
    record = RecordDict({"arrays": ArrayRecord(torch_state_dict=state)})
    restored = dict(record.array_records["arrays"].to_torch_state_dict())
    _, other, _ = _lora_halves("llama-cls", 2)
    load_trainable_state(other, restored)
    for name, tensor in trainable_state(other).items():
        assert torch.equal(tensor, state[name])


def test_loading_a_mismatched_adapter_is_refused():
    _, client, _ = _lora_halves("bert-cls", 2)
    state = trainable_state(client)
    name = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state(client, {**state, name: torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(client, {k: v for k, v in state.items() if k != name})
