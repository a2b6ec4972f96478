"""The learned bottleneck at the cut: what crosses the split is k wide, both maps train, and they travel with the
halves' adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedguard.data.batches import TokenBatch
from fedguard.model.bottleneck import bottleneck_pair
from fedguard.model.lora import trainable_state, unwrapped
from fedguard.model.split import split_model
from fedguard.protocol.messages import ActivationBatch
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.server_half import ServerHalfTrainer
from tests.conftest import make_tiny
from tests.training.lora_halves import lora_halves


def test_the_maps_start_as_an_orthogonal_projection_drawn_from_the_seed():
    down, up = bottleneck_pair(32, 8, seed=5)
    torch.testing.assert_close(down.weight @ down.weight.T, torch.eye(8), atol=1e-5, rtol=0)
    h = torch.randn(4, 32)
    projected = up(down(h))
    torch.testing.assert_close(up(down(projected)), projected, atol=1e-5, rtol=0)  # idempotent: a projection
    again, _ = bottleneck_pair(32, 8, seed=5)
    other, _ = bottleneck_pair(32, 8, seed=6)
    assert torch.equal(again.weight, down.weight) and not torch.equal(other.weight, down.weight)


def test_a_full_width_bottleneck_keeps_the_split_exact(padded_batch):
    ids, mask = padded_batch
    model = make_tiny("bert-cls").eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    client, server = split_model(model, 2, bottleneck_dim=model.config.hidden_size, seed=1)
    assert client.cut_width == model.config.hidden_size
    torch.testing.assert_close(server(client(ids, mask), mask), expected, atol=1e-5, rtol=1e-4)


def test_a_width_beyond_the_hidden_size_is_refused():
    model = make_tiny("bert-cls")
    with pytest.raises(ValueError, match=r"bottleneck-dim=999: must be in 1\.\.32"):
        split_model(model, 1, bottleneck_dim=999)


@pytest.mark.parametrize("split", [0, 2])
def test_the_client_sends_k_numbers_per_token_and_both_maps_train(padded_batch, split):
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = lora_halves(split=split, bottleneck_dim=4)
    assert [k for k in trainable_state(client) if "cut_down" in k]
    assert [k for k in trainable_state(server) if "cut_up" in k]
    before_client, before_server = trainable_state(client), trainable_state(server)
    client_trainer, server_trainer = ClientHalfTrainer(client, 1e-2), ServerHalfTrainer(server, 1e-2)
    batch = TokenBatch(ids, mask, labels)
    hidden = client_trainer.send([batch], [0])[0]
    assert hidden.shape == (3, 7, 4) and client_trainer.hidden_size == 4
    outcome = server_trainer.train_batch(ActivationBatch(hidden, mask, labels))
    client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
    changed = lambda before, half: {k for k, v in trainable_state(half).items() if not torch.equal(v, before[k])}
    assert any("cut_down" in k for k in changed(before_client, client))
    assert any("cut_up" in k for k in changed(before_server, server))


def test_the_bottleneck_gradient_reaching_the_client_is_exact(padded_batch):
    """The client's step equals plain autograd through cut_up ∘ blocks ∘ cut_down (no noise)."""
    ids, mask = padded_batch
    labels = torch.tensor([0, 2, 1])
    client, server = lora_halves(split=1, bottleneck_dim=4)
    params = [p for p in client.parameters() if p.requires_grad]
    loss = F.cross_entropy(server(client(ids, mask), mask), labels)
    expected = torch.autograd.grad(loss, params)
    sent = client(ids, mask).detach().requires_grad_(True)
    grad_hidden = torch.autograd.grad(F.cross_entropy(server(sent, mask), labels), sent)[0]
    got = torch.autograd.grad((client(ids, mask) * grad_hidden).sum(), params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert unwrapped(client).cut_down is not None

