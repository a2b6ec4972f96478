"""Scores of the privacy attacks: reconstruction quality and membership-inference power.

Reconstruction (what an adversary recovered of a client's text):

* :func:`token_recovery_rate` — fraction of token *positions* whose id was recovered exactly (position-wise,
  no alignment); the metric of the SplitLLM/BiSR attack evaluations.
* :func:`rouge_l_f1` — ROUGE-L F1 (longest common subsequence, β = 1) between two token sequences. Implemented
  here (no ``rouge-score`` dependency); on words from :func:`text_words` it equals ``rouge-score``'s
  ``rougeL`` F-measure without stemming.
* :func:`token_set_f1` — F1 of the *sets* of distinct tokens (order and repetition ignored).

Membership inference (is an example in the training set):

* :func:`roc_auc` — area under the ROC curve, exact (Mann–Whitney U with average ranks for ties).
* :func:`tpr_at_fpr` — the highest true-positive rate whose false-positive rate is at most the target, over
  all thresholds of "member if score >= threshold".

Scores are oriented so that *higher means "member"*. Everything is plain numpy.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def text_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (``rouge-score``'s default tokenisation, without stemming)."""
    return _WORD.findall(text.lower())


def token_recovery_rate(predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]],
                        ignore: Collection[int] = ()) -> float:
    """Fraction in [0, 1] of positions ``t`` with ``predicted[i][t] == truth[i][t]``, over all examples ``i``.

    Positions whose *true* id is in ``ignore`` (e.g. special tokens such as [CLS]/[SEP] that sit at known
    places) are not counted. Each prediction must have the length of its truth. Returns ``nan`` if no
    position counts.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} examples")
    skip = set(int(i) for i in ignore)
    hits = total = 0
    for pred, true in zip(predicted, truth):
        pred, true = [int(x) for x in pred], [int(x) for x in true]
        if len(pred) != len(true):
            raise ValueError(f"prediction of length {len(pred)} for a sequence of length {len(true)}")
        for p, t in zip(pred, true):
            if t in skip:
                continue
            total += 1
            hits += p == t
    return hits / total if total else float("nan")


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
