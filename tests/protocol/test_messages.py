"""What crosses the wire round-trips exactly, and anything malformed is refused with a reason."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedguard.protocol import messages as proto


def _chunk(batches: int = 2) -> proto.ActivationChunk:
    torch.manual_seed(0)
    return proto.ActivationChunk(
        [proto.ActivationBatch(torch.randn(4, 6, 8), torch.ones(4, 6, dtype=torch.long), torch.tensor([0, 1, 1, 0]))
         for _ in range(batches)],
        client_seconds=0.25,
    )


def test_activation_chunk_round_trip_is_exact():
    chunk = _chunk()
    decoded = proto.decode_activations(proto.encode_activations(chunk), hidden_size=8)
    assert decoded.client_seconds == 0.25
    for sent, got in zip(chunk.batches, decoded.batches):
        assert torch.equal(sent.hidden, got.hidden)
        assert torch.equal(sent.attention_mask, got.attention_mask)
        assert torch.equal(sent.labels, got.labels)


def test_only_hidden_states_masks_and_labels_travel_up():
    content = proto.encode_activations(_chunk(1))
    assert set(content.array_records[proto.ACTIVATIONS]) == {"hidden.0", "mask.0", "labels.0"}
    assert proto.payload_bytes(content) >= 4 * 6 * 8 * 4


def test_gradient_round_trip_and_final_flag():
    grads = [torch.randn(4, 6, 8), torch.randn(4, 5, 8)]
    content = proto.encode_gradients(proto.GradientChunk(grads, final=True), server_round=3)
    decoded = proto.decode_gradients(content, [(4, 6, 8), (4, 5, 8)])
    assert decoded.final and all(torch.equal(a, b) for a, b in zip(grads, decoded.gradients))


def _with(content: RecordDict, **tensors: torch.Tensor) -> RecordDict:
    arrays = dict(content.array_records[proto.ACTIVATIONS].to_torch_state_dict())
    arrays.update(tensors)
    content[proto.ACTIVATIONS] = ArrayRecord(torch_state_dict=arrays)
    return content


@pytest.mark.parametrize("mutate,reason", [
    (lambda c: _with(c, **{"hidden.0": torch.randn(4, 6, 7)}), r"expected \[batch, seq, 8\]"),
    (lambda c: _with(c, **{"hidden.0": torch.full((4, 6, 8), float("nan"))}), "not finite"),
    (lambda c: _with(c, **{"mask.0": torch.ones(4, 5, dtype=torch.int8)}), "mask shape"),
    (lambda c: _with(c, **{"labels.0": torch.tensor([1])}), "needs labels"),
    (lambda c: c.__setitem__(proto.CHUNK, ConfigRecord({"batches": 3})) or c, "batch 2 lacks"),
    (lambda c: c.__delitem__(proto.ACTIVATIONS) or c, "lacks 'activations'"),
])
def test_malformed_activation_replies_are_refused_with_a_reason(mutate, reason):
    content = mutate(proto.encode_activations(_chunk(2)))
    with pytest.raises(proto.ProtocolError, match=reason):
        proto.decode_activations(content, hidden_size=8)


def test_gradients_of_the_wrong_shape_are_refused():
    content = proto.encode_gradients(proto.GradientChunk([torch.zeros(4, 6, 8)], final=False), 1)
    with pytest.raises(proto.ProtocolError, match=r"expected \(4, 7, 8\)"):
        proto.decode_gradients(content, [(4, 7, 8)])
