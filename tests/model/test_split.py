"""A split model computes exactly what the unsplit model computes, for every supported family and cut."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForSequenceClassification

from fedguard.model.split import SplitError, num_blocks, split_model
from tests.conftest import TINY_MODELS, make_tiny


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


def test_u_shaped_server_holds_neither_head_nor_final_norm():
    model = make_tiny("llama-cls")
    client, server = split_model(model, 1, u_shape=True)
    server_names = {n for n, _ in server.named_parameters()}
    client_names = {n for n, _ in client.named_parameters()}
    assert not any(n.startswith(("score", "model.norm", "lm_head")) for n in server_names)
    assert "score.weight" in client_names and "top_norm.weight" in client_names
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


def test_client_half_sends_no_cache_and_server_half_cannot_embed_tokens(padded_batch):
    ids, mask = padded_batch
    client, server = split_model(make_tiny("gpt2-lm").eval(), 2)
    hidden = client(ids, mask)
    assert isinstance(hidden, torch.Tensor) and hidden.shape == (3, 7, 32)
    with pytest.raises(RuntimeError, match="no token embeddings"):
        server.base(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("cut", [-1, 5, 2.0])
def test_split_index_out_of_range_names_the_valid_range(cut):
    with pytest.raises(SplitError, match=r"allowed 0\.\.4"):
        split_model(make_tiny("bert-cls"), cut)


def test_unsupported_architecture_lists_supported_ones():
    model = T5ForSequenceClassification(T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                                 d_kv=8, num_decoder_layers=1))
    with pytest.raises(SplitError, match="unsupported architecture 't5'.*bert.*gpt2.*llama"):
        split_model(model, 1)
