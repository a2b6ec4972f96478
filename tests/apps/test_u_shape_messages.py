"""In the U-shaped split no text, label or logit leaves a client: every message of a real round is inspected.

The real ServerApp and ClientApp run in this process over a loopback Grid (only the transport differs from a
simulation), so every message that would cross the network is recorded.
"""

from __future__ import annotations

import pytest
import torch

from fedguard.protocol import messages as proto
from tests.apps.loopback import run_server as _run
from tests.apps.loopback import tensors_of as _tensors
from tests.apps.tiny_causal_lm import save_tiny_llama


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ushape-lm")
    model = save_tiny_llama(tmp / "tiny-llama")
    return _run(tmp, {"task": "causal-lm", "model": str(model), "split-layer": 1})


def test_causal_lm_defaults_to_the_u_shape_and_trains(causal_run):
    grid, metrics = causal_run
    entry = metrics["rounds"][0]
    assert entry["clients_aggregated"] == 2 and entry["perplexity"] > 1
    assert entry["exchanges"] == 1 + 2 * 2  # per chunk: top hidden down + gradients down; then the final reply
    assert any(proto.TOP_GRADIENTS in m.content.array_records for m in grid.received)


def test_no_token_ids_labels_logits_or_text_leave_a_client(causal_run):
    grid, _ = causal_run
    vocab = 30522
    for message in grid.received:
        for name, tensor in _tensors(message).items():
            assert not name.startswith(f"{proto.ACTIVATIONS}/labels"), name
            assert vocab not in tensor.shape, f"{name} {tuple(tensor.shape)} looks like logits"
            if name.startswith((proto.ACTIVATIONS, proto.TOP_GRADIENTS)) and "/mask." not in name:
                assert tensor.is_floating_point() and tensor.shape[-1] == 32, name  # hidden-sized floats only
            if "/mask." in name:
                assert set(tensor.unique().tolist()) <= {0, 1}, name
        for record in message.content.config_records.values():
            for value in record.values():
                texts = value if isinstance(value, list) else [value]
                assert not any(isinstance(t, str) and len(t) > 40 for t in texts)  # ids and kinds only
        assert not message.content.metric_records.get(proto.METRICS, {}).keys() - {
            proto.NUM_EXAMPLES, "client-seconds", "steps"}


def test_the_server_sends_down_only_hidden_sized_tensors_and_the_adapter(causal_run):
    grid, _ = causal_run
    for message in grid.sent:
        for name, tensor in _tensors(message).items():
            assert name.startswith((proto.ADAPTER, proto.TOP_HIDDEN, proto.GRADIENTS)), name
            if not name.startswith(proto.ADAPTER):
                assert tensor.shape[-1] == 32


def test_half_precision_on_the_wire_halves_the_activation_bytes(tmp_path):
    runs = {dtype: _run(tmp_path / dtype, {"activation-dtype": dtype, "label-protection": "u-shape",
                                           "max-length": 32})
            for dtype in ("float32", "bfloat16")}
    full, half = (runs[d][1]["rounds"][0] for d in ("float32", "bfloat16"))
    assert half["clients_aggregated"] == 2
    # Per-client accounting adds up, and only the hidden-state traffic shrinks (adapters stay float32).
    for entry in (full, half):
        assert sum(c["up"] for c in entry["bytes_by_client"].values()) == entry["bytes_up"]
        assert sum(c["down"] for c in entry["bytes_by_client"].values()) == entry["bytes_down"]
    grid = runs["bfloat16"][0]
    hidden = [t for m in grid.received for n, t in _tensors(m).items() if "/hidden." in n]
    assert hidden and all(t.dtype == torch.int16 for t in hidden)  # bfloat16 bit patterns (numpy has no bf16)
    assert all(m.content.config_records["chunk"]["dtype"] == "bfloat16" for m in grid.received
               if proto.ACTIVATIONS in m.content.array_records)
    assert half["bytes_up"] < 0.75 * full["bytes_up"]


def test_classification_in_the_u_shape_keeps_labels_on_the_client(tmp_path):
    grid, metrics = _run(tmp_path, {"label-protection": "u-shape", "split-layer": 2, "max-length": 32})
    assert metrics["rounds"][0]["clients_aggregated"] == 2
    assert all(not any(n.startswith(f"{proto.ACTIVATIONS}/labels") for n in _tensors(m)) for m in grid.received)
    # The trained head is part of the client adapter the server aggregates.
    adapter = grid.received[-1].content.array_records[proto.ADAPTER].to_torch_state_dict()
    assert any("classifier" in name for name in adapter)
