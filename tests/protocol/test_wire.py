"""Activation compression on the wire: what each encoding keeps, what it costs in bytes, and what is refused."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from fedguard.protocol import messages as proto
from fedguard.protocol.wire import ActivationCodec

HEADER = 200  # bytes Flower adds per serialised array (numpy .npy header)


def _chunk(hidden_size: int = 32) -> proto.ActivationChunk:
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, hidden_size) * torch.linspace(0.1, 4.0, 5).view(1, 5, 1)
    return proto.ActivationChunk([proto.ActivationBatch(hidden, torch.ones(3, 5, dtype=torch.long),
                                                        torch.tensor([0, 1, 0]))], client_seconds=0.1)


def _round_trip(codec: ActivationCodec, hidden_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, int]:
    chunk = _chunk(hidden_size)
    content = proto.encode_activations(chunk, codec)
    decoded = proto.decode_activations(content, hidden_size=hidden_size)
    return chunk.batches[0].hidden, decoded.batches[0].hidden, proto.payload_bytes(content)


def test_int8_keeps_each_feature_within_half_a_quantisation_step_at_about_a_quarter_of_the_bytes():
    sent, got, size = _round_trip(ActivationCodec("int8"))
    _, _, full = _round_trip(ActivationCodec("none"))
    step = sent.abs().amax(dim=-1, keepdim=True) / 127.0
    assert ((got - sent).abs() <= step / 2 + 1e-6).all()
    assert not torch.equal(got, sent)  # it is lossy
    hidden_bytes = 3 * 5 * 32
    # int8 + one float32 scale per token instead of float32 (plus one more array's serialisation header)
    assert size - full == pytest.approx(hidden_bytes * (1 - 4) + 3 * 5 * 4, abs=HEADER)


def test_topk_keeps_exactly_the_largest_features_of_each_token_and_zeroes_the_rest():
    codec = ActivationCodec("topk", topk=0.25)
    sent, got, size = _round_trip(codec)
    k = codec.kept(32)
    assert k == 8
    kept = got != 0
    assert (kept.sum(dim=-1) == k).all()
    assert torch.equal(got[kept], sent[kept])  # float32 values arrive exactly
    threshold = sent.abs().topk(k, dim=-1).values[..., -1:]
    assert torch.equal(kept, sent.abs() >= threshold)
    _, _, full = _round_trip(ActivationCodec("none"))
    assert size - full == pytest.approx((3 * 5 * k * (4 + 2)) - (3 * 5 * 32 * 4), abs=HEADER)  # values + int16 indices


def test_topk_values_travel_in_the_wire_dtype():
    sent, got, _ = _round_trip(ActivationCodec("topk", topk=0.5, dtype=torch.bfloat16))
    kept = got != 0
    assert torch.allclose(got[kept], sent[kept], rtol=1e-2)


def test_roundtrip_is_what_the_server_decodes():
    chunk = _chunk()
    for codec in (ActivationCodec("int8"), ActivationCodec("topk", 0.1), ActivationCodec("none", dtype=torch.float16)):
        content = proto.encode_activations(chunk, codec)
        decoded = proto.decode_activations(content, hidden_size=32).batches[0].hidden
        assert torch.equal(codec.roundtrip(chunk.batches[0].hidden), decoded)


def test_a_zero_token_survives_int8():
    hidden = torch.zeros(1, 2, 4)
    assert torch.equal(ActivationCodec("int8").roundtrip(hidden), hidden)


def _tamper(codec: ActivationCodec, **tensors: torch.Tensor):
    content = proto.encode_activations(_chunk(), codec)
    arrays = dict(content.array_records[proto.ACTIVATIONS].to_torch_state_dict())
    arrays.update(tensors)
    content[proto.ACTIVATIONS] = ArrayRecord(torch_state_dict=arrays)
    return content


@pytest.mark.parametrize("codec,tensors,reason", [
    (ActivationCodec("none"), {"hidden.0": torch.ones(3, 5, 32, dtype=torch.int32)}, "must be floats"),
    (ActivationCodec("int8"), {"hidden.0.scale": torch.ones(3, 4)}, r"hidden.0.scale: needs float \[batch, seq\]"),
    (ActivationCodec("int8"), {"hidden.0": torch.ones(3, 5, 32)}, "int8 compression needs int8"),
    (ActivationCodec("int8"), {"hidden.0.scale": torch.full((3, 5), float("inf"))}, "not finite"),
    (ActivationCodec("topk", 0.25), {"hidden.0.index": torch.full((3, 5, 8), 40, dtype=torch.int16)},
     r"feature index outside \[0, 32\)"),
    (ActivationCodec("topk", 0.25), {"hidden.0.index": torch.zeros(3, 5, 7, dtype=torch.int16)}, "needs int16"),
    (ActivationCodec("topk", 0.25), {"hidden.0": torch.zeros(3, 5, 9)}, r"topk values need float \[batch, seq, 8\]"),
])
def test_malformed_compressed_activations_are_refused_with_a_reason(codec, tensors, reason):
    with pytest.raises(proto.ProtocolError, match=reason):
        proto.decode_activations(_tamper(codec, **tensors), hidden_size=32)


def test_unknown_compression_in_a_chunk_is_refused():
    content = proto.encode_activations(_chunk(), ActivationCodec("none"))
    content.config_records[proto.CHUNK]["compression"] = "zip"
    with pytest.raises(proto.ProtocolError, match="compression 'zip'"):
        proto.decode_activations(content, hidden_size=32)


def test_codec_settings_are_checked():
    with pytest.raises(ValueError, match="allowed none, int8, topk"):
        ActivationCodec("fp8")
    with pytest.raises(ValueError, match=r"activation-topk=0.0: must be in \(0, 1\]"):
        ActivationCodec("topk", topk=0.0)
