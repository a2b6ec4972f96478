"""A split model computes exactly what the unsplit model computes, for every architecture and cut.

The parts (embeddings, blocks, top, head) are found in each model itself; the matrix below covers encoders
(BERT, RoBERTa, XLM-RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA) and decoders (GPT-2, OPT, GPT-NeoX, Falcon,
Phi-3, Gemma, Llama, Qwen2, Mistral), with sequence-classification and causal-LM heads.
"""

from __future__ import annotations

import pytest
import torch

from fedguard.model.lora import LoraSettings, attach_lora
from fedguard.model.split import SplitError, check_splittable, family_of, num_blocks, split_model
from tests.conftest import TINY_MODELS, UNSPLITTABLE, make_tiny


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_composition_equals_unsplit_model_at_every_cut(name, padded_batch):
    ids, mask = padded_batch
    model = make_tiny(name).eval()
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        for cut in range(num_blocks(model) + 1):
            client, server = split_model(model, cut)
            logits = server(client(ids, mask), mask)
            torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5, msg=f"{name} cut at {cut}")


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_u_shaped_composition_equals_unsplit_model_at_every_cut(name, padded_batch):
    ids, mask = padded_batch
    model = make_tiny(name).eval()
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        for cut in range(num_blocks(model) + 1):
            client, server = split_model(model, cut, u_shape=True)
            logits = client.head(server(client(ids, mask), mask), mask)
            torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5, msg=f"{name} U-cut at {cut}")


def _names(module: torch.nn.Module) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, _ in module.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("u_shape", [False, True])
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_halves_keep_the_unsplit_names_and_their_adapters_merge(name, u_shape):
    model = make_tiny(name)
    whole = _names(model)
    client, server = split_model(model, 2, u_shape=u_shape)
    assert _names(client) <= whole and _names(server) <= whole
    # Blocks 0-1 live only on the client, 2-3 only on the server, under their original indices.
    family = family_of(model)
    prefix = f"{family.base}.{family.blocks}."

    def blocks_of(names: set[str]) -> set[str]:
        return {n.removeprefix(prefix).split(".")[0] for n in names if n.startswith(prefix)}

    assert blocks_of(_names(client)) == {"0", "1"} and blocks_of(_names(server)) == {"2", "3"}
    settings = LoraSettings(r=2, alpha=4)
    client, server = attach_lora(client, settings, family), attach_lora(server, settings, family)
    lora = [{n for n in _names(half) if "lora_" in n} for half in (client, server)]
    assert lora[0] and lora[1] and not lora[0] & lora[1]
    # The blocks are shared with the unsplit model, so both adapters load onto it under the same names.
    assert lora[0] | lora[1] <= {n for n in _names(model) if "lora_" in n}


def test_u_shaped_server_holds_neither_head_nor_final_norm():
    model = make_tiny("llama-cls")
    client, server = split_model(model, 1, u_shape=True)
    server_names = {n for n, _ in server.named_parameters()}
    client_names = {n for n, _ in client.named_parameters()}
    assert not any(n.startswith(("score", "model.norm", "lm_head")) for n in server_names)
    assert "score.weight" in client_names and "model.norm.weight" in client_names
    assert any(n.startswith("model.layers.3.") for n in server_names)


def test_halves_own_disjoint_blocks_with_original_names():
    model = make_tiny("llama-lm")
    client, server = split_model(model, 1)
    client_names = {n for n, _ in client.named_parameters()}
    server_names = {n for n, _ in server.named_parameters()}
    assert "model.layers.0.self_attn.q_proj.weight" in client_names
    assert not any(n.startswith("model.layers.1.") for n in client_names)
    assert "model.layers.3.self_attn.q_proj.weight" in server_names
    assert not any(n.startswith("model.layers.0.") for n in server_names)
    assert "model.norm.weight" in server_names and "model.norm.weight" not in client_names
    assert "model.embed_tokens.weight" in client_names
    # The unsplit model is left whole.
    assert len(model.model.layers) == 4


def test_what_runs_before_and_after_the_blocks_is_found_in_the_model():
    family = family_of(make_tiny("opt-lm"))  # opt-350m style: projected embeddings, learned positions
    assert (family.base, family.blocks, family.num_blocks) == ("model", "decoder.layers", 4)
    assert [(s.path, s.carries) for s in family.embedding] == [("decoder.embed_positions", None),
                                                              ("decoder.project_in", 0)]
    assert [s.path for s in family.top] == ["decoder.final_layer_norm", "decoder.project_out"]
    assert family.head == ("lm_head",)
    llama = family_of(make_tiny("llama-cls"))  # rotary embeddings run before the blocks but stay on both sides
    assert llama.embedding == () and [s.path for s in llama.top] == ["norm"]


@pytest.mark.parametrize("name", ["gpt2-lm", "bert-cls", "distilbert-cls", "llama-lm", "opt-cls"])
def test_client_half_sends_no_cache_and_server_half_cannot_embed_tokens(name, padded_batch):
    ids, mask = padded_batch
    client, server = split_model(make_tiny(name).eval(), 2)
    hidden = client(ids, mask)
    assert isinstance(hidden, torch.Tensor) and hidden.shape == (3, 7, 32)
    assert not any("word_embeddings" in n or "embed_tokens" in n or n.endswith("wte.weight")
                   for n, _ in server.base.named_parameters())
    with pytest.raises(RuntimeError, match="no token embeddings"):
        server.base(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("cut", [-1, 5, 2.0])
def test_split_index_out_of_range_names_the_valid_range(cut):
    with pytest.raises(SplitError, match=r"allowed 0\.\.4"):
        split_model(make_tiny("bert-cls"), cut)


@pytest.mark.parametrize("name", sorted(UNSPLITTABLE))
def test_an_architecture_that_cannot_be_split_is_a_one_line_error_naming_why(name):
    build, reason = UNSPLITTABLE[name]
    torch.manual_seed(0)
    model = build()
    with pytest.raises(SplitError, match=reason) as caught:
        split_model(model, 1)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name,task", [("bert-cls", "classification"), ("deberta-v2-cls", "classification"),
                                       ("opt-lm", "causal-lm"), ("falcon-lm", "causal-lm"),
                                       ("gemma-cls", "classification")])
def test_preflight_accepts_a_splittable_config(name, task):
    family = check_splittable(make_tiny(name).config, task, split_layer=4)
    assert family.num_blocks == 4 and family.default_lora_targets


@pytest.mark.parametrize("name", ["albert-cls", "deberta-v2-conv-cls", "t5-cls"])
def test_preflight_rejects_an_unsplittable_config_before_loading_weights(name):
    build, reason = UNSPLITTABLE[name]
    with pytest.raises(SplitError, match=reason):
        check_splittable(build().config, "classification")


def test_preflight_checks_the_task_and_the_split_index():
    config = make_tiny("distilbert-cls").config
    with pytest.raises(SplitError, match="no AutoModelForCausalLM"):
        check_splittable(config, "causal-lm")
    with pytest.raises(SplitError, match=r"allowed 0\.\.4"):
        check_splittable(config, "classification", split_layer=7)
    with pytest.raises(SplitError, match="allowed classification, causal-lm"):
        check_splittable(config, "token-classification")


@pytest.mark.parametrize("name,targets", [
    ("bert-cls", ("query", "value")), ("distilbert-cls", ("q_lin", "v_lin")),
    ("deberta-v2-cls", ("query_proj", "value_proj")), ("gpt2-lm", ("c_attn",)), ("opt-lm", ("q_proj", "v_proj")),
    ("gpt-neox-lm", ("query_key_value",)), ("falcon-lm", ("query_key_value",)), ("phi3-lm", ("qkv_proj",)),
    ("gemma-lm", ("q_proj", "v_proj")), ("mistral-lm", ("q_proj", "v_proj")),
])
def test_default_lora_targets_follow_from_the_architecture(name, targets):
    assert family_of(make_tiny(name)).default_lora_targets == targets
