"""The attack metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedguard.attacks.metrics import (
    exact_match_rate,
    roc_auc,
    roc_curve,
    rouge_l_f1,
    sentiment_tokens,
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


def test_token_recovery_can_be_restricted_to_a_set_of_true_tokens():
    truth = [[1, 7, 3, 7], [8, 5]]
    predicted = [[1, 7, 0, 0], [8, 5]]
    # Only positions whose TRUE token is 7 or 8 count: 7 (hit), 7 (miss), 8 (hit).
    assert token_recovery_rate(predicted, truth, only={7, 8}) == pytest.approx(2 / 3)
    assert token_recovery_rate(predicted, truth, ignore={8}, only={7, 8}) == pytest.approx(1 / 2)
    assert math.isnan(token_recovery_rate(predicted, truth, only={42}))


def test_exact_match_counts_sentences_recovered_entirely():
    truth = [[101, 4, 5, 102], [101, 6, 102], [101, 7, 8, 102]]
    predicted = [[101, 4, 5, 102], [0, 6, 0], [101, 7, 9, 102]]
    assert exact_match_rate(predicted, truth) == pytest.approx(1 / 3)
    # Special tokens sit at known places and are not counted: the second sentence is then exact too.
    assert exact_match_rate(predicted, truth, ignore={101, 102}) == pytest.approx(2 / 3)
    assert math.isnan(exact_match_rate([], []))


def test_sentiment_tokens_are_those_far_more_frequent_in_one_class():
    # 30 positive texts all hold 10 ("great"), 30 negative ones all hold 20 ("dull"); 30 ("film") is in all;
    # 40 is strongly positive but in only 5 texts (below the minimum count); 50 leans positive 2:1 only.
    texts, labels = [], []
    for i in range(30):
        texts.append([1, 10, 30] + ([40] if i < 5 else []) + ([50] if i < 20 else []))
        labels.append(1)
        texts.append([1, 20, 30] + ([50] if i < 10 else []))
        labels.append(0)
    assert sentiment_tokens(texts, labels) == {10, 20}  # 1 and 30 are in every text: neutral
    assert sentiment_tokens(texts, labels, ignore={10}) == {20}
    assert 40 in sentiment_tokens(texts, labels, min_count=5)
    assert 50 not in sentiment_tokens(texts, labels) and 30 not in sentiment_tokens(texts, labels)
    # Repeating a token inside one text does not make it more sentiment-bearing (presence, not frequency).
    assert sentiment_tokens([t + [30] * 5 if y else t for t, y in zip(texts, labels)], labels) == {10, 20}
    assert sentiment_tokens(texts, [1] * len(texts)) == set()  # one class: nothing to contrast


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


class _Words:
    """A stand-in tokenizer: token id i decodes to the word w<i> (special ids to nothing)."""

    def decode(self, ids, skip_special_tokens=True):  # noqa: ANN001, ANN201
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (101, 102)))


def test_reconstruction_metrics_report_recovery_above_the_prior_and_on_sentiment_words():
    from fedguard.attacks.report import reconstruction_metrics

    truth = [torch.tensor([101, 4, 5, 6, 102]), torch.tensor([101, 7, 102])]
    predicted = [torch.tensor([101, 4, 9, 6, 102]), torch.tensor([101, 7, 102])]
    metrics = reconstruction_metrics(predicted, truth, _Words(), {101, 102}, prior_rate=0.25, sentiment={5, 7})
    assert metrics["content_token_recovery_rate"] == pytest.approx(3 / 4)
    assert metrics["content_token_recovery_above_prior"] == pytest.approx(3 / 4 - 0.25)
    assert metrics["sentiment_token_recovery"] == pytest.approx(1 / 2)  # 5 missed, 7 recovered
    assert metrics["exact_match_rate"] == pytest.approx(1 / 2)
    assert metrics["rouge_l_f1"] == pytest.approx((2 * (2 / 3) * (2 / 3) / (4 / 3) + 1) / 2)
    # Without a prior or a sentiment set those two are left out (existing fields keep their names).
    assert set(reconstruction_metrics(predicted, truth, _Words(), {101, 102})) == {
        "token_recovery_rate", "content_token_recovery_rate", "exact_match_rate", "rouge_l_f1", "token_set_f1"}


def test_the_best_block_takes_each_metric_from_the_attack_that_maximises_it():
    from fedguard.attacks.report import best_over_attacks

    entries = {
        "nn-inversion": {"metrics": {"content_token_recovery_rate": 0.4, "rouge_l_f1": 0.7,
                                     "sentiment_token_recovery": float("nan")}},
        "learned-inversion": {"metrics": {"content_token_recovery_rate": 0.6, "rouge_l_f1": 0.5,
                                          "sentiment_token_recovery": 0.2}},
        "optimisation-inversion": {"metrics": {"content_token_recovery_rate": 0.6, "rouge_l_f1": 0.1}},
    }
    best = best_over_attacks(entries)
    assert best["content_token_recovery_rate"] == {"value": 0.6, "attack": "learned-inversion"}  # first on ties
    assert best["rouge_l_f1"] == {"value": 0.7, "attack": "nn-inversion"}
    assert best["sentiment_token_recovery"] == {"value": 0.2, "attack": "learned-inversion"}  # NaN skipped
    assert "exact_match_rate" not in best
