"""Task losses, per example: what both halves (and DP-SGD) agree a batch's loss is.

* classification: ``labels`` ``[B]`` class ids, logits ``[B, C]``; ℓ_i = cross-entropy of example i.
* causal LM: ``labels`` ``[B, T]`` token ids aligned with the inputs (not shifted), ``-100`` where no loss is
  taken (prompt, padding); logits ``[B, T, V]``. Position t predicts token t+1; ℓ_i = the mean cross-entropy
  over example i's target tokens (0 if it has none).

The batch loss is always the *mean of the per-example losses*, so the gradient row of example i is
(1/B)·dℓ_i — the property DP-SGD through the split relies on (:mod:`fedguard.mechanisms.dp_sgd`). (For a
causal LM this weights examples equally, not tokens; evaluation reports the token-weighted loss.)

Losses are computed in float32 on the logits' device, whatever the logits' precision (bfloat16 under
``precision = "bf16"``) and wherever the labels are (CPU, as decoded from the wire); for float32 logits
with labels on their device this changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_i for each example, ``[B]``, float32 on the logits' device (see the module docstring for the two
    label layouts)."""
    logits, labels = _aligned(logits, labels)
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels, reduction="none")
    tokens, counts = token_losses(logits, labels)
    return tokens.sum(1) / counts.clamp_min(1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: the cross-entropy of every predicted token ``[B, T-1]`` (0 where ignored) and the number
    of target tokens per example ``[B]``."""
    logits, labels = _aligned(logits, labels)
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted.masked_fill(~mask, 0), reduction="none")
    return losses * mask, mask.sum(1)


def batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean of the per-example losses (a scalar)."""
    return example_losses(logits, labels).mean()


def _aligned(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and labels on the logits' device (the same tensors when they already are)."""
    return logits.float(), labels.to(logits.device)


def correct_predictions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """``(correct, counted)``: classes for classification; next tokens on the target positions for a
    causal LM."""
    labels = labels.to(logits.device)
    if labels.dim() == 1:
        return int((logits.argmax(-1) == labels).sum()), int(labels.numel())
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    return int(((logits[:, :-1].argmax(-1) == shifted) & mask).sum()), int(mask.sum())
