"""The server's side of split training, and evaluation of the joined model.

Devices (:mod:`fedguard.model.device`): a trainer runs on the device of its half's parameters; it takes the
clients' batches on any device (CPU, as decoded from the wire) and returns what is sent back (gradients of
the hidden states, top hidden states) as float32 CPU tensors. Parameter gradients it hands to its own
:meth:`MiddleTrainer.step` stay on the device. ``precision = "bf16"`` autocasts the forward passes; the
adapter, the head, their gradients, the optimiser state and the loss stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedguard.data.batches import TokenBatch
from fedguard.model.device import autocast, batch_to, check_precision, fork_rng, module_device, to_wire
from fedguard.protocol.messages import ActivationBatch, DpStep
from fedguard.training.objectives import batch_loss, correct_predictions, token_losses


@dataclass
class BatchOutcome:
    """The server's result for one batch: the gradient to send back (float32, CPU) and the batch's training
    loss."""

    grad_hidden: torch.Tensor
    loss: float
    examples: int


class ServerHalfTrainer:
    """Runs the (LoRA-wrapped) server half; updates its adapter and head after every batch it receives.

    Computes on the device of ``half``'s parameters (:attr:`device`) in ``precision`` (``fp32`` | ``bf16``).
    """

    def __init__(self, half: nn.Module, learning_rate: float, *, precision: str = "fp32") -> None:
        self.half = half
        self.device = module_device(half)
        self.precision = check_precision(precision)
        self.params = [p for p in half.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)

    def close(self) -> None:
        """Release resources (hooks of a DP subclass); the half stays usable."""

    def train_batch(self, batch: ActivationBatch, step: DpStep | None = None) -> BatchOutcome:
        """Forward the client's hidden states, compute the loss, step, and return d loss / d hidden.
        ``step`` (DP-SGD parameters) is used by the private subclass only."""
        if batch.labels is None:
            raise ValueError("the server's head needs the batch's labels (or use the U-shaped split)")
        if batch.hidden.shape[0] == 0:  # an empty Poisson batch: nothing to learn, nothing to return
            return BatchOutcome(to_wire(torch.zeros_like(batch.hidden)), float("nan"), 0)
        self.half.train()
        batch = batch_to(batch, self.device)
        hidden = batch.hidden.detach().float().requires_grad_(True)
        with autocast(self.device, self.precision):
            logits = self.half(hidden, batch.attention_mask)
        loss = batch_loss(logits, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return BatchOutcome(to_wire(hidden.grad), float(loss.detach()), int(batch.labels.shape[0]))


class MiddleTrainer:
    """U-shaped split: the server holds only the middle blocks and never sees labels, logits or the loss.

    Per chunk: :meth:`forward` the client's hidden states (no graph kept; dropout seeded), send the top hidden
    states; when the client's d loss / d top arrive, :meth:`backward` recomputes the forward with the same
    seed and returns d loss / d hidden (for the client) and the parameter gradients. The caller applies the
    parameter gradients with :meth:`step` only after every client of the exchange was back-propagated, so all
    recomputations see the weights their forward saw (exact, as in the non-U split).

    Computes on the device of ``half``'s parameters (:attr:`device`) in ``precision`` (``fp32`` | ``bf16``).
    """

    def __init__(self, half: nn.Module, learning_rate: float, *, precision: str = "fp32") -> None:
        self.half = half
        self.device = module_device(half)
        self.precision = check_precision(precision)
        self.params = [p for p in half.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0) if self.params else None

    def _run(self, batch: ActivationBatch, seed: int, hidden: torch.Tensor) -> torch.Tensor:
        """The middle's output (float32, on :attr:`device`) for ``hidden``, with dropout seeded by ``seed``;
        ``batch`` must already be on the device."""
        self.half.train()
        with fork_rng(self.device), autocast(self.device, self.precision):
            torch.manual_seed(seed)
            top = self.half(hidden, batch.attention_mask)
        return top.float()

    def forward(self, batch: ActivationBatch, seed: int) -> torch.Tensor:
        """Hidden states after the last block ``[B, T, H]``, float32 on CPU, to send (an empty batch gives an
        empty tensor)."""
        if batch.hidden.shape[0] == 0:
            return to_wire(torch.zeros_like(batch.hidden))
        batch = batch_to(batch, self.device)
        with torch.no_grad():
            return to_wire(self._run(batch, seed, batch.hidden.float()))

    def close(self) -> None:
        """Release resources (hooks of a DP subclass); the half stays usable."""

    def backward(self, batch: ActivationBatch, seed: int, grad_top: torch.Tensor,
                 step: DpStep | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """``(d loss / d hidden, parameter gradients)`` for the client's ``grad_top`` = d loss / d top: the
        first float32 on CPU (it is sent), the second on :attr:`device` (for :meth:`step`).
        ``step`` (DP-SGD parameters) is used by the private subclass only."""
        if batch.hidden.shape[0] == 0:
            return to_wire(torch.zeros_like(batch.hidden)), [None] * len(self.params)
        batch = batch_to(batch, self.device)
        hidden = batch.hidden.detach().float().requires_grad_(True)
        top = self._run(batch, seed, hidden)
        grads = torch.autograd.grad(top, [hidden, *self.params], grad_outputs=grad_top.to(self.device, torch.float32),
                                    allow_unused=True)
        return to_wire(grads[0]), [None if g is None else g.detach() for g in grads[1:]]

    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One optimiser step with these parameter gradients."""
        if self.optimizer is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(self.params, grads):
            param.grad = None if grad is None else grad.to(param.device)
        self.optimizer.step()


@dataclass
class Evaluation:
    """Held-out metrics. ``accuracy``: class accuracy, or next-token accuracy on target tokens (causal LM);
    ``loss``: mean cross-entropy per example (classification) or per target token (causal LM);
    ``perplexity``: exp(loss) for a causal LM, else None; ``examples``: examples evaluated."""

    accuracy: float
    loss: float
    examples: int
    perplexity: float | None = None


@torch.no_grad()
def evaluate_joined(
    logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Sequence[TokenBatch],
) -> Evaluation:
    """Metrics of the joined model ``logits_of(input_ids, attention_mask)`` (dropout must be off) over
    ``batches`` (labels ``[B]`` for classification, ``[B, T]`` for a causal LM). ``logits_of`` may compute
    on any device and in any float precision (e.g. :meth:`SplitRuntime.logits`); the metrics are taken in
    float32 on the logits' device."""
    correct = counted = examples = 0
    total_loss = 0.0
    causal = False
    for batch in batches:
        logits = logits_of(batch.input_ids, batch.attention_mask).float()
        labels = batch.labels.to(logits.device)
        hits, n = correct_predictions(logits, labels)
        correct, counted, examples = correct + hits, counted + n, examples + int(labels.shape[0])
        if labels.dim() == 1:
            total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        else:
            causal = True
            tokens, _ = token_losses(logits, labels)
            total_loss += float(tokens.sum())
    loss = total_loss / max(1, counted)
    return Evaluation(correct / max(1, counted), loss, examples, math.exp(min(loss, 700.0)) if causal else None)
