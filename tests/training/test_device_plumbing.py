"""Trainers compute on their half's device and hand CPU float32 tensors to the wire; bf16 keeps every
parameter, gradient and optimiser moment in float32.

Each placement test runs on the CPU here and, on a machine with a GPU, on CUDA too (the same checks).
"""

from __future__ import annotations

import pytest
import torch

from fedguard.runtime import place
from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.activations import ActivationPrivacy
from fedguard.mechanisms.dp_sgd import private_mean_gradient
from fedguard.training.dp_trainers import DPClientHalfTrainer, DPMiddleTrainer, DPServerHalfTrainer
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.model.device import secret_generator
from fedguard.protocol.messages import ActivationBatch, DpStep
from fedguard.training.client_half import ClientHalfTrainer
from fedguard.training.server_half import MiddleTrainer, ServerHalfTrainer, evaluate_joined
from tests.training.lora_halves import lora_halves

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _halves(device: str, name: str = "bert-cls", split: int = 2, u_shape: bool = False, dropout: float = 0.0):
    client, server = lora_halves(name, split, dropout=dropout, u_shape=u_shape)
    place(torch.device(device), client, server)
    return client, server


def _batch(padded_batch, labels: torch.Tensor) -> TokenBatch:
    ids, mask = padded_batch
    return TokenBatch(ids, mask, labels)  # on the CPU, as a client tokenizes and the wire decodes


def _on_cpu(tensor: torch.Tensor) -> None:
    assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, (tensor.device, tensor.dtype)


def _kept_on(device: str, trainer, module: torch.nn.Module) -> None:
    """The trainer's device, every trainable parameter and every optimiser moment are on ``device``, fp32."""
    assert trainer.device.type == device
    for name, param in module.named_parameters():
        assert param.device.type == device, name
        if param.requires_grad:
            assert param.dtype == torch.float32, name
    optimizer = getattr(trainer.optimizer, "original_optimizer", trainer.optimizer)
    moments = [value for state in optimizer.state.values() for key, value in state.items() if key != "step"]
    assert moments, "the optimiser has stepped"
    for moment in moments:
        assert moment.device.type == device and moment.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_a_split_step_returns_wire_tensors_on_the_cpu_and_keeps_the_rest_on_the_device(device, padded_batch):
    client, server = _halves(device)
    batch = _batch(padded_batch, torch.tensor([0, 2, 1]))
    client_trainer, server_trainer = ClientHalfTrainer(client, 1e-2), ServerHalfTrainer(server, 1e-2)
    hidden = client_trainer.send([batch], [0])[0]
    _on_cpu(hidden)
    outcome = server_trainer.train_batch(ActivationBatch(hidden, batch.attention_mask, batch.labels))
    _on_cpu(outcome.grad_hidden)
    client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
    _kept_on(device, client_trainer, client)
    _kept_on(device, server_trainer, server)


@pytest.mark.parametrize("device", DEVICES)
def test_a_u_shaped_step_returns_wire_tensors_on_the_cpu(device, padded_batch):
    client, middle_half = _halves(device, "llama-lm", u_shape=True)
    ids, mask = padded_batch
    batch = TokenBatch(ids, mask, ids.masked_fill(mask == 0, -100))
    client_trainer, middle = ClientHalfTrainer(client, 1e-2), MiddleTrainer(middle_half, 1e-2)
    hidden = client_trainer.send([batch], [3])[0]
    up = ActivationBatch(hidden, mask, None)
    top = middle.forward(up, 5)
    _on_cpu(top)
    grad_top = client_trainer.top_gradients([batch], [3], [top])[0]
    _on_cpu(grad_top)
    grad_hidden, param_grads = middle.backward(up, 5, grad_top)
    _on_cpu(grad_hidden)
    assert all(g is None or g.device.type == device for g in param_grads)
    middle.step(param_grads)
    client_trainer.apply_gradients([batch], [3], [grad_hidden], [top])
    _kept_on(device, client_trainer, client)
    _kept_on(device, middle, middle_half)


@pytest.mark.parametrize("device", DEVICES)
def test_recomputation_on_the_device_reproduces_the_sent_hidden_states_with_dropout(device, padded_batch):
    client, _ = _halves(device, dropout=0.3)
    trainer = ClientHalfTrainer(client, 1e-3)
    batch = _batch(padded_batch, torch.tensor([0, 1, 2]))
    sent = trainer.send([batch], [5])[0]
    assert torch.equal(trainer.forward(batch, 5).detach().cpu(), sent)
    assert not torch.equal(trainer.forward(batch, 6).detach().cpu(), sent)  # dropout is really on


@pytest.mark.parametrize("device", DEVICES)
def test_private_trainers_return_wire_tensors_on_the_cpu_and_noise_on_the_device(device, padded_batch):
    client, server = _halves(device)
    batch = _batch(padded_batch, torch.tensor([0, 2, 1]))
    step = DpStep(noise_multiplier=1.0, expected_batch_size=3.0)
    client_trainer = DPClientHalfTrainer(client, 1e-2, 1.0, 1.0, 3.0,
                                         activation=ActivationPrivacy(clip_norm=5.0, noise_multiplier=0.1))
    server_trainer = DPServerHalfTrainer(server, 1e-2, client_clip=1.0, server_clip=1.0)
    try:
        assert client_trainer._noise.device.type == server_trainer._noise.device.type == device
        assert client_trainer.optimizer.generator.device.type == device
        hidden = client_trainer.send([batch], [0])[0]
        _on_cpu(hidden)
        outcome = server_trainer.train_batch(ActivationBatch(hidden, batch.attention_mask, batch.labels), step)
        _on_cpu(outcome.grad_hidden)
        client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
        _kept_on(device, client_trainer, client)
        _kept_on(device, server_trainer, server)
    finally:
        client_trainer.close()
        server_trainer.close()


@pytest.mark.parametrize("device", DEVICES)
def test_the_private_middle_returns_the_gradient_to_send_on_the_cpu(device, padded_batch):
    client, middle_half = _halves(device, "llama-lm", u_shape=True)
    ids, mask = padded_batch
    middle = DPMiddleTrainer(middle_half, 1e-2, client_clip=1.0, server_clip=1.0)
    try:
        up = ActivationBatch(ClientHalfTrainer(client, 1e-2).send([TokenBatch(ids, mask, ids)], [0])[0], mask, None)
        grad_hidden, grads = middle.backward(up, 1, torch.ones_like(up.hidden), DpStep(1.0, 3.0))
        _on_cpu(grad_hidden)
        assert all(g.device.type == device and g.dtype == torch.float32 for g in grads)
        empty = ActivationBatch(torch.zeros(0, 7, up.hidden.shape[-1]), mask[:0], None)
        grad_empty, noise_only = middle.backward(empty, 1, empty.hidden, DpStep(1.0, 3.0))
        _on_cpu(grad_empty)
        assert all(g.device.type == device for g in noise_only)
    finally:
        middle.close()


@pytest.mark.parametrize("device", DEVICES)
def test_private_mean_gradient_is_computed_on_the_samples_device(device):
    samples = [torch.randn(3, 4, 2, device=device), torch.randn(3, 5, device=device)]
    out = private_mean_gradient(samples, 1.0, 0.5, 3.0, secret_generator(torch.device(device)))
    assert [tuple(g.shape) for g in out] == [(4, 2), (5,)]
    assert all(g.device.type == device and g.dtype == torch.float32 for g in out)


def test_noise_drawn_with_a_generator_on_another_device_is_refused():
    like = torch.zeros(1, 2, 3, device="meta")
    mask = torch.ones(1, 2, dtype=torch.long)
    for mechanism in (ActivationPrivacy(1.0, 0.5), EmbeddingDChi(eta=1.0, token_clip=1.0, max_tokens=2)):
        with pytest.raises(ValueError, match="generator is on cpu but the hidden states are on meta"):
            mechanism.noise(like, mask, torch.Generator())
    with pytest.raises(ValueError, match="create it on the gradients' device"):
        private_mean_gradient([torch.zeros(2, 3, device="meta")], 1.0, 1.0, 2.0, torch.Generator())


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_noise_is_sent_from_the_cpu_for_a_split_at_the_embeddings(device, padded_batch):
    client, _ = _halves(device, split=0)
    trainer = ClientHalfTrainer(client, 1e-3, activation=EmbeddingDChi(eta=2.0, token_clip=1.0, max_tokens=7))
    batch = _batch(padded_batch, torch.tensor([0, 1, 2]))
    sent = trainer.send([batch], [0])[0]
    _on_cpu(sent)
    assert not torch.equal(sent, trainer.forward(batch, 0).detach().cpu())  # noise was added


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_takes_cpu_batches_and_device_logits(device, padded_batch):
    client, server = _halves(device)
    target = torch.device(device)

    def logits_of(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, mask = ids.to(target), mask.to(target)
        return server(client(ids, mask), mask)

    client.eval(), server.eval()
    evaluation = evaluate_joined(logits_of, [_batch(padded_batch, torch.tensor([0, 1, 2]))])
    assert evaluation.examples == 3 and 0.0 <= evaluation.accuracy <= 1.0


# -- bf16 ------------------------------------------------------------------------------------------------------

def test_bf16_computes_the_forward_in_bfloat16_but_keeps_adapters_and_optimiser_state_in_fp32(padded_batch):
    batch = _batch(padded_batch, torch.tensor([0, 2, 1]))
    client, server = _halves("cpu")
    fp32_hidden = ClientHalfTrainer(client, 1e-2).send([batch], [0])[0]
    client_trainer = ClientHalfTrainer(client, 1e-2, precision="bf16")
    server_trainer = ServerHalfTrainer(server, 1e-2, precision="bf16")
    hidden = client_trainer.send([batch], [0])[0]
    _on_cpu(hidden)
    assert not torch.equal(hidden, fp32_hidden)  # autocast really ran
    torch.testing.assert_close(hidden, fp32_hidden, rtol=0.05, atol=0.1)
    outcome = server_trainer.train_batch(ActivationBatch(hidden, batch.attention_mask, batch.labels))
    _on_cpu(outcome.grad_hidden)
    client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
    _kept_on("cpu", client_trainer, client)
    _kept_on("cpu", server_trainer, server)


def test_bf16_private_steps_keep_per_example_gradients_and_noise_in_fp32(padded_batch):
    batch = _batch(padded_batch, torch.tensor([0, 2, 1]))
    client, server = _halves("cpu")
    client_trainer = DPClientHalfTrainer(client, 1e-2, 1.0, 1.0, 3.0, precision="bf16")
    server_trainer = DPServerHalfTrainer(server, 1e-2, client_clip=1.0, server_clip=1.0, precision="bf16")
    try:
        hidden = client_trainer.send([batch], [0])[0]
        samples, outcome = server_trainer.per_example_gradients(
            ActivationBatch(hidden, batch.attention_mask, batch.labels))
        assert all(s.dtype == torch.float32 for s in samples)
        client_samples = client_trainer.per_example_gradients(batch, 0, outcome.grad_hidden)
        assert client_samples and all(s.dtype == torch.float32 and s.shape[0] == 3 for s in client_samples)
        server_trainer.train_batch(ActivationBatch(hidden, batch.attention_mask, batch.labels), DpStep(1.0, 3.0))
        client_trainer.apply_gradients([batch], [0], [outcome.grad_hidden])
        _kept_on("cpu", client_trainer, client)
        _kept_on("cpu", server_trainer, server)
    finally:
        client_trainer.close()
        server_trainer.close()


def test_an_unknown_precision_is_refused_by_every_trainer():
    client, server = _halves("cpu")
    for build in (lambda: ClientHalfTrainer(client, 1e-3, precision="fp16"),
                  lambda: ServerHalfTrainer(server, 1e-3, precision="fp16"),
                  lambda: MiddleTrainer(server, 1e-3, precision="fp16")):
        with pytest.raises(ValueError, match="precision='fp16': allowed fp32, bf16"):
            build()
