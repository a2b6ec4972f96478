"""Shared fixtures: tiny randomly initialised models of each supported family (fast, offline)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 97
_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64)

TINY_MODELS = {
    "bert-cls": lambda: BertForSequenceClassification(BertConfig(**_BERT, num_labels=3)),
    "roberta-cls": lambda: RobertaForSequenceClassification(RobertaConfig(**_BERT, num_labels=3, pad_token_id=1)),
    "gpt2-cls": lambda: GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4,
                                                                 num_labels=3, pad_token_id=0, bos_token_id=1,
                                                                 eos_token_id=1)),
    "gpt2-lm": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4,
                                                  bos_token_id=1, eos_token_id=1)),
    "llama-cls": lambda: LlamaForSequenceClassification(LlamaConfig(**_DECODER, num_labels=3, pad_token_id=0)),
    "llama-lm": lambda: LlamaForCausalLM(LlamaConfig(**_DECODER)),
    "qwen2-lm-sliding": lambda: Qwen2ForCausalLM(Qwen2Config(**_DECODER, use_sliding_window=True, sliding_window=3,
                                                             max_window_layers=2)),
}


def make_tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS[name]()


@pytest.fixture
def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [3, 7] (rows of length 7, 5 and 3) and their padding mask."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask
