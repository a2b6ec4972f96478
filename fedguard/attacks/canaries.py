"""Canary memorisation of the released model: exposure of secret canaries (causal LM), label-flip canaries
(classification). The canaries are those the run inserted (:mod:`fedguard.data.canaries`).

Adversary: anyone holding the released model who knows a canary's format and wants its secret.

**Exposure** (Carlini et al., 2019, "The Secret Sharer"). A canary's secret is one code of the candidate set R
(every ``d``-digit code, ``|R| = 10^d``). Each candidate is scored by its loss: the summed negative
log-likelihood (nats) of the code's tokens (one per digit for most tokenizers) given BOS, the prompt and the
fixed response text "<Name>'s secret code is" before it, tokenized as training tokenizes the record. The text
before the code is the same for every candidate; the full stop and EOS after it are left out (Carlini et al.
score the whole sequence; the code's own likelihood is what ranks the candidates). Then

    rank = 1 + #{r in R, r != secret : loss(r) < loss(secret)} + ½ #{... : loss(r) = loss(secret)}
    exposure = log2 |R| − log2 rank          (bits, in [0, log2 |R|])

(:func:`exposure_of`). When |R| ≤ the candidate budget every candidate is scored (``exact``). Otherwise a
uniform sample of the other candidates is scored and the rank estimated as 1 + (|R| − 1) · (fraction of the
sample below the secret, ties half) (``sampled``); when no sampled candidate is below, a skew-normal fitted to
the sampled losses gives that fraction as its CDF at the secret's loss (``extrapolated``, Carlini et al.'s
§4.3 approximation: a model-based estimate, not a measurement).

If the model never saw a canary, its secret is a uniform draw from R independent of the model, so its rank is
uniform on 1..|R| and 2^−exposure = rank/|R| is an exact p-value; n canaries combine by Fisher's method
(:func:`fisher_p_value`). Expected exposure without memorisation: 1/ln 2 ≈ 1.44 bits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.data.batches import tokenize
from fedguard.data.canaries import SecretCanary, code_string, flipped_label
from fedguard.data.instructions import prompt_token_ids
from fedguard.data.sources import TextDataset

METHODS = ("exact", "sampled", "extrapolated")
LEAK_P_VALUE = 1e-3  # Fisher p-value under "no memorisation" below which exposure counts as a leak
LEAK_MARGIN_BITS = 3.0  # ... and the mean trained exposure must exceed the base model's by this much


@dataclass(frozen=True)
class Exposure:
    """One canary's exposure (bits) under one model: its ``rank`` among the |R| = ``space`` candidates
    (exact or estimated, 1 = most likely), ``method`` (one of :data:`METHODS`), the number of other
    candidates actually scored, and the canary's own loss (nats)."""

    exposure: float
    rank: float
    method: str
    space: int
    scored: int
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def exposure_of(loss: float, other_losses: np.ndarray, space: int, exhaustive: bool) -> Exposure:
    """Exposure of a secret with ``loss`` against ``other_losses``: the losses of all other |R| − 1
    candidates (``exhaustive``) or of a uniform sample of them. Ties count half."""
    other_losses = np.asarray(other_losses, dtype=np.float64)
    if space < 2 or len(other_losses) == 0:
        raise ValueError(f"exposure needs |R| >= 2 and at least one other candidate; got |R|={space}, "
                         f"{len(other_losses)} scored")
    below = float(np.sum(other_losses < loss) + 0.5 * np.sum(other_losses == loss))
    if exhaustive:
        if len(other_losses) != space - 1:
            raise ValueError(f"exhaustive exposure needs all |R| - 1 = {space - 1} other candidates, got "
                             f"{len(other_losses)}")
        rank, method = 1.0 + below, "exact"
    elif below > 0:
        rank, method = 1.0 + (space - 1) * below / len(other_losses), "sampled"
    else:
        rank, method = 1.0 + (space - 1) * _skewnorm_cdf(loss, other_losses), "extrapolated"
    return Exposure(math.log2(space) - math.log2(rank), rank, method, space, len(other_losses), float(loss))


def _skewnorm_cdf(loss: float, sample: np.ndarray) -> float:
    """P(a candidate's loss < ``loss``) under a skew-normal fitted to ``sample`` (all above ``loss``)."""
    if np.ptp(sample) == 0:
        return 0.0
    shape, location, scale = stats.skewnorm.fit(sample)
    return float(stats.skewnorm.cdf(loss, shape, location, scale))


def fisher_p_value(exposures: Sequence[float]) -> float:
    """Combined p-value of the canaries' exposures under "no memorisation" (each 2^−exposure uniform):
    Fisher's −2 Σ ln p_i = 2 ln 2 Σ exposure_i ~ χ²(2n)."""
    if not exposures:
        return float("nan")
    return float(stats.chi2.sf(2 * math.log(2) * float(np.sum(exposures)), 2 * len(exposures)))


def candidate_codes(canary: SecretCanary, max_candidates: int, rng: np.random.Generator) -> tuple[list[str], bool]:
    """``(codes, exhaustive)``: every other code of the canary's candidate set when there are at most
    ``max_candidates`` of them, else ``max_candidates`` drawn uniformly without replacement (never the secret)."""
    if max_candidates < 1:
        raise ValueError(f"max_candidates={max_candidates}: must be >= 1")
    digits, secret, space = len(canary.code), int(canary.code), canary.space_size
    if space - 1 <= max_candidates:
        return [code_string(i, digits) for i in range(space) if i != secret], True
    drawn = rng.choice(space - 1, size=max_candidates, replace=False)
    return [code_string(int(i) + (i >= secret), digits) for i in drawn], False


def code_tokens(tokenizer: PreTrainedTokenizerBase, canary: SecretCanary, codes: Sequence[str]) -> list[tuple[int, ...]]:
    """The tokens of each code in the canary's response as training tokenizes it: those after the fixed text
    and before the final full stop. ``ValueError`` when the tokenizer merges the code with its neighbours (the
    split between fixed text, code and full stop must be the same for every code)."""
    fixed = list(tokenizer(canary.fixed_text, add_special_tokens=False)["input_ids"])
    stated = tokenizer([canary.stated(code) for code in codes], add_special_tokens=False)["input_ids"]
    whole = tokenizer([canary.response(code) for code in codes], add_special_tokens=False)["input_ids"]
    out = []
    for code, head, ids in zip(codes, stated, whole):
        if list(head[:len(fixed)]) != fixed or list(ids[:len(head)]) != list(head) or len(head) == len(fixed):
            raise ValueError(f"the tokenizer merges the code {code!r} with the text around it in "
                             f"{canary.response(code)!r}; exposure needs the code's own tokens")
        out.append(tuple(head[len(fixed):]))
    return out


@torch.no_grad()
def secret_losses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, canary: SecretCanary,
                  codes: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Loss (nats) of each code as the canary's secret under a causal LM (or a ``PeftModel`` around one): the
    summed negative log-likelihood of the code's tokens (:func:`code_tokens`) given BOS, the prompt and the
    fixed text before the code, as training tokenizes them.

    The shared context is run once and its key/value cache reused. Codes that differ only in their last token
    share everything before it, so each distinct code-without-its-last-token is run once and its last
    position's distribution scores all its completions: for all 10^d codes of d one-token digits that is
    10^(d−1) sequences of d − 1 tokens instead of 10^d of d.
    """
    model.eval()
    sequences = code_tokens(tokenizer, canary, codes)
    fixed = list(tokenizer(canary.fixed_text, add_special_tokens=False)["input_ids"])
    out = model(input_ids=torch.tensor([prompt_token_ids(tokenizer, canary.prompt) + fixed]), use_cache=True)
    cache, first = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)
    groups: dict[tuple[int, ...], list[int]] = {}  # code without its last token -> indices of those codes
    for index, seq in enumerate(sequences):
        groups.setdefault(seq[:-1], []).append(index)
    losses = np.zeros(len(sequences))
    for index in groups.pop((), []):  # one-token codes: the context alone predicts them
        losses[index] = -float(first[sequences[index][0]])
    paths = list(groups)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        lengths = torch.tensor([len(path) for path in chunk])
        width = int(lengths.max())
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        for row, path in enumerate(chunk):
            ids[row, :len(path)] = torch.tensor(path)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(chunk))
        # Right padding needs no attention mask: causal attention never looks at the later padding.
        logits = model(input_ids=ids, past_key_values=batch_cache, use_cache=True).logits.float()
        log_probs_of = lambda position, tokens: (  # noqa: E731 - [B] log p(tokens[b]) at position[b]
            logits[torch.arange(len(chunk)), position].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            - logits[torch.arange(len(chunk)), position].logsumexp(-1))
        path_log_prob = first[ids[:, 0]]
        for j in range(1, width):  # token j of each path, predicted at position j - 1
            inside = lengths > j
            path_log_prob = path_log_prob + torch.where(inside, log_probs_of(torch.full_like(lengths, j - 1), ids[:, j]), 0.0)
        last = logits[torch.arange(len(chunk)), lengths - 1].log_softmax(-1)  # [B, V]: predicts the last token
        for row, path in enumerate(chunk):
            members = groups[path]
            final = torch.tensor([sequences[i][-1] for i in members])
            losses[members] = -(float(path_log_prob[row]) + last[row, final].double().numpy())
    return losses


def canary_exposure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, canary: SecretCanary,
                    codes: Sequence[str], exhaustive: bool, batch_size: int = 256) -> Exposure:
    """The canary's exposure under ``model`` against the candidate ``codes`` (from :func:`candidate_codes`)."""
    losses = secret_losses(model, tokenizer, canary, [canary.code, *codes], batch_size)
    return exposure_of(float(losses[0]), losses[1:], canary.space_size, exhaustive)


def exposure_verdict(trained: Sequence[float], reference: Sequence[float], bits: float) -> str:
    """``LEAKY`` when the canaries' Fisher p-value under the trained model is below :data:`LEAK_P_VALUE` and
    their mean exposure exceeds the base model's by at least :data:`LEAK_MARGIN_BITS`."""
    mean, base, p = float(np.mean(trained)), float(np.mean(reference)), fisher_p_value(trained)
    summary = (f"mean exposure {mean:.2f} bits of log2|R| = {bits:.2f} (max {max(trained):.2f}) vs {base:.2f} "
               f"under the base model; p = {p:.2g} under no memorisation, {len(trained)} canaries")
    if p < LEAK_P_VALUE and mean - base >= LEAK_MARGIN_BITS:
        return f"canary exposure: LEAKY: the released model ranks the inserted secrets far above chance: {summary}"
    return f"canary exposure: no memorisation detected: {summary}"


# --------------------------------------------------------------------------------------------------------------
# Classification: label-flip canaries
# --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def label_flip_margins(model: nn.Module, tokenizer: PreTrainedTokenizerBase, dev: TextDataset, rows: Sequence[int],
                       num_labels: int, max_length: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """For dev ``rows`` (true labels): ``(predicts_flipped, margin)`` — whether the model's top class is the
    flipped label, and log p(flipped) − log p(true) (nats)."""
    model.eval()
    rows = list(rows)
    hits, margins = [], []
    for start in range(0, len(rows), batch_size):
        batch = tokenize(tokenizer, dev, rows[start:start + batch_size], max_length)
        log_probs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float().log_softmax(-1)
        flipped = torch.tensor([flipped_label(int(label), num_labels) for label in batch.labels])
        picked = lambda labels: log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # noqa: E731
        hits.append((log_probs.argmax(-1) == flipped).numpy())
        margins.append((picked(flipped) - picked(batch.labels)).numpy())
    return np.concatenate(hits), np.concatenate(margins)
