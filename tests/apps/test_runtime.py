"""Each process loads only what it runs: a client process holds the client half alone, with the adapter the
whole model's client half would have, on its configured device."""

from __future__ import annotations

import re

import pytest
import torch

import fedguard.runtime as runtime_module
from fedguard.runtime import (
    client_runtime,
    client_split_runtime,
    lora_settings,
    model_spec,
    place,
    runtime_for,
    server_runtime,
    split_runtime,
)
from fedguard.config import RunConfig
from fedguard.model.device import DeviceError
from fedguard.model.lora import LoraSettings, attach_lora, trainable_state, unwrapped
from fedguard.model.split import SplitError, family_of, split_model
from tests.apps.tiny_causal_lm import save_tiny_llama
from tests.conftest import make_tiny

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
CPU = {"device": "cpu", "server-device": "cpu"}


def _names(module: torch.nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters()}


def _block_indices(names: set[str]) -> set[int]:
    return {int(m.group(1)) for name in names if (m := re.search(r"\.layers?\.(\d+)\.", name))}


def test_a_client_process_holds_embeddings_and_its_blocks_only():
    config = RunConfig.from_run_config(CPU)  # MiniLM (6 blocks), split-layer 2
    whole, client = runtime_for(config, 2), client_runtime(config, 2)
    kept, everything = _names(client.task_model), _names(whole.task_model)
    assert kept < everything
    assert _block_indices(kept) == {0, 1} and _block_indices(everything) == set(range(6))
    assert not any(name.startswith(("classifier", "bert.pooler")) for name in kept)
    assert any("embeddings" in name for name in kept)
    assert client.num_blocks == whole.num_blocks == 6
    assert (client.hidden_size, client.task, client.u_shape) == (whole.hidden_size, whole.task, whole.u_shape)


def _fresh(config: RunConfig):
    """Uncached whole and client-only runtimes (the cached ones may hold adapters trained by earlier tests)."""
    args = (model_spec(config, 2), config.split_layer, lora_settings(config), config.seed, config.u_shape)
    return split_runtime.__wrapped__(*args), client_split_runtime.__wrapped__(*args)


def test_the_client_only_adapter_is_the_whole_runtimes_client_adapter_name_for_name():
    config = RunConfig.from_run_config(CPU)
    whole_runtime, client_only = _fresh(config)
    whole, client = trainable_state(whole_runtime.client), trainable_state(client_only.client)
    assert whole.keys() == client.keys() and whole
    for name in whole:  # same seed, same initial A matrices
        assert torch.equal(whole[name], client[name]), name


def test_the_client_only_half_computes_what_the_whole_runtimes_client_half_computes():
    config = RunConfig.from_run_config(CPU)
    whole, client = _fresh(config)
    data = ["a gripping, funny film", "dull"]
    batch = client.tokenizer(data, padding=True, return_tensors="pt")
    whole.client.eval(), client.client.eval()
    with torch.no_grad():
        expected = whole.client(batch["input_ids"], batch["attention_mask"])
        got = client.client(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(got, expected)


def test_a_u_shaped_client_keeps_the_head_and_drops_the_middle_blocks(tmp_path):
    model = str(save_tiny_llama(tmp_path / "llama", layers=4))
    config = RunConfig.from_run_config({**CPU, "model": model, "task": "causal-lm", "split-layer": 1})
    whole, client = runtime_for(config, 0), client_runtime(config, 0)
    kept = _names(client.task_model)
    assert kept < _names(whole.task_model)
    assert _block_indices(kept) == {0}
    assert {"model.norm.weight", "model.embed_tokens.weight"} <= kept  # the head is tied to the embeddings
    assert trainable_state(client.client).keys() == trainable_state(whole.client).keys()
    hidden = torch.randn(2, 5, client.hidden_size)
    mask = torch.ones(2, 5, dtype=torch.long)
    client.client.eval(), whole.client.eval()
    with torch.no_grad():
        torch.testing.assert_close(unwrapped(client.client).head(hidden, mask),
                                   unwrapped(whole.client).head(hidden, mask))


def test_the_server_runtime_on_the_cpu_is_the_whole_runtime():
    config = RunConfig.from_run_config(CPU)
    server = server_runtime(config, 2)
    assert server is runtime_for(config, 2)  # one cached model per process
    assert server.device == torch.device("cpu") and server.precision == "fp32"


@no_gpu
def test_a_cuda_device_without_a_gpu_stops_before_any_model_is_loaded():
    with pytest.raises(DeviceError, match=r"device='cuda' but torch.cuda.is_available\(\) is False"):
        client_runtime(RunConfig.from_run_config({"device": "cuda"}), 2)
    with pytest.raises(DeviceError, match=r"server-device='cuda:1' but torch.cuda.is_available\(\) is False"):
        server_runtime(RunConfig.from_run_config({"server-device": "cuda:1"}), 2)


@pytest.mark.parametrize("u_shape", [False, True])
def test_placement_reaches_every_tensor_of_the_halves_and_their_views(u_shape):
    """Moved to the meta device (the one other device every machine has): nothing stays behind on the CPU,
    including the task-model runner and head view a half keeps outside its registered modules."""
    model = make_tiny("llama-lm" if u_shape else "bert-cls")
    family = family_of(model)
    client, server = split_model(model, 1, u_shape=u_shape)
    settings = LoraSettings(r=4, alpha=8)
    client, server = attach_lora(client, settings, family), attach_lora(server, settings, family)
    place(torch.device("meta"), model, client, server)
    modules = [model, client, server]
    for half in (unwrapped(client), unwrapped(server)):
        modules += [view for view in (half.__dict__.get("_runner"), half.__dict__.get("_head_base")) if view]
    for module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            assert tensor.device.type == "meta", name


def _refuse_whole_loads(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the client process loaded the whole model")

    monkeypatch.setattr(runtime_module, "load_task_model", refuse)


def test_a_client_process_never_loads_the_servers_blocks(monkeypatch):
    config = RunConfig.from_run_config(CPU)  # MiniLM (6 blocks), split-layer 2
    whole = runtime_for(config, 2)
    _refuse_whole_loads(monkeypatch)
    client = client_split_runtime.__wrapped__(model_spec(config, 2), 2, lora_settings(config), config.seed)
    blocks = client.task_model.bert.encoder.layer
    assert len(blocks) == 2  # built with two blocks: the other four were never read from the checkpoint
    assert client.task_model.config.num_hidden_layers == 6  # the checkpoint's config, as in a whole load
    assert client.family == whole.family and client.num_blocks == 6


def test_a_u_shaped_client_loaded_alone_draws_the_whole_loads_head_from_the_run_seed():
    """The classification head is new (random): it is drawn from the run's seed, whatever the global
    generator's state, so the client-only load has the whole load's head and another seed another head."""
    config = RunConfig.from_run_config({**CPU, "label-protection": "u-shape"})
    args = (model_spec(config, 2), config.split_layer, lora_settings(config), config.seed, True)
    torch.manual_seed(11)
    whole = split_runtime.__wrapped__(*args)
    torch.manual_seed(12)
    client = client_split_runtime.__wrapped__(*args)
    other_seed = client_split_runtime.__wrapped__(*args[:3], config.seed + 1, True)
    head = "base_model.model.classifier.modules_to_save.default.weight"
    assert not torch.equal(trainable_state(other_seed.client)[head], trainable_state(client.client)[head])
    expected, got = trainable_state(whole.client), trainable_state(client.client)
    assert got.keys() == expected.keys() and any(name.startswith("base_model.model.classifier") for name in got)
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    batch = client.tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    whole.client.eval(), client.client.eval()
    with torch.no_grad():
        hidden = client.client(ids, mask)
        assert torch.equal(hidden, whole.client(ids, mask))
        assert torch.equal(unwrapped(client.client).head(hidden, mask), unwrapped(whole.client).head(hidden, mask))


@pytest.mark.parametrize("split_layer", [0, 6])
def test_a_client_loaded_alone_at_the_ends_of_the_range_computes_what_the_whole_runtimes_does(split_layer):
    config = RunConfig.from_run_config({**CPU, "split-layer": split_layer})
    whole, client = _fresh(config)
    assert trainable_state(client.client).keys() == trainable_state(whole.client).keys()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    mask = torch.ones_like(ids)
    whole.client.eval(), client.client.eval()
    with torch.no_grad():
        assert torch.equal(client.client(ids, mask), whole.client(ids, mask))


def test_a_split_layer_past_the_last_block_is_refused_naming_the_whole_count():
    config = RunConfig.from_run_config(CPU)
    with pytest.raises(SplitError, match=r"split-layer=7 is out of range .* with 6 blocks: allowed 0..6"):
        client_split_runtime.__wrapped__(model_spec(config, 2), 7, lora_settings(config), config.seed)


def test_the_whole_load_fallback_gives_the_same_client_runtime(monkeypatch):
    """What a GGUF checkpoint gets (loaded whole, the server's part dropped) equals the partial load."""
    config = RunConfig.from_run_config(CPU)
    partial = client_split_runtime.__wrapped__(model_spec(config, 2), 2, lora_settings(config), config.seed)
    monkeypatch.setattr(runtime_module, "can_load_first_blocks", lambda spec: False)
    fallback = client_split_runtime.__wrapped__(model_spec(config, 2), 2, lora_settings(config), config.seed)
    assert _names(fallback.task_model) == _names(partial.task_model)
    assert fallback.family == partial.family and fallback.num_blocks == partial.num_blocks == 6
    assert fallback.task_model.config.to_dict() == partial.task_model.config.to_dict()
    ids, mask = torch.tensor([[101, 2023, 2003, 102]]), torch.ones(1, 4, dtype=torch.long)
    fallback.client.eval(), partial.client.eval()
    with torch.no_grad():
        assert torch.equal(fallback.client(ids, mask), partial.client(ids, mask))
