"""Membership inference on the released model: was this example in a client's training data?

Adversary: anyone holding the final model — the base model with the run's merged adapter (``adapter/``:
both halves' LoRA and the trained head) — and able to compute its loss on a candidate example (with its
label, or its response for a causal LM). Two attacks, each a score per example (higher = "member"):

* **loss threshold** (Yeom et al., 2018): score = −ℓ_trained(x); members tend to have lower loss.
* **calibrated** (reference model, Watson et al., 2022 / Carlini et al.'s LiRA in its simplest offline form):
  score = −(ℓ_trained(x) − ℓ_reference(x)), the reference being *the model before fine-tuning*. It removes
  how easy an example is anyway, so what is left is what training did to that example.

Per-example loss (:func:`example_losses`): cross-entropy of the true class (classification), or the mean
cross-entropy over the response tokens (causal LM), in nats.

Reference model: for classification the model before fine-tuning includes the randomly initialised head.
FedGuard's ServerApp seeds torch with the run's ``seed`` and then loads the model, so the head at round 0
is reproduced by :func:`load_reference_model` (seed, then the same loader) — exactly when the run's server
loaded its model in a fresh process (as ``flwr run`` does). A random head makes the reference loss close
to ln(C) for every example, so for classification the calibrated score mostly re-orders by noise; it
matters for a causal LM, whose reference is the pretrained LM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.attacks.metrics import roc_auc, tpr_at_fpr
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch, tokenize
from fedguard.data.instructions import InstructionDataset, tokenize_instructions
from fedguard.data.sources import TextDataset
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from fedguard.training.objectives import example_losses as _example_losses

ADAPTER_DIR = "adapter"


@torch.no_grad()
def example_losses(model: nn.Module, batches: Sequence[TokenBatch]) -> np.ndarray:
    """Per-example loss (nats) of ``model`` (a task model, or a ``PeftModel`` around one) on each batch, in
    order: the class cross-entropy, or the mean response-token cross-entropy (causal LM)."""
    model.eval()
    out = []
    for batch in batches:
        if batch.input_ids.shape[0] == 0:
            continue
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out.append(_example_losses(logits.float(), batch.labels).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def encode_rows(tokenizer: PreTrainedTokenizerBase, data: TextDataset | InstructionDataset, rows: Sequence[int],
                max_length: int, batch_size: int = 64) -> list[TokenBatch]:
    """Rows of ``data`` (texts+labels, or instruction records) tokenized as the run did, in batches, in the
    given order."""
    rows = list(rows)
    encode = tokenize_instructions if isinstance(data, InstructionDataset) else tokenize
    return [encode(tokenizer, data, rows[i:i + batch_size], max_length) for i in range(0, len(rows), batch_size)]


def load_reference_model(config: RunConfig, num_labels: int) -> nn.Module:
    """The joined model before fine-tuning: the base model with its task head as FedGuard's server
    initialised it (torch seeded with the run's ``seed``, then loaded), no adapter."""
    spec = ModelSpec(config.model, config.task, num_labels)
    tokenizer = load_tokenizer(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = load_task_model(spec, tokenizer.pad_token_id)
    return model.eval()


def load_trained_model(run_dir: Path, config: RunConfig, num_labels: int) -> nn.Module:
    """The released joined model: the base model with the run's merged adapter (``run_dir/adapter``: the
    client and server LoRA and, for classification, the trained head)."""
    from peft import PeftModel

    folder = Path(run_dir) / ADAPTER_DIR
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no merged adapter (adapter_config.json); did the run finish?")
    spec = ModelSpec(config.model, config.task, num_labels)
    tokenizer = load_tokenizer(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the head is replaced by the adapter's; seeded only for repeatability
        model = load_task_model(spec, tokenizer.pad_token_id)
    return PeftModel.from_pretrained(model, str(folder)).eval()


def sample_members(trained_rows: set[int], train_size: int, max_examples: int, seed: int,
                   exclude: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """``(members, non_members)``: up to ``max_examples`` rows clients trained on, and as many training-set
    rows no client trained on (same distribution; never one of ``exclude``), each drawn without replacement
    with ``seed``."""
    rng = np.random.default_rng(seed)
    members = sorted(r for r in trained_rows if 0 <= r < train_size)
    taken = np.asarray(sorted(set(members) | set(exclude)), dtype=np.int64)
    outside = np.setdiff1d(np.arange(train_size), taken)
    count = min(len(members), len(outside), max_examples)
    if count < 2:
        raise ValueError(f"need at least 2 members and 2 non-members; have {len(members)} trained rows and "
                         f"{len(outside)} untouched rows of {train_size}")
    picked = rng.choice(np.asarray(members), size=count, replace=False)
    others = rng.choice(outside, size=count, replace=False)
    return sorted(int(r) for r in picked), sorted(int(r) for r in others)


@dataclass(frozen=True)
class AttackScore:
    """One membership attack's power: ROC AUC, TPR at the target FPR, and the AUC's standard error under
    the null (no signal: Hanley–McNeil with AUC = 0.5), with ``z`` = (AUC − 0.5) / that error."""

    auc: float
    tpr_at_fpr: float
    fpr: float
    auc_null_se: float
    z: float

    def to_dict(self) -> dict:
        return asdict(self)


def auc_null_se(members: int, non_members: int) -> float:
    """Standard error of the ROC AUC when scores carry no signal (Mann–Whitney U variance, no ties)."""
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def score_attack(member_scores: Sequence[float], non_member_scores: Sequence[float], fpr: float = 0.01) -> AttackScore:
    """AUC, TPR at ``fpr`` and the null standard error for scores where higher means "member"."""
    scores = np.concatenate([np.asarray(member_scores, float), np.asarray(non_member_scores, float)])
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    auc = roc_auc(scores, labels)
    se = auc_null_se(len(member_scores), len(non_member_scores))
    return AttackScore(auc, tpr_at_fpr(scores, labels, fpr), fpr, se, (auc - 0.5) / se)


def membership_attacks(member_loss: np.ndarray, non_member_loss: np.ndarray,
                       member_reference: np.ndarray | None = None, non_member_reference: np.ndarray | None = None,
                       fpr: float = 0.01) -> dict[str, AttackScore]:
    """Both attacks from per-example losses (nats): ``"loss-threshold"`` (score −ℓ) and, given the reference
    losses, ``"calibrated"`` (score −(ℓ − ℓ_ref))."""
    out = {"loss-threshold": score_attack(-member_loss, -non_member_loss, fpr)}
    if member_reference is not None and non_member_reference is not None:
        out["calibrated"] = score_attack(-(member_loss - member_reference),
                                         -(non_member_loss - non_member_reference), fpr)
    return out
