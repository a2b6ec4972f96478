"""The attack metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedguard.attacks.metrics import (
    roc_auc,
    roc_curve,
    rouge_l_f1,
    text_words,
    token_recovery_rate,
    token_set_f1,
    tpr_at_fpr,
)


def test_token_recovery_counts_exact_tokens_at_their_positions():
    truth = [[1, 2, 3], [4, 5]]
    assert token_recovery_rate([[1, 0, 3], [4, 6]], truth) == pytest.approx(3 / 5)
    # Ignored ids (e.g. [CLS]) are not counted, wherever they are predicted.
    assert token_recovery_rate([[1, 0, 3], [4, 6]], truth, ignore={1}) == pytest.approx(2 / 4)
    # Position matters: the right tokens in the wrong order score zero.
    assert token_recovery_rate([[3, 1, 2]], [[1, 2, 3]]) == 0
    assert math.isnan(token_recovery_rate([[1]], [[1]], ignore={1}))
    with pytest.raises(ValueError):
        token_recovery_rate([[1, 2]], [[1, 2, 3]])


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    candidate = "the cat sat on mat".split()
    reference = "the cat is on the mat".split()
    # LCS = "the cat on mat" (4): P = 4/5, R = 4/6.
    assert rouge_l_f1(candidate, reference) == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert rouge_l_f1(reference, reference) == 1
    assert rouge_l_f1([], reference) == 0 and rouge_l_f1(["dog"], reference) == 0
    # Order matters for ROUGE-L but not for the token-set F1.
    assert rouge_l_f1(["b", "a"], ["a", "b"]) == pytest.approx(0.5)
    assert token_set_f1(["b", "a"], ["a", "b"]) == 1


def test_token_set_f1_ignores_order_and_repetition():
    # {a, b, c} vs {b, c, d, e}: 2 in common, P = 2/3, R = 2/4.
    assert token_set_f1(["a", "b", "c", "c"], ["b", "c", "d", "e"]) == pytest.approx(4 / 7)
    assert token_set_f1([], ["a"]) == 0


def test_text_words_lowercases_and_drops_punctuation():
    assert text_words("It's a GREAT film, 10/10!") == ["it", "s", "a", "great", "film", "10", "10"]


def test_roc_auc_is_the_probability_a_member_outscores_a_non_member():
    # members 0.9, 0.7; non-members 0.8, 0.6: 3 of 4 pairs ordered right.
    assert roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([1.0, 0.0], [1, 0]) == 1 and roc_auc([0.0, 1.0], [1, 0]) == 0
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_tpr_at_fpr_takes_the_best_threshold_within_the_false_positive_budget():
    scores = [0.9, 0.7, 0.65, 0.8, 0.6, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    assert tpr_at_fpr(scores, labels, 0.01) == pytest.approx(1 / 3)  # no false positive allowed: only 0.9
    assert tpr_at_fpr(scores, labels, 1 / 3) == pytest.approx(1.0)  # threshold 0.65 lets in the 0.8 non-member
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_auc_matches_scikit_learn_on_random_scores_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # rounding makes ties
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    assert tpr_at_fpr(scores, labels, 0.05) == pytest.approx(tpr[fpr <= 0.05].max())
