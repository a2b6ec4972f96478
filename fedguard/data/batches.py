"""Turn a client's shard into the batches of one round, deterministically, and tokenize them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedguard.data.sources import TextDataset


@dataclass
class TokenBatch:
    """Token ids and padding mask ``[B, T]`` (padded to the longest text, at most ``max-length``), labels ``[B]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def tokenize(tokenizer: PreTrainedTokenizerBase, data: TextDataset, indices: list[int], max_length: int) -> TokenBatch:
    if not indices:  # an empty Poisson batch
        empty = torch.zeros((0, 1), dtype=torch.long)
        return TokenBatch(empty, empty.clone(), torch.zeros(0, dtype=torch.long))
    encoded = tokenizer(
        [data.text[i] for i in indices], padding="longest", truncation=True, max_length=max_length,
        return_tensors="pt",
    )
    return TokenBatch(encoded["input_ids"], encoded["attention_mask"], torch.tensor([data.label[i] for i in indices]))


def round_batches(
    shard_size: int,
    batch_size: int,
    steps: int,
    seed: int,
    partition_id: int,
    server_round: int,
    lengths: list[int] | None = None,
    group: int = 16,
) -> list[list[int]]:
    """Indices (into the shard) of each of the ``steps`` batches a client trains on in ``server_round``.

    The round's examples are consecutive slices of fresh random permutations of the shard, seeded by
    ``(seed, partition_id, server_round)``, so a client can recompute any batch of the round at any time
    (needed to recompute the forward pass when the server's gradients arrive in a later message).
    With ``lengths`` (e.g. word counts), each run of ``group`` batches is sorted by length before it is cut
    into batches, and those batches are shuffled: the same examples, far less padding (the idea of
    Hugging Face's ``group_by_length``). A shard smaller than ``batch_size`` gives batches of the whole shard.
    """
    if shard_size < 1:
        raise ValueError("the client's shard is empty")
    rng = np.random.default_rng([seed, partition_id, server_round])
    size = min(batch_size, shard_size)
    needed = size * steps
    order = np.concatenate([rng.permutation(shard_size) for _ in range(-(-needed // shard_size))])[:needed]
    batches = [order[j * size:(j + 1) * size].tolist() for j in range(steps)]
    if lengths is None or group <= 1:
        return batches
    grouped: list[list[int]] = []
    for start in range(0, steps, group):
        block = order[start * size:min(steps, start + group) * size]
        block = block[np.argsort([lengths[i] for i in block], kind="stable")]
        cut = [block[j:j + size].tolist() for j in range(0, len(block), size)]
        grouped.extend(cut[k] for k in rng.permutation(len(cut)))
    return grouped
