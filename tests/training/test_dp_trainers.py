"""Whole-model DP-SGD trainers: per-example gradients through the split equal single-example autograd (client
and server), and every private step changes the adapter with fresh noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedguard.data.batches import TokenBatch
from fedguard.training.dp_trainers import DPClientHalfTrainer
from fedguard.model.lora import LoraSettings, attach_lora, load_trainable_state, trainable_state
from fedguard.model.split import family_of, split_model
from tests.conftest import make_tiny
from tests.training.lora_halves import lora_halves


def _halves():
    model = make_tiny("bert-cls")
    for module in model.modules():  # Opacus records activations only in train mode: turn dropout off instead
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    family = family_of(model)
    client, server = split_model(model, 2)
    torch.manual_seed(4)
    settings = LoraSettings(r=4, alpha=8)
    client, server = attach_lora(client, settings, family), attach_lora(server, settings, family)
    with torch.no_grad():
        for p in list(client.parameters()) + list(server.parameters()):
            if p.requires_grad and p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    return client, server


def _assert_per_example(samples, expected, count: int) -> None:
    """``samples[j][i]`` (parameter j, example i) equals example i's own autograd gradient ``expected[i][j]``."""
    assert len(samples) == count
    for j, sample in enumerate(samples):
        for i in range(len(expected)):
            torch.testing.assert_close(sample[i], expected[i][j], rtol=1e-4, atol=1e-7)


def _server_gradient(server, hidden, mask, labels):
    sent = hidden.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(server(sent, mask), labels)  # the server's mean batch loss
    return torch.autograd.grad(loss, sent)[0]


@pytest.mark.parametrize("halves", [_halves, lambda: lora_halves(split=1, bottleneck_dim=4)],
                         ids=["lora", "lora-and-bottleneck"])
def test_per_example_gradients_through_the_split_equal_single_example_autograd(padded_batch, halves):
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = halves()
    params = [p for p in client.parameters() if p.requires_grad]
    # Reference: each example alone, end to end through both halves, plain autograd.
    expected = []
    for i in range(3):
        loss = F.cross_entropy(server(client(ids[i:i + 1], mask[i:i + 1]), mask[i:i + 1]), labels[i:i + 1])
        expected.append(torch.autograd.grad(loss, params))
    trainer = DPClientHalfTrainer(client, 1e-3, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3)
    try:
        batch = TokenBatch(ids, mask, labels)
        hidden = trainer.send([batch], [0])[0]
        samples = trainer.per_example_gradients(batch, 0, _server_gradient(server, hidden, mask, labels))
    finally:
        trainer.close()
    _assert_per_example(samples, expected, len(params))


def _private_step(client, server, ids, mask, labels, **options) -> dict[str, torch.Tensor]:
    """One DP-SGD step of ``client`` through the split on one batch; returns the adapter after it."""
    trainer = DPClientHalfTrainer(client, 1e-2, noise_multiplier=1.0, max_grad_norm=0.5, expected_batch_size=3,
                                  **options)
    try:
        batch = TokenBatch(ids, mask, labels)
        hidden = trainer.send([batch], [0])[0]
        trainer.apply_gradients([batch], [0], [_server_gradient(server, hidden, mask, labels)])
    finally:
        trainer.close()
    return trainable_state(client)


def test_a_private_step_changes_the_adapter_and_is_noisy(padded_batch):
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = _halves()
    before = trainable_state(client)
    results = []
    for _ in range(2):
        load_trainable_state(client, before)
        results.append(_private_step(client, server, ids, mask, labels))
        assert any(not torch.equal(before[k], results[-1][k]) for k in before)
    # Fresh secret noise each time: two private steps from the same start differ.
    assert any(not torch.equal(results[0][k], results[1][k]) for k in before)


def test_an_empty_poisson_batch_is_a_noise_only_step(padded_batch):
    ids, mask = padded_batch
    client, _ = _halves()
    before = trainable_state(client)
    trainer = DPClientHalfTrainer(client, 1e-2, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3)
    try:
        empty = TokenBatch(ids[:0], mask[:0], torch.zeros(0, dtype=torch.long))
        trainer.apply_gradients([empty], [0], [torch.zeros(0, 7, 32)])
    finally:
        trainer.close()
    after = trainable_state(client)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_freezing_lora_a_keeps_every_a_matrix(padded_batch):
    ids, mask = padded_batch
    client, server = _halves()
    before = trainable_state(client)
    after = _private_step(client, server, ids, mask, torch.tensor([0, 2, 1]), freeze_lora_a=True)
    assert all(torch.equal(before[k], after[k]) for k in before if ".lora_A." in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".lora_B." in k)


def test_the_adapter_keeps_its_tensors_while_a_private_ffa_trainer_is_open():
    # The ClientApp builds the trainer, then loads the global adapter (A and B) into the half.
    client, _ = _halves()
    before = trainable_state(client)
    trainer = DPClientHalfTrainer(client, 1e-2, 1.0, 1.0, 3, freeze_lora_a=True)
    try:
        load_trainable_state(client, before)
        assert set(trainable_state(client)) == set(before)
        assert not any(".lora_A." in name for name, p in client.named_parameters()
                       if any(p is q for q in trainer.params))
    finally:
        trainer.close()


# --- whole-model DP-SGD: the server half ------------------------------------------------------------------

def _server_batch(client, ids, mask, labels):
    from fedguard.protocol.messages import ActivationBatch

    with torch.no_grad():
        hidden = client(ids, mask)
    return ActivationBatch(hidden, mask, labels)


def test_server_per_example_gradients_equal_single_example_autograd(padded_batch):
    from fedguard.training.dp_trainers import DPServerHalfTrainer

    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = _halves()
    batch = _server_batch(client, ids, mask, labels)
    params = [p for p in server.parameters() if p.requires_grad]
    expected = []
    for i in range(3):
        loss = F.cross_entropy(server(batch.hidden[i:i + 1], mask[i:i + 1]), labels[i:i + 1])
        expected.append(torch.autograd.grad(loss, params))
    mean_grad = _server_gradient(server, batch.hidden, mask, labels)
    trainer = DPServerHalfTrainer(server, 1e-3, client_clip=1.0, server_clip=1.0)
    try:
        samples, outcome = trainer.per_example_gradients(batch)
    finally:
        trainer.close()
    _assert_per_example(samples, expected, len(params))
    # What goes back to the client is the gradient of the mean batch loss, as without DP.
    torch.testing.assert_close(outcome.grad_hidden, mean_grad, rtol=1e-4, atol=1e-8)


def test_the_server_half_steps_only_on_noised_gradients(padded_batch):
    from fedguard.training.dp_trainers import DPServerHalfTrainer
    from fedguard.protocol.messages import ActivationBatch, DpStep

    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = _halves()
    batch = _server_batch(client, ids, mask, labels)
    before = trainable_state(server)
    results = []
    for _ in range(2):
        load_trainable_state(server, before)
        trainer = DPServerHalfTrainer(server, 1e-2, client_clip=1.0, server_clip=1.0)
        try:
            trainer.train_batch(batch, DpStep(noise_multiplier=1.0, expected_batch_size=3.0))
        finally:
            trainer.close()
        results.append(trainable_state(server))
    assert any(not torch.equal(results[0][k], results[1][k]) for k in before)  # fresh secret noise each step
    # An empty Poisson batch is a noise-only step: the number of server steps does not reveal it.
    load_trainable_state(server, before)
    trainer = DPServerHalfTrainer(server, 1e-2, client_clip=1.0, server_clip=1.0)
    try:
        outcome = trainer.train_batch(ActivationBatch(batch.hidden[:0], mask[:0], labels[:0]), DpStep(1.0, 3.0))
        with pytest.raises(ValueError, match="DP-SGD parameters"):
            trainer.train_batch(batch, None)
    finally:
        trainer.close()
    assert outcome.examples == 0
    assert any(not torch.equal(before[k], v) for k, v in trainable_state(server).items())
