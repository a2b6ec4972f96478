"""Scores of the privacy attacks: reconstruction quality and membership-inference power.

Reconstruction (what an adversary recovered of a client's text):

* :func:`token_recovery_rate` — fraction of token *positions* whose id was recovered exactly (position-wise,
  no alignment); the metric of the SplitLLM/BiSR attack evaluations.
* :func:`rouge_l_f1` — ROUGE-L F1 (longest common subsequence, β = 1) between two token sequences. Implemented
  here (no ``rouge-score`` dependency); on words from :func:`text_words` it equals ``rouge-score``'s
  ``rougeL`` F-measure without stemming.
* :func:`token_set_f1` — F1 of the *sets* of distinct tokens (order and repetition ignored).
* :func:`exact_match_rate` — fraction of examples recovered exactly (every counted position right).
* :func:`sentiment_tokens` — the token ids whose presence in a sentence is strongly associated with its label
  in labelled data (smoothed log-odds, :data:`SENTIMENT_MIN_LOG_ODDS`, :data:`SENTIMENT_MIN_COUNT`); with
  ``token_recovery_rate(..., only=...)`` they give the recovery of the sentiment-bearing words alone.

Membership inference (is an example in the training set):

* :func:`roc_auc` — area under the ROC curve, exact (Mann–Whitney U with average ranks for ties).
* :func:`tpr_at_fpr` — the highest true-positive rate whose false-positive rate is at most the target, over
  all thresholds of "member if score >= threshold".

Scores are oriented so that *higher means "member"*. Everything is plain numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def text_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (``rouge-score``'s default tokenisation, without stemming)."""
    return _WORD.findall(text.lower())


def _pairs(predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> list[tuple[list[int], list[int]]]:
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} examples")
    out = []
    for pred, true in zip(predicted, truth):
        pred, true = [int(x) for x in pred], [int(x) for x in true]
        if len(pred) != len(true):
            raise ValueError(f"prediction of length {len(pred)} for a sequence of length {len(true)}")
        out.append((pred, true))
    return out


def token_recovery_rate(predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]],
                        ignore: Collection[int] = (), only: Collection[int] | None = None) -> float:
    """Fraction in [0, 1] of positions ``t`` with ``predicted[i][t] == truth[i][t]``, over all examples ``i``.

    Positions whose *true* id is in ``ignore`` (e.g. special tokens such as [CLS]/[SEP] that sit at known
    places) are not counted; with ``only``, only positions whose true id is in it are (e.g. the
    sentiment-bearing tokens of :func:`sentiment_tokens`). Each prediction must have the length of its truth.
    Returns ``nan`` if no position counts.
    """
    skip = set(int(i) for i in ignore)
    keep = None if only is None else set(int(i) for i in only)
    hits = total = 0
    for pred, true in _pairs(predicted, truth):
        for p, t in zip(pred, true):
            if t in skip or (keep is not None and t not in keep):
                continue
            total += 1
            hits += p == t
    return hits / total if total else float("nan")


def exact_match_rate(predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]],
                     ignore: Collection[int] = ()) -> float:
    """Fraction in [0, 1] of examples whose every position (except those whose true id is in ``ignore``) was
    recovered exactly: sentence-level exact match. ``nan`` for no example; an example with no counted
    position counts as matched."""
    skip = set(int(i) for i in ignore)
    pairs = _pairs(predicted, truth)
    if not pairs:
        return float("nan")
    return sum(all(p == t for p, t in zip(pred, true) if t not in skip) for pred, true in pairs) / len(pairs)


SENTIMENT_MIN_LOG_ODDS = math.log(4.0)
SENTIMENT_MIN_COUNT = 20
SENTIMENT_SMOOTHING = 1.0


def sentiment_tokens(token_ids: Sequence[Sequence[int]], labels: Sequence[int],
                     min_log_odds: float = SENTIMENT_MIN_LOG_ODDS, min_count: int = SENTIMENT_MIN_COUNT,
                     smoothing: float = SENTIMENT_SMOOTHING, ignore: Collection[int] = ()) -> set[int]:
    """Token ids whose presence in a text is strongly associated with its label, from labelled texts.

    For every class y and token v: ``n_y(v)`` = number of texts of class y that contain v (each text counts
    once), ``S_y`` = number of texts of class y, and the smoothed presence rate ``p_y(v) = (n_y(v) + a) /
    (S_y + 2a)`` (``a`` = ``smoothing``). A token is sentiment-bearing when it occurs in at least
    ``min_count`` texts and, for some class y, ``|log p_y(v) − log p_rest(v)| >= min_log_odds``, where
    ``p_rest`` is the same rate over the texts of all other classes (two classes: the log-odds of the two
    presence rates). Default: at least 4 times more (or less) frequent in one class, in >= 20 texts. Ids in
    ``ignore`` (special tokens) are never included; with fewer than two classes there is nothing to contrast
    and the set is empty.
    """
    labels = np.asarray([int(y) for y in labels], dtype=np.int64)
    if len(labels) != len(token_ids):
        raise ValueError(f"{len(token_ids)} texts for {len(labels)} labels")
    if len(labels) == 0:
        return set()
    classes, klass = np.unique(labels, return_inverse=True)
    if len(classes) < 2:  # no label to contrast with
        return set()
    lengths = np.asarray([len(ids) for ids in token_ids], dtype=np.int64)
    tokens = np.fromiter((int(t) for ids in token_ids for t in ids), dtype=np.int64, count=int(lengths.sum()))
    if len(tokens) == 0:
        return set()
    text = np.repeat(np.arange(len(lengths)), lengths)
    vocab = int(tokens.max()) + 1
    pairs = np.unique(text * vocab + tokens)  # each (text, token) once
    present = np.zeros((len(classes), vocab))
    np.add.at(present, (klass[pairs // vocab], pairs % vocab), 1)
    sizes = np.bincount(klass, minlength=len(classes)).astype(float)[:, None]
    total = present.sum(0)
    a = smoothing
    inside = (present + a) / (sizes + 2 * a)
    rest = (total - present + a) / (sizes.sum() - sizes + 2 * a)
    strong = (np.abs(np.log(inside) - np.log(rest)) >= min_log_odds).any(0) & (total >= min_count)
    return set(int(v) for v in np.flatnonzero(strong)) - set(int(i) for i in ignore)


def _lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: Sequence[object], reference: Sequence[object]) -> float:
    """ROUGE-L F1 in [0, 1]: P = LCS/|candidate|, R = LCS/|reference|, F1 = 2PR/(P+R) (0 if either is empty)."""
    lcs = _lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_set_f1(candidate: Sequence[object], reference: Sequence[object]) -> float:
    """F1 in [0, 1] of the sets of distinct tokens: P = |C∩R|/|C|, R = |C∩R|/|R| (0 if either is empty)."""
    cand, ref = set(candidate), set(reference)
    common = len(cand & ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _check_scores(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of the same length")
    if not y.any() or y.all():
        raise ValueError("need at least one member (label 1) and one non-member (label 0)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC in [0, 1] of ``scores`` (higher = member) for ``labels`` (1 = member, 0 = non-member).

    The probability that a random member scores above a random non-member, ties counting one half
    (0.5 = no better than chance).
    """
    s, y = _check_scores(scores, labels)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_scores = s[order]
    # average ranks (1-based) over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    stops = np.concatenate([boundaries, [len(s)]])
    for start, stop in zip(starts, stops):
        ranks[order[start:stop]] = (start + stop + 1) / 2
    positives, negatives = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` at every distinct threshold of "member if score >= threshold", from (0, 0) to (1, 1)."""
    s, y = _check_scores(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.concatenate([np.flatnonzero(np.diff(s)), [len(s) - 1]])
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.concatenate([[0.0], tps / y.sum()])
    fpr = np.concatenate([[0.0], fps / (~y).sum()])
    return fpr, tpr


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[int], fpr: float = 0.01) -> float:
    """The highest TPR in [0, 1] over thresholds whose FPR is at most ``fpr`` (higher score = member).

    With n non-members the smallest non-zero FPR is 1/n: at ``fpr < 1/n`` this is the TPR with *no* false
    positive at all, so read it together with the number of non-members.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr={fpr}: must be in [0, 1]")
    rates, tprs = roc_curve(scores, labels)
    return float(tprs[rates <= fpr + 1e-12].max())
