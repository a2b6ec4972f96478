"""Split training computes the same gradients as ordinary training of the unsplit LoRA model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedguard.data.batches import TokenBatch, round_batches
from fedguard.protocol.messages import ActivationBatch
from fedguard.training import optimizer_state
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.server_half import ServerHalfTrainer
from tests.training.lora_halves import lora_halves


def _setup(dropout: float = 0.0):
    return lora_halves("bert-cls", 2, dropout)


def test_client_gradients_through_the_split_equal_end_to_end_autograd(padded_batch):
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = _setup()
    params = [p for p in client.parameters() if p.requires_grad]
    # End to end, in one graph.
    loss = F.cross_entropy(server(client(ids, mask), mask), labels)
    expected = torch.autograd.grad(loss, params)
    # Through the protocol: the client sends detached hidden states, the server returns d loss / d hidden,
    # the client recomputes its forward pass and back-propagates that gradient.
    batch = TokenBatch(ids, mask, labels)
    trainer = ClientHalfTrainer(client, learning_rate=1e-3)
    hidden = trainer.send([batch], [11])[0]
    sent = hidden.clone().requires_grad_(True)
    grad_hidden = torch.autograd.grad(F.cross_entropy(server(sent, mask), labels), sent)[0]
    recomputed = trainer.forward(batch, 11)
    got = torch.autograd.grad(recomputed, params, grad_outputs=grad_hidden)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_recomputed_forward_reproduces_the_sent_hidden_states_with_dropout(padded_batch):
    ids, mask = padded_batch
    client, _ = _setup(dropout=0.3)
    trainer = ClientHalfTrainer(client, learning_rate=1e-3)
    batch = TokenBatch(ids, mask, torch.tensor([0, 1, 2]))
    sent = trainer.send([batch], [5])[0]
    assert torch.equal(trainer.forward(batch, 5).detach(), sent)
    assert not torch.equal(trainer.forward(batch, 6).detach(), sent)  # dropout is really on


def test_a_protocol_step_equals_an_ordinary_step_of_the_unsplit_model(padded_batch):
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client_a, server_a = _setup()
    client_b, server_b = _setup()
    # Reference: one AdamW step on the joined model.
    params = [p for half in (client_a, server_a) for p in half.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    F.cross_entropy(server_a(client_a(ids, mask), mask), labels).backward()
    optimizer.step()
    # Split protocol.
    batch = TokenBatch(ids, mask, labels)
    client_trainer, server_trainer = ClientHalfTrainer(client_b, 1e-2), ServerHalfTrainer(server_b, 1e-2)
    hidden = client_trainer.send([batch], [0])[0]
    outcome = server_trainer.train_batch(ActivationBatch(hidden, mask, labels))
    client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
    for (name, a), b in zip(
        [(n, p) for half in (client_a, server_a) for n, p in half.named_parameters() if p.requires_grad],
        [p for half in (client_b, server_b) for p in half.parameters() if p.requires_grad],
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_optimizer_state_survives_a_trip_through_flat_tensors(padded_batch):
    ids, mask = padded_batch
    client, server = _setup()
    trainer = ClientHalfTrainer(client, 1e-2)
    batch = TokenBatch(ids, mask, torch.tensor([0, 1, 2]))
    hidden = trainer.send([batch], [0])[0].requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(server(hidden, mask), batch.labels), hidden)[0]
    trainer.apply_gradients([batch], [0], [grad])
    flat = optimizer_state.flatten(trainer.optimizer)
    other = ClientHalfTrainer(client, 1e-2)
    optimizer_state.restore(other.optimizer, flat)
    for key, tensor in optimizer_state.flatten(other.optimizer).items():
        assert torch.equal(tensor, flat[key])


def test_round_batches_are_reproducible_and_cover_the_shard():
    plan = round_batches(shard_size=50, batch_size=8, steps=6, seed=1, partition_id=2, server_round=3)
    assert plan == round_batches(50, 8, 6, 1, 2, 3)
    assert plan != round_batches(50, 8, 6, 1, 2, 4)
    assert all(len(b) == 8 for b in plan) and len(set(plan[0] + plan[1] + plan[2])) == 24
    assert round_batches(3, 8, 2, 0, 0, 1)[0] in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])
