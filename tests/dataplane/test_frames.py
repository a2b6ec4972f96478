"""Data-plane frames: a RecordDict round-trips exactly; anything malformed or oversized is refused before
the payload is read or allocated."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedguard.dataplane import frames
from fedguard.protocol import messages as proto

LIMITS = frames.limits_for(max_batch=4, max_length=8, hidden_size=16)


def _reader(data: bytes):
    view = memoryview(data)
    position = [0]
    reads = []

    def read_exact(size: int) -> bytes:
        reads.append(size)
        if position[0] + size > len(view):
            raise ConnectionError("eof")
        chunk = bytes(view[position[0]:position[0] + size])
        position[0] += size
        return chunk

    return read_exact, reads


def test_an_activation_message_round_trips_exactly():
    hidden = torch.randn(3, 5, 16)
    content = proto.encode_activations(proto.ActivationChunk(
        [proto.ActivationBatch(hidden, torch.ones(3, 5, dtype=torch.long), torch.tensor([0, 1, 1]))], 0.25,
        proto.DpStep(0.8, 3.0)))
    content[proto.PRIVACY] = proto.encode_privacy("partition-0", [])
    kind, decoded = frames.read_frame(_reader(frames.encode(frames.MESSAGE, content))[0], LIMITS)
    assert kind == frames.MESSAGE
    chunk = proto.decode_activations(decoded, hidden_size=16)
    assert torch.equal(chunk.batches[0].hidden, hidden) and chunk.batches[0].labels.tolist() == [0, 1, 1]
    assert chunk.client_seconds == 0.25 and chunk.dp == proto.DpStep(0.8, 3.0)
    assert proto.decode_privacy(decoded) == ("partition-0", [])


def _frame(meta: dict, payload: bytes = b"", kind: int = frames.MESSAGE, magic: bytes = frames.MAGIC) -> bytes:
    text = json.dumps(meta).encode()
    return struct.pack("<4sB3xIQ", magic, kind, len(text), len(payload)) + text + payload


@pytest.mark.parametrize("meta,payload,message", [
    ({"config": {}, "metrics": {}, "arrays": [["a", "x", "float32", [5, 8, 16]]]}, b"\0" * (5 * 8 * 16 * 4),
     "dims"),  # batch 5 > max 4... caught as elements or dims
    ({"config": {}, "metrics": {}, "arrays": [["a", "x", "object", [1]]]}, b"\0" * 8, "dtype"),
    ({"config": {}, "metrics": {}, "arrays": [["a", "x", "float32", [1, 2, 3, 4, 5]]]}, b"\0" * 480, "dims"),
    ({"config": {}, "metrics": {}, "arrays": [["a", "x", "float32", [4, 8, 16]]]}, b"\0" * 12, "need"),
    ({"config": {}, "metrics": {}}, b"", "exactly"),
])
def test_malformed_descriptions_are_refused_before_the_payload_is_read(meta, payload, message):
    read_exact, reads = _reader(_frame(meta, payload))
    with pytest.raises(frames.FrameError) as error:
        frames.read_frame(read_exact, frames.FrameLimits(max_dim=16, max_elements=4 * 8 * 16, max_bytes=10**6))
    assert message in str(error.value) or "elements" in str(error.value)
    assert len(reads) == 2  # header and description only: no payload read, nothing allocated for it


def test_an_oversized_payload_is_refused_from_the_header_alone():
    huge = struct.pack("<4sB3xIQ", frames.MAGIC, frames.MESSAGE, 10, LIMITS.max_bytes + 1)
    read_exact, reads = _reader(huge + b"{}" * 5)
    with pytest.raises(frames.FrameError, match="exceeds the cap"):
        frames.read_frame(read_exact, LIMITS)
    assert reads == [frames.HEADER_BYTES]


def test_bad_magic_kind_and_description_size_are_refused():
    for data, message in ((_frame({}, magic=b"PICK"), "magic"), (_frame({}, kind=9), "kind")):
        with pytest.raises(frames.FrameError, match=message):
            frames.read_frame(_reader(data)[0], LIMITS)
    long_meta = struct.pack("<4sB3xIQ", frames.MAGIC, frames.MESSAGE, frames.MAX_META + 1, 0)
    with pytest.raises(frames.FrameError, match="description"):
        frames.read_frame(_reader(long_meta)[0], LIMITS)


def test_records_of_every_kind_survive_and_nothing_is_pickled():
    content = RecordDict({"a": ArrayRecord(torch_state_dict={"i": torch.arange(6, dtype=torch.int16).reshape(2, 3)}),
                          "c": ConfigRecord({"s": "x", "n": 3, "f": 0.5, "b": True, "l": [1, 2]}),
                          "m": MetricRecord({"t": 1.5})})
    data = frames.encode(frames.MESSAGE, content)
    assert b"pickle" not in data and b"\x80\x04" not in data[:64]
    _, decoded = frames.read_frame(_reader(data)[0], LIMITS)
    assert torch.equal(decoded.array_records["a"].to_torch_state_dict()["i"], torch.arange(6, dtype=torch.int16).reshape(2, 3))
    assert dict(decoded.config_records["c"]) == {"s": "x", "n": 3, "f": 0.5, "b": True, "l": [1, 2]}
    assert dict(decoded.metric_records["m"]) == {"t": 1.5}
