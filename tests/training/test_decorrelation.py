"""The distance-correlation penalty: a correct dCor, per example, and inside the client's (private) step."""

from __future__ import annotations

import torch

from fedguard.data.batches import TokenBatch
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.decorrelation import distance_correlation, example_decorrelation
from fedguard.training.dp_trainers import DPClientHalfTrainer
from tests.training.lora_halves import lora_halves


def test_distance_correlation_is_one_for_a_similarity_and_near_zero_for_independent_sets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 5, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert abs(float(distance_correlation(x, 3.0 * x @ rotation + 1.0)) - 1.0) < 1e-4
    independent = float(distance_correlation(x, torch.randn(1000, 3, generator=g)))
    assert independent < 0.15
    nonlinear = float(distance_correlation(x[:, :1], x[:, :1] ** 2))  # uncorrelated, yet dependent
    assert nonlinear > 0.3


def test_fewer_than_two_rows_give_zero_and_the_penalty_is_per_example():
    assert float(distance_correlation(torch.randn(1, 3), torch.randn(1, 2))) == 0.0
    tokens, sent = torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    per_example = example_decorrelation(tokens, sent, mask)
    torch.testing.assert_close(per_example[1], distance_correlation(tokens[1, :3], sent[1, :3]))


def _step(trainer_class, weight: float, padded_batch, **options):
    ids, mask = padded_batch
    client, _ = lora_halves(split=2)
    trainer = trainer_class(client, 1e-2, decorrelation=weight, **options)
    batch = TokenBatch(ids, mask, torch.tensor([0, 1, 0]))
    try:
        hidden = trainer.send([batch], [0])[0]
        penalty = float(trainer.decorrelation_terms(batch, trainer.forward(batch, 0)).sum().detach())
        trainer.apply_gradients([batch], [0], [torch.zeros_like(hidden)])  # no task gradient: only the penalty
    finally:
        trainer.close()
    return client, penalty


def test_the_penalty_alone_moves_the_client_adapter_and_is_zero_when_off(padded_batch):
    from fedguard.model.lora import trainable_state

    reference, _ = lora_halves(split=2)
    start = trainable_state(reference)
    moved, penalty = _step(ClientHalfTrainer, 1.0, padded_batch)
    assert penalty > 0
    assert any(not torch.equal(v, start[k]) for k, v in trainable_state(moved).items())
    still, penalty = _step(ClientHalfTrainer, 0.0, padded_batch)
    assert penalty == 0.0
    assert all(torch.equal(v, start[k]) for k, v in trainable_state(still).items())


def test_per_example_gradients_include_the_penalty_of_that_example_only(padded_batch):
    ids, mask = padded_batch
    labels = torch.tensor([0, 1, 0])
    client, _ = lora_halves(split=2)
    params = [p for p in client.parameters() if p.requires_grad]
    trainer = DPClientHalfTrainer(client, 1e-2, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3,
                                  decorrelation=0.5)
    try:
        batch = TokenBatch(ids, mask, labels)
        hidden = trainer.send([batch], [0])[0]
        samples = trainer.per_example_gradients(batch, 0, torch.zeros_like(hidden))
    finally:
        trainer.close()
    for i in range(3):
        alone = ClientHalfTrainer(client, 1e-2, decorrelation=0.5)
        one = TokenBatch(ids[i:i + 1], mask[i:i + 1], labels[i:i + 1])
        expected = torch.autograd.grad(alone.decorrelation_terms(one, alone.forward(one, 0)).sum(), params,
                                       allow_unused=True)
        for sample, grad in zip(samples, expected):
            torch.testing.assert_close(sample[i], torch.zeros_like(sample[i]) if grad is None else grad,
                                       rtol=1e-3, atol=1e-6)
