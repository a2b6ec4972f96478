"""Greedy generation with the joined causal LM, for reading what a run has learned."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.data.instructions import end_of_response_id, prompt_token_ids


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int = 48) -> list[str]:
    """The greedy continuation of each prompt (decoded, special tokens dropped), one prompt at a time.

    ``model`` is the whole causal LM; in FedGuard the split halves are views over it, so with both halves'
    adapters loaded it generates with the jointly trained model. Prompts are encoded exactly as in training.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = torch.tensor([prompt_token_ids(tokenizer, prompt)], device=next(model.parameters()).device)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=end_of_response_id(tokenizer))
            out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return out
