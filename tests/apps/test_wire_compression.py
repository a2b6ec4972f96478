"""Compressed activations in a real round: what travels, what the server decodes, and that training goes on.

The real ServerApp and ClientApps run in this process over a loopback grid, so every message is inspected.
"""

from __future__ import annotations

import pytest
import torch

from fedguard.protocol import messages as proto
from tests.apps.loopback import run_server, tensors_of


def _activation_messages(grid):
    return [m for m in grid.received if proto.ACTIVATIONS in m.content.array_records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wire")
    base = {"split-layer": 1, "max-length": 32}
    return {name: run_server(tmp / name, {**base, **extra}) for name, extra in {
        "none": {},
        "int8": {"activation-compression": "int8"},
        "topk": {"activation-compression": "topk", "activation-topk": 0.25},
    }.items()}


def test_int8_sends_int8_hidden_states_with_one_scale_per_token(runs):
    grid, metrics = runs["int8"]
    assert metrics["rounds"][0]["clients_aggregated"] == 2
    for message in _activation_messages(grid):
        assert message.content.config_records[proto.CHUNK]["compression"] == "int8"
        tensors = tensors_of(message)
        hidden = [t for n, t in tensors.items() if n.split("/")[1].startswith("hidden.") and n.count(".") == 1]
        assert hidden and all(t.dtype == torch.int8 for t in hidden)
        assert all(f"{n}.scale" in tensors for n in tensors if n.count(".") == 1 and "/hidden." in n)


def test_topk_sends_a_quarter_of_the_features_with_their_indices(runs):
    grid, metrics = runs["topk"]
    assert metrics["rounds"][0]["clients_aggregated"] == 2
    for message in _activation_messages(grid):
        assert message.content.config_records[proto.CHUNK]["topk-k"] == 96  # 0.25 x MiniLM hidden size 384
        for name, tensor in tensors_of(message).items():
            if "/hidden." in name:
                assert tensor.shape[-1] == 96
                assert tensor.dtype == (torch.int16 if name.endswith(".index") else torch.float32)


def test_compression_shrinks_the_upward_bytes_and_the_round_still_trains(runs):
    up = {name: metrics["rounds"][0]["bytes_up"] for name, (_, metrics) in runs.items()}
    activations = {name: sum(proto.payload_bytes(m.content) for m in _activation_messages(grid))
                   for name, (grid, _) in runs.items()}
    assert activations["int8"] < 0.35 * activations["none"]
    assert activations["topk"] < 0.5 * activations["none"]  # 96 of 384 features, 6 bytes each instead of 4
    assert up["int8"] < up["none"] and up["topk"] < up["none"]
    for _, metrics in runs.values():
        assert torch.isfinite(torch.tensor(metrics["rounds"][0]["loss"]))
