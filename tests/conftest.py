"""Shared fixtures: tiny randomly initialised models of many architectures (fast, offline).

Every tiny model has 4 blocks, hidden width 32 and a 97-token vocabulary; the classification models use
pad id 0 (what ``padded_batch`` pads with).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers as tf

# The models are tiny: more than one intra-op thread only adds spin-waiting on a shared machine (tests/model
# took ~18x longer with two threads under load than with one).
torch.set_num_threads(1)

VOCAB = 97
_WIDTH = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
_BERT = _WIDTH
_DECODER = dict(_WIDTH, num_key_value_heads=2)
_CLS = dict(num_labels=3, pad_token_id=0)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)


def _gpt2(**extra: object) -> tf.GPT2Config:
    return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, bos_token_id=1, eos_token_id=1, **extra)


def _opt(**extra: object) -> tf.OPTConfig:
    # word_embed_proj_dim != hidden_size: the embeddings are projected in and the top projected out (opt-350m)
    return tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64,
                        word_embed_proj_dim=16, max_position_embeddings=64, **_IDS, **extra)


def _neox(**extra: object) -> tf.GPTNeoXConfig:
    return tf.GPTNeoXConfig(**_WIDTH, max_position_embeddings=64, **_IDS, **extra)


def _falcon(**extra: object) -> tf.FalconConfig:
    return tf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           **_IDS, **extra)


def _phi3(**extra: object) -> tf.Phi3Config:
    return tf.Phi3Config(**_DECODER, max_position_embeddings=64, original_max_position_embeddings=64, **_IDS,
                         **extra)


def _gemma(**extra: object) -> tf.GemmaConfig:
    return tf.GemmaConfig(**_DECODER, head_dim=8, **_IDS, **extra)


def _mistral(**extra: object) -> tf.MistralConfig:
    return tf.MistralConfig(**_DECODER, sliding_window=3, **_IDS, **extra)


def _deberta(**extra: object) -> tf.DebertaV2Config:
    # deberta-v3 style: relative attention with a shared, layer-normed position table in the encoder
    return tf.DebertaV2Config(**_BERT, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                              max_relative_positions=-1, norm_rel_ebd="layer_norm", position_biased_input=False,
                              share_att_key=True, type_vocab_size=0, **extra)


TINY_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    # encoders
    "bert-cls": lambda: tf.BertForSequenceClassification(tf.BertConfig(**_BERT, num_labels=3)),
    "roberta-cls": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**_BERT, num_labels=3,
                                                                                pad_token_id=1)),
    "xlm-roberta-cls": lambda: tf.XLMRobertaForSequenceClassification(
        tf.XLMRobertaConfig(**_BERT, num_labels=3, pad_token_id=1)),
    "distilbert-cls": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=64, **_CLS)),
    "deberta-v2-cls": lambda: tf.DebertaV2ForSequenceClassification(_deberta(**_CLS)),
    # embedding_size != hidden_size: embeddings_project sits between the embeddings and block 0
    "electra-cls": lambda: tf.ElectraForSequenceClassification(tf.ElectraConfig(**_BERT, embedding_size=16,
                                                                                **_CLS)),
    # decoders
    "gpt2-cls": lambda: tf.GPT2ForSequenceClassification(_gpt2(num_labels=3, pad_token_id=0)),
    "gpt2-lm": lambda: tf.GPT2LMHeadModel(_gpt2()),
    "opt-cls": lambda: tf.OPTForSequenceClassification(_opt(num_labels=3)),
    "opt-lm": lambda: tf.OPTForCausalLM(_opt()),
    "gpt-neox-cls": lambda: tf.GPTNeoXForSequenceClassification(_neox(num_labels=3)),
    "gpt-neox-lm": lambda: tf.GPTNeoXForCausalLM(_neox()),
    "falcon-cls": lambda: tf.FalconForSequenceClassification(_falcon(num_labels=3)),
    "falcon-lm": lambda: tf.FalconForCausalLM(_falcon()),
    "phi3-cls": lambda: tf.Phi3ForSequenceClassification(_phi3(num_labels=3)),
    "phi3-lm": lambda: tf.Phi3ForCausalLM(_phi3()),
    "gemma-cls": lambda: tf.GemmaForSequenceClassification(_gemma(num_labels=3)),
    "gemma-lm": lambda: tf.GemmaForCausalLM(_gemma()),
    "llama-cls": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**_DECODER, num_labels=3, pad_token_id=0)),
    "llama-lm": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_DECODER)),
    "qwen2-cls": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**_DECODER, **_IDS, num_labels=3)),
    "qwen2-lm-sliding": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**_DECODER, use_sliding_window=True,
                                                                   sliding_window=3, max_window_layers=2)),
    "mistral-cls": lambda: tf.MistralForSequenceClassification(_mistral(num_labels=3)),
    "mistral-lm": lambda: tf.MistralForCausalLM(_mistral()),
}

# Architectures that cannot be split, with the reason the error must name.
UNSPLITTABLE: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {
    "albert-cls": (lambda: tf.AlbertForSequenceClassification(tf.AlbertConfig(**_BERT, embedding_size=16, **_CLS)),
                   r"albert: AlbertModel has no ModuleList with one block per layer"
                   r".*albert_layer_groups \(length 1\)"),
    "deberta-v2-conv-cls": (lambda: tf.DebertaV2ForSequenceClassification(_deberta(conv_kernel_size=3, **_CLS)),
                            r"deberta-v2: encoder\.conv runs between the blocks"),
    "t5-cls": (lambda: tf.T5ForSequenceClassification(tf.T5Config(vocab_size=VOCAB, d_model=16, d_ff=32, num_layers=1,
                                                                  num_heads=2, d_kv=8, num_decoder_layers=1)),
               r"t5: encoder-decoder models cannot be split"),
    "bart-cls": (lambda: tf.BartForSequenceClassification(
        tf.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_labels=3)),
                 r"bart: encoder-decoder models cannot be split"),
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
