"""The U-shaped split (head and loss on the client) trains exactly like the unsplit LoRA model.

The server holds only the middle blocks: it receives hidden states, returns top hidden states, receives
d loss / d top and returns d loss / d hidden. No labels, logits or loss reach it.
"""

from __future__ import annotations

import pytest
import torch

from fedguard.data.batches import TokenBatch
from fedguard.training.dp_trainers import DPClientHalfTrainer
from fedguard.protocol.messages import ActivationBatch
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.objectives import IGNORE, batch_loss, example_losses
from fedguard.training.server_half import MiddleTrainer
from tests.training.lora_halves import lora_halves


def _setup(name: str, split: int = 2):
    return lora_halves(name, split, u_shape=True)


def _labels(name: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if name.endswith("-lm"):
        labels = ids.clone().masked_fill(mask == 0, IGNORE)
        labels[:, :2] = IGNORE  # a "prompt" without loss
        return labels
    return torch.tensor([0, 2, 1])


def _protocol_step(client, server, batch: TokenBatch, lr: float) -> list[torch.Tensor]:
    """One full U-shaped exchange; returns what was sent to the server."""
    client_trainer, middle = ClientHalfTrainer(client, lr), MiddleTrainer(server, lr)
    hidden = client_trainer.send([batch], [0])[0]
    up = ActivationBatch(hidden, batch.attention_mask, None)
    top = middle.forward(up, 9)
    grad_top = client_trainer.top_gradients([batch], [0], [top])[0]
    grad_hidden, param_grads = middle.backward(up, 9, grad_top)
    middle.step(param_grads)
    client_trainer.apply_gradients([batch], [0], [grad_hidden], [top])
    return [hidden, grad_top]


@pytest.mark.parametrize("name", ["bert-cls", "llama-cls", "llama-lm", "gpt2-lm"])
def test_a_u_shaped_protocol_step_equals_an_ordinary_step_of_the_unsplit_model(name, padded_batch):
    ids, mask = padded_batch
    labels = _labels(name, ids, mask)
    client_a, server_a = _setup(name)
    client_b, server_b = _setup(name)
    core_a = client_a.get_base_model()
    params = [p for half in (client_a, server_a) for p in half.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    batch_loss(core_a.head(server_a(client_a(ids, mask), mask), mask), labels).backward()
    optimizer.step()
    sent = _protocol_step(client_b, server_b, TokenBatch(ids, mask, labels), 1e-2)
    # Nothing the server received is a label, a token id or a logit: only [B, T, H] float tensors.
    assert all(t.dtype == torch.float32 and t.shape == (3, 7, 32) for t in sent)
    for (param_name, a), b in zip(
        [(n, p) for half in (client_a, server_a) for n, p in half.named_parameters() if p.requires_grad],
        [p for half in (client_b, server_b) for p in half.parameters() if p.requires_grad],
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=param_name)


def test_the_head_is_trained_on_the_client_and_absent_from_the_server():
    client, server = _setup("llama-cls")
    client_trainable = {n for n, p in client.named_parameters() if p.requires_grad}
    server_trainable = {n for n, p in server.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in client_trainable)
    assert not any("score" in n for n in server_trainable)


@pytest.mark.parametrize("name", ["llama-cls", "llama-lm"])
def test_dp_per_example_gradients_include_the_head_and_match_single_example_autograd(name, padded_batch):
    ids, mask = padded_batch
    labels = _labels(name, ids, mask)
    client, server = _setup(name)
    trainer = DPClientHalfTrainer(client, 1e-3, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3)
    try:
        batch = TokenBatch(ids, mask, labels)
        hidden = trainer.send([batch], [4])[0]
        top = server(hidden, mask).detach()
        grad_top = trainer.top_gradients([batch], [4], [top])[0]
        sent = hidden.clone().requires_grad_(True)
        (grad_hidden,) = torch.autograd.grad(server(sent, mask), sent, grad_outputs=grad_top)
        samples = trainer.per_example_gradients(batch, 4, grad_hidden, top)
        params = trainer.params
        core = client.get_base_model()
        for i in range(3):
            one = slice(i, i + 1)
            loss = example_losses(core.head(server(client(ids[one], mask[one]), mask[one]), mask[one]),
                                  labels[one]).sum()
            expected = torch.autograd.grad(loss, params, allow_unused=True)
            for p, sample, exp in zip(params, samples, expected):
                exp = torch.zeros_like(p) if exp is None else exp
                torch.testing.assert_close(sample[i], exp, rtol=1e-4, atol=1e-6)
    finally:
        trainer.close()


@pytest.mark.parametrize("name", ["bert-cls", "llama-lm"])
def test_dp_middle_per_example_gradients_equal_single_example_autograd(name, padded_batch):
    """Whole-model DP-SGD in the U-shape: the middle blocks' per-example gradients, from the client's
    per-example d loss / d top rows, equal each example's own gradient through the unsplit model."""
    from fedguard.training.dp_trainers import DPMiddleTrainer
    from fedguard.protocol.messages import DpStep

    ids, mask = padded_batch
    labels = _labels(name, ids, mask)
    client, server = _setup(name)
    for half in (client, server):
        for module in half.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    core = client.get_base_model()
    params = [p for p in server.parameters() if p.requires_grad]
    expected = []
    for i in range(3):
        loss = example_losses(core.head(server(client(ids[i:i + 1], mask[i:i + 1]), mask[i:i + 1]), mask[i:i + 1]),
                              labels[i:i + 1]).sum()
        expected.append(torch.autograd.grad(loss, params, allow_unused=True))
    with torch.no_grad():
        hidden = client(ids, mask)
    up = ActivationBatch(hidden, mask, None)
    trainer = DPMiddleTrainer(server, 1e-3, client_clip=1.0, server_clip=1e3)  # no clipping at this bound
    try:
        top = trainer.forward(up, 0)
        grad_top = ClientHalfTrainer(client, 1e-3).top_gradients([TokenBatch(ids, mask, labels)], [0], [top])[0]
        hidden_grad, noised = trainer.backward(up, 0, grad_top, DpStep(noise_multiplier=1e-12, expected_batch_size=3))
    finally:
        trainer.close()
    # noise std 1e-12 * C ~ 1e-9: the private mean is the plain mean of the per-example gradients
    for j, p in enumerate(params):
        mean = sum(e[j] if e[j] is not None else torch.zeros_like(p) for e in expected) / 3
        torch.testing.assert_close(noised[j], mean, rtol=1e-3, atol=1e-6)
    assert hidden_grad.shape == hidden.shape
