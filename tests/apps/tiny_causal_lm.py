"""A tiny randomly initialised Llama causal LM saved as a model folder, with the packaged MiniLM tokenizer.

Offline and fast: what the causal-LM path needs to run end to end in tests (the real small model is the
optional GGUF SmolLM2; see docs/causal-lm.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedguard.model.loading import ModelSpec, load_tokenizer


def save_tiny_llama(folder: Path, layers: int = 4) -> Path:
    """Write the model and tokenizer to ``folder`` (loadable with ``model = str(folder)``)."""
    tokenizer = load_tokenizer(ModelSpec("", "classification"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
