"""Membership inference: a model overfit on a few examples gives them away; a model that never saw them does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedguard.attacks.membership import auc_null_se, example_losses, membership_attacks, sample_members
from fedguard.data.batches import TokenBatch
from tests.conftest import VOCAB, make_tiny


def _examples(count: int, seed: int) -> TokenBatch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (count, 10), generator=generator)
    return TokenBatch(ids, torch.ones_like(ids), torch.randint(0, 3, (count,), generator=generator))


@pytest.fixture(scope="module")
def models():
    """(reference, overfit): the same tiny classifier before and after 80 full-batch steps on the members."""
    reference = make_tiny("bert-cls").eval()
    model = make_tiny("bert-cls")
    members = _examples(32, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(model(input_ids=members.input_ids).logits, members.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return reference, model.eval()


def test_per_example_loss_is_the_class_cross_entropy(models):
    reference, _ = models
    batch = _examples(5, seed=3)
    losses = example_losses(reference, [batch])
    with torch.no_grad():
        logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none").numpy()
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_an_overfit_model_reveals_its_training_examples(models):
    reference, model = models
    members, non_members = _examples(32, seed=1), _examples(64, seed=2)
    scores = membership_attacks(example_losses(model, [members]), example_losses(model, [non_members]),
                                example_losses(reference, [members]), example_losses(reference, [non_members]))
    assert scores["loss-threshold"].auc > 0.85 and scores["loss-threshold"].z > 3
    assert scores["calibrated"].auc > 0.85
    assert scores["loss-threshold"].tpr_at_fpr > 0.1


def test_a_model_that_never_saw_the_examples_is_at_chance(models):
    reference, _ = models
    members, non_members = _examples(32, seed=1), _examples(64, seed=2)
    score = membership_attacks(example_losses(reference, [members]), example_losses(reference, [non_members]))
    assert abs(score["loss-threshold"].auc - 0.5) < 3 * auc_null_se(32, 64)
    assert "calibrated" not in score


def test_non_members_are_untouched_rows_in_equal_number_and_reproducible():
    trained = {3, 5, 8, 13, 21, 34}
    members, others = sample_members(trained, 50, max_examples=4, seed=1)
    assert len(members) == len(others) == 4
    assert set(members) <= trained and not set(others) & trained and all(0 <= r < 50 for r in others)
    assert (members, others) == sample_members(trained, 50, max_examples=4, seed=1)
    members, others = sample_members(trained, 50, max_examples=100, seed=1)
    assert set(members) == trained and len(others) == len(trained)
    with pytest.raises(ValueError):
        sample_members({1}, 50, 10, 0)
