"""The server's side of split training, and evaluation of the joined model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.data.batches import tokenize
from fedguard.data.sources import TextDataset
from fedguard.protocol.messages import ActivationBatch


@dataclass
class BatchOutcome:
    """The server's result for one batch: the gradient to send back and the batch's training loss."""

    grad_hidden: torch.Tensor
    loss: float
    examples: int


class ServerHalfTrainer:
    """Runs the (LoRA-wrapped) server half; updates its adapter and head after every batch it receives."""

    def __init__(self, half: nn.Module, learning_rate: float) -> None:
        self.half = half
        self.params = [p for p in half.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)

    def train_batch(self, batch: ActivationBatch) -> BatchOutcome:
        """Forward the client's hidden states, compute the loss, step, and return d loss / d hidden."""
        if batch.labels is None:
            raise ValueError("classification on the server needs the batch's labels")
        if batch.hidden.shape[0] == 0:  # an empty Poisson batch: nothing to learn, nothing to return
            return BatchOutcome(torch.zeros_like(batch.hidden), float("nan"), 0)
        self.half.train()
        hidden = batch.hidden.detach().requires_grad_(True)
        logits = self.half(hidden, batch.attention_mask)
        loss = F.cross_entropy(logits, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return BatchOutcome(hidden.grad.detach(), float(loss.detach()), int(batch.labels.shape[0]))


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    examples: int


@torch.no_grad()
def evaluate_joined(
    client_half: nn.Module,
    server_half: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextDataset,
    max_length: int,
    batch_size: int = 128,
) -> Evaluation:
    """Accuracy and mean cross-entropy of ``server_half(client_half(x))`` on ``data`` (dropout off)."""
    client_half.eval()
    server_half.eval()
    correct, total_loss = 0, 0.0
    by_length = sorted(range(len(data)), key=lambda i: len(data.text[i]))  # less padding; same result
    for start in range(0, len(data), batch_size):
        indices = by_length[start:start + batch_size]
        batch = tokenize(tokenizer, data, indices, max_length)
        logits = server_half(client_half(batch.input_ids, batch.attention_mask), batch.attention_mask)
        total_loss += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
        correct += int((logits.argmax(-1) == batch.labels).sum())
    n = len(data)
    return Evaluation(correct / n, total_loss / n, n)
