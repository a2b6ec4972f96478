"""Frames of the split data plane: a Flower ``RecordDict`` as bytes, checked before anything is allocated.

A frame is a 16-byte header, a JSON description of at most :data:`MAX_META` bytes, then the raw little-endian
bytes of each array, in the order the description lists them::

    header  = b"FGD1" | kind (u8) | 3 reserved bytes | meta length (u32) | payload length (u64, 4+4 bytes)
    meta    = {"config": {record: {key: value}}, "metrics": {record: {key: value}},
               "arrays": [[record, key, dtype, [dim, ...]], ...]}

Only numeric dtypes from :data:`DTYPES` travel; nothing is ever unpickled or ``torch.load``-ed. A receiver
checks the header, then the description against its :class:`FrameLimits` (known dtypes, at most 4 dims, each
dim and each array's and the frame's total size within the caps derived from the run config), and only then
reads and allocates the payload. The decoded content is an ordinary ``RecordDict``, so the data plane carries
exactly the messages of the Flower path and the same protocol checks (:mod:`fedguard.protocol.messages`)
validate them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

MAGIC = b"FGD1"
HELLO, MESSAGE, REFUSED = 1, 2, 3  # frame kinds
KINDS = (HELLO, MESSAGE, REFUSED)
_HEADER = struct.Struct("<4sB3xIQ")
HEADER_BYTES = _HEADER.size
MAX_META = 64 * 1024  # bytes of JSON description per frame

DTYPES: dict[str, torch.dtype] = {  # what Flower records hold (bfloat16 travels as int16, see protocol.wire)
    "float32": torch.float32, "float16": torch.float16, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class FrameError(ValueError):
    """A frame is malformed or exceeds the limits; the text says what was wrong (the connection is dropped)."""


@dataclass(frozen=True)
class FrameLimits:
    """What a receiver accepts: ``max_dim`` per dimension, ``max_elements`` per array, ``max_bytes`` of payload
    per frame. Derived from the run config by the sender's counterpart (see :func:`limits_for`)."""

    max_dim: int
    max_elements: int
    max_bytes: int


def limits_for(max_batch: int, max_length: int, hidden_size: int, adapter_elements: int = 0) -> FrameLimits:
    """Limits for one split batch per frame: hidden states ``[max_batch, max_length, hidden_size]`` (and the
    mask, labels, top-k indices beside them) or, with ``adapter_elements``, an adapter."""
    per_array = max(max_batch * max_length * hidden_size, adapter_elements, 1)
    return FrameLimits(max_dim=max(max_batch, max_length, hidden_size, 1), max_elements=per_array,
                       max_bytes=4 * per_array * 3 + 4 * max_batch * max_length * 4 + 65536)


def encode(kind: int, content: RecordDict) -> bytes:
    """``content`` (array, config and metric records) as one frame of ``kind``."""
    meta: dict = {"config": {}, "metrics": {}, "arrays": []}
    chunks: list[bytes] = []
    for name, record in content.array_records.items():
        for key, tensor in record.to_torch_state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            if tensor.dtype not in _NAMES:
                raise FrameError(f"{name}/{key}: dtype {tensor.dtype} cannot travel on the data plane")
            meta["arrays"].append([name, key, _NAMES[tensor.dtype], list(tensor.shape)])
            chunks.append(tensor.numpy().tobytes())
    for name, record in content.config_records.items():
        meta["config"][name] = {k: _json_value(v) for k, v in record.items()}
    for name, record in content.metric_records.items():
        meta["metrics"][name] = dict(record.items())
    text = json.dumps(meta, separators=(",", ":")).encode()
    if len(text) > MAX_META:
        raise FrameError(f"frame description of {len(text)} bytes exceeds {MAX_META}")
    payload = b"".join(chunks)
    return _HEADER.pack(MAGIC, kind, len(text), len(payload)) + text + payload


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        raise FrameError("bytes values do not travel on the data plane")
    return value


def parse_header(header: bytes, limits: FrameLimits) -> tuple[int, int, int]:
    """``(kind, meta length, payload length)`` of a frame header, checked against ``limits``."""
    if len(header) != HEADER_BYTES:
        raise FrameError("truncated frame header")
    magic, kind, meta_length, payload_length = _HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError("not a FedGuard data-plane frame (bad magic)")
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if meta_length > MAX_META:
        raise FrameError(f"frame description of {meta_length} bytes exceeds {MAX_META}")
    if payload_length > limits.max_bytes:
        raise FrameError(f"frame payload of {payload_length} bytes exceeds the cap of {limits.max_bytes}")
    return kind, meta_length, payload_length


def parse_meta(text: bytes, payload_length: int, limits: FrameLimits) -> dict:
    """The frame description, with every array descriptor checked against ``limits`` and the payload length."""
    try:
        meta = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FrameError(f"frame description is not JSON: {err}") from err
    if not isinstance(meta, dict) or set(meta) != {"config", "metrics", "arrays"}:
        raise FrameError("frame description must have exactly 'config', 'metrics' and 'arrays'")
    if not isinstance(meta["arrays"], list) or not all(isinstance(meta[k], dict) for k in ("config", "metrics")):
        raise FrameError("frame description has the wrong types")
    total = 0
    for item in meta["arrays"]:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and isinstance(item[1], str)
                and item[2] in DTYPES and isinstance(item[3], list)):
            raise FrameError(f"bad array descriptor {str(item)[:80]!r}: expected [record, key, dtype, dims] with "
                             f"dtype one of {', '.join(DTYPES)}")
        dims = item[3]
        if len(dims) > 4 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.max_dim
                                    for d in dims):
            raise FrameError(f"array {item[0]}/{item[1]}: dims {dims[:6]} outside the limits (at most 4 dims, "
                             f"each <= {limits.max_dim})")
        elements = math.prod(dims)
        if elements > limits.max_elements:
            raise FrameError(f"array {item[0]}/{item[1]}: {elements} elements exceed the cap of {limits.max_elements}")
        total += elements * DTYPES[item[2]].itemsize
    if total != payload_length:
        raise FrameError(f"frame payload is {payload_length} bytes but its arrays need {total}")
    return meta


def decode(meta: dict, payload: bytes) -> RecordDict:
    """The ``RecordDict`` of a checked description (:func:`parse_meta`) and its payload."""
    arrays: dict[str, dict[str, torch.Tensor]] = {}
    offset = 0
    for name, key, dtype_name, dims in meta["arrays"]:
        dtype = DTYPES[dtype_name]
        size = math.prod(dims) * dtype.itemsize
        chunk = bytearray(payload[offset:offset + size])
        tensor = (torch.frombuffer(chunk, dtype=dtype) if size else torch.empty(0, dtype=dtype)).reshape(dims)
        arrays.setdefault(name, {})[key] = tensor
        offset += size
    content = RecordDict()
    try:
        for name, tensors in arrays.items():
            content[name] = ArrayRecord(torch_state_dict=tensors)
        for name, values in meta["config"].items():
            content[name] = ConfigRecord(values)
        for name, values in meta["metrics"].items():
            content[name] = MetricRecord(values)
    except (TypeError, ValueError) as err:
        raise FrameError(f"frame content is not a valid record: {err}") from err
    return content


def read_frame(read_exact: Callable[[int], bytes], limits: FrameLimits) -> tuple[int, RecordDict]:
    """Read one frame with ``read_exact(n)`` (returns exactly n bytes or raises); checks come before reads."""
    kind, meta_length, payload_length = parse_header(read_exact(HEADER_BYTES), limits)
    meta = parse_meta(read_exact(meta_length), payload_length, limits)
    return kind, decode(meta, read_exact(payload_length) if payload_length else b"")
