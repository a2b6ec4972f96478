"""SAP's contributing-token allocation for d_χ: less noise on the tokens that carry the task.

Split-and-Privatize (arXiv 2312.15603) spends more of the budget on task-relevant ("contributing") tokens. Here
a token is *important* when its smoothed label log-odds in **public** labelled text (the run's held-out split,
never a client's shard) has magnitude at least ``threshold`` with at least ``min_count`` occurrences; with
``dchi-importance`` β > 0 its d_χ noise is scaled by 1/(1+β), i.e. it is noised with η·(1+β) instead of η (the
d_χ length distribution Gamma(H, 1/η) scaled by 1/(1+β) is exactly Gamma(H, 1/(η(1+β)))).

**No guarantee.** With a noise scale that depends on the token, the output densities of two tokens differ by
a factor exp((η' − η)‖y‖ + …) that grows without bound in ‖y‖: no pure d_χ or ε bound holds, so a run with
this allocation reports ``epsilon_activation = null``. It is judged by attacks only — and the allocation puts
the least noise on exactly the sentiment words (measure with the attack's sentiment-word recovery).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def important_tokens(texts: Sequence[str], labels: Sequence[int], tokenizer: PreTrainedTokenizerBase,
                     threshold: float = 1.0, min_count: int = 5) -> set[int]:
    """Token ids whose add-one-smoothed log-odds between the two most frequent labels is at least
    ``threshold`` in magnitude, among tokens seen ``min_count`` times or more (special tokens excluded)."""
    classes = [label for label, _ in Counter(labels).most_common(2)]
    if len(classes) < 2:
        return set()
    counts = {c: Counter() for c in classes}
    for text, label in zip(texts, labels):
        if label in counts:
            counts[label].update(tokenizer(text, add_special_tokens=False)["input_ids"])
    a, b = (counts[c] for c in classes)
    total_a, total_b = sum(a.values()), sum(b.values())
    vocabulary = set(a) | set(b)
    special = set(tokenizer.all_special_ids)
    out = set()
    for token in vocabulary - special:
        if a[token] + b[token] < min_count:
            continue
        odds = math.log((a[token] + 1) / (total_a + len(vocabulary))) - math.log((b[token] + 1) / (total_b + len(vocabulary)))
        if abs(odds) >= threshold:
            out.add(int(token))
    return out


def noise_scales(important: set[int], vocab_size: int, boost: float) -> torch.Tensor:
    """``[V]`` multiplier of each token's noise: 1/(1+``boost``) for the important tokens, 1 elsewhere."""
    if boost < 0:
        raise ValueError(f"dchi-importance={boost}: must be >= 0")
    scales = torch.ones(vocab_size)
    if important:
        scales[torch.tensor(sorted(important), dtype=torch.long)] = 1.0 / (1.0 + boost)
    return scales
