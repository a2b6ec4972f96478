"""Loading a model's first blocks only (what a client process runs): the same names, tensors, outputs and
(seeded alike) new head as the whole load, for architectures that name their block count differently
(``n_layer``, ``n_layers``) or keep per-layer settings (Qwen2's ``layer_types``)."""

from __future__ import annotations

import re

import pytest
import torch

from fedguard.model.loading import (
    ModelSpec,
    can_load_first_blocks,
    first_blocks_config,
    load_first_blocks,
    load_task_model,
)
from fedguard.model.split import family_of, split_model
from tests.conftest import make_tiny


def _saved(tmp_path, name: str, base_only: bool = False) -> ModelSpec:
    """The tiny model ``name`` saved as a checkpoint folder (``base_only``: its base model, so that a
    classification load initialises a new head, as for the packaged MiniLM)."""
    model = make_tiny(name)
    if base_only:
        model = getattr(model, model.base_model_prefix)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return ModelSpec(str(folder), "classification" if "-cls" in name else "causal-lm", 3)


def _block(name: str) -> int | None:
    match = re.search(r"\.(?:layers?|h|blocks)\.(\d+)\.", name)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("name", ["bert-cls", "gpt2-cls", "distilbert-cls", "qwen2-lm-sliding", "llama-lm"])
@pytest.mark.parametrize("kept", [1, 3])
def test_the_first_blocks_are_the_whole_models_own(tmp_path, name, kept):
    spec = _saved(tmp_path, name)
    whole = load_task_model(spec).eval()
    first = load_first_blocks(spec, kept)
    model = first.model.eval()
    assert (first.num_blocks, first.kept) == (4, kept)
    assert model.config.num_hidden_layers == kept  # as built: what family_of counts
    got, expected = model.state_dict(), whole.state_dict()
    assert set(got) == {key for key in expected if (_block(key) is None or _block(key) < kept)}
    for key, tensor in got.items():
        assert torch.equal(tensor, expected[key]), key

    family, whole_family = family_of(model), family_of(whole)
    assert family.num_blocks == kept and whole_family.num_blocks == 4
    for u_shape in (False, True):  # the client halves compute the same, bit for bit
        client, _ = split_model(model, kept, u_shape=u_shape)
        reference, _ = split_model(whole, kept, u_shape=u_shape)
        ids = torch.randint(2, 97, (2, 6), generator=torch.Generator().manual_seed(3))
        mask = torch.ones(2, 6, dtype=torch.long)
        with torch.no_grad():
            hidden = client(ids, mask)
            assert torch.equal(hidden, reference(ids, mask))
            if u_shape:
                assert torch.equal(client.head(hidden, mask), reference.head(hidden, mask))
    first.restore_config()
    assert model.config.to_dict() == whole.config.to_dict()


def test_a_new_classification_head_is_the_whole_loads_under_the_same_seed(tmp_path):
    spec = _saved(tmp_path, "llama-cls", base_only=True)  # no head in the checkpoint: a new, random one
    torch.manual_seed(7)
    whole = load_task_model(spec)
    torch.manual_seed(7)
    first = load_first_blocks(spec, 2).model
    assert torch.equal(first.score.weight, whole.score.weight)
    torch.manual_seed(8)
    assert not torch.equal(load_first_blocks(spec, 2).model.score.weight, whole.score.weight)


def test_the_cut_config_keeps_per_layer_settings_in_step_and_says_what_it_changed():
    config = make_tiny("qwen2-lm-sliding").config
    cut, changed = first_blocks_config(config, 3)
    assert cut.num_hidden_layers == 3 and cut.layer_types == config.layer_types[:3]
    assert changed == {"layer_types": config.layer_types, "num_hidden_layers": 4}
    assert config.num_hidden_layers == 4 and len(config.layer_types) == 4  # the original is untouched
    gpt2 = make_tiny("gpt2-cls").config  # num_hidden_layers is an alias of n_layer
    assert first_blocks_config(gpt2, 1)[0].n_layer == 1


def test_the_block_count_is_clamped_to_what_can_be_built(tmp_path):
    spec = _saved(tmp_path, "bert-cls")
    assert load_first_blocks(spec, 0).kept == 1  # a model with no block cannot be built
    assert load_first_blocks(spec, 9).kept == 4


def test_a_gguf_file_is_loaded_whole(tmp_path):
    checkpoint = tmp_path / "model.gguf"
    checkpoint.write_bytes(b"GGUF")
    spec = ModelSpec(str(checkpoint), "causal-lm")
    assert not can_load_first_blocks(spec)
    with pytest.raises(ValueError, match="dequantised whole"):
        load_first_blocks(spec, 1)
