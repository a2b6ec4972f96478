"""The split-learning protocol: what crosses the wire, as Flower records, and how it is checked.

One training round for one client is a sequence of exchanges (request → reply):

1. ``train`` (sent by the strategy's ``configure_train``): the global client adapter (``"arrays"``) and the
   strategy's ``"config"``. Reply: the first :class:`ActivationChunk`.
2. ``train.exchange`` (:class:`GradientChunk`, ``final=False``): the gradients of the last chunk's hidden
   states. The client back-propagates them, steps its optimiser, and replies with the next chunk.
3. ``train.exchange`` with ``final=True``: the last gradients. Reply: the client adapter (``"arrays"``) and
   ``"metrics"`` with ``num-examples`` — the shape Flower strategies aggregate.

U-shaped split (``label-protection = "u-shape"``): the server holds only the middle blocks, so each chunk
takes two exchanges. After the client's :class:`ActivationChunk` the server replies with ``train.exchange``
carrying :class:`TopHiddenChunk` (the hidden states after the last block); the client applies its head and
loss and replies with :class:`TopGradientChunk` (d loss / d those hidden states, no labels, logits or loss);
the server back-propagates them through the middle and sends the :class:`GradientChunk` of step 2/3.

A chunk holds ``exchange-batches`` batches. Only hidden states at the split, the 2-D padding mask and the
labels (none in the U-shaped split) travel up; only gradients of those hidden states travel down. No token ids, key/value caches or
model weights beyond the client adapter are ever sent. Every decoder validates what it receives and
raises :class:`ProtocolError` with the reason, so a malformed reply drops that client for the round
instead of crashing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedguard.privacy import InvalidEventError, MechanismEvent
from fedguard.protocol.wire import (
    ActivationCodec,
    WireFormatError,
    decode_hidden,
    dtype_name,
    pack,
    unpack,
)

TRAIN = "train"
EXCHANGE = "train.exchange"

ACTIVATIONS = "activations"
GRADIENTS = "gradients"
TOP_HIDDEN = "top-hidden"  # U-shape: server -> client, hidden states after the last (server) block
TOP_GRADIENTS = "top-gradients"  # U-shape: client -> server, d loss / d top hidden states
CHUNK = "chunk"
TIMING = "timing"
ADAPTER = "arrays"  # Flower strategies' default ArrayRecord key
METRICS = "metrics"  # Flower strategies' default MetricRecord key
NUM_EXAMPLES = "num-examples"  # Flower strategies' default weighting key
NUM_LABELS = "num-labels"  # train config: classes of the task head
FREEZE_LORA_A = "lora-freeze-a"  # train config: True = clients keep every LoRA A as received (FFA-LoRA)
SIMULATION = "simulation"  # train config: True in a simulation (one process: budgets may live in memory)
DATA_PLANE_ADDRESS = "data-plane-address"  # train config (stream transport): HOST:PORT of the ServerApp's data plane
DATA_PLANE_FINGERPRINT = "data-plane-fingerprint"  # train config: SHA-256 of its TLS certificate (pinned)
DATA_PLANE_TICKET = "data-plane-ticket"  # train config: this node's single-use ticket for this round
PRIVACY = "privacy"  # the client's privacy events for this reply, and its stable client id
REFUSAL = "refusal"  # a client declining to train (budget), with its reason


class ProtocolError(ValueError):
    """A message does not follow the protocol; the text says what was wrong."""


@dataclass
class ActivationBatch:
    """One batch as it crosses the split: ``hidden`` [B, T, H] float, ``attention_mask`` [B, T] (1 = token),
    ``labels`` [B] class ids or [B, T] target tokens (causal LM), or ``None`` when labels stay on the client."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None


@dataclass(frozen=True)
class DpStep:
    """Whole-model DP-SGD parameters of a client's batches, so the server noises its half alike:
    ``noise_multiplier`` σ (noise std / whole-gradient clip C) and ``expected_batch_size`` q·n (the
    normaliser of the noised gradient sum; with the shard size n it is public, see the threat model)."""

    noise_multiplier: float
    expected_batch_size: float


@dataclass
class ActivationChunk:
    """The client's upward message: ``batches`` in order, its compute time for this exchange (s), and
    (DP-SGD runs) the :class:`DpStep` parameters of its batches."""

    batches: list[ActivationBatch]
    client_seconds: float
    dp: DpStep | None = None


@dataclass
class TopHiddenChunk:
    """U-shape, server -> client: the hidden states after the server's last block, one per batch, in order."""

    hidden: list[torch.Tensor]


@dataclass
class TopGradientChunk:
    """U-shape, client -> server: d loss / d top hidden states per batch, and the client's compute time (s)."""

    gradients: list[torch.Tensor]
    client_seconds: float


@dataclass
class GradientChunk:
    """The server's downward message: d loss / d hidden for each batch of the last chunk, in order."""

    gradients: list[torch.Tensor]
    final: bool


def payload_bytes(content: RecordDict) -> int:
    """Bytes of tensor payload in a message's content (array data; excludes protocol framing)."""
    return sum(record.count_bytes() for record in content.array_records.values())


def encode_activations(chunk: ActivationChunk, codec: ActivationCodec = ActivationCodec()) -> RecordDict:
    """The client's chunk as a message: hidden states encoded by ``codec`` (wire dtype and compression)."""
    tensors: dict[str, torch.Tensor] = {}
    hidden_size = chunk.batches[0].hidden.shape[-1] if chunk.batches else 0
    for i, batch in enumerate(chunk.batches):
        tensors.update(codec.encode(batch.hidden, f"hidden.{i}"))
        tensors[f"mask.{i}"] = batch.attention_mask.detach().to(torch.int8).contiguous()
        if batch.labels is not None:
            tensors[f"labels.{i}"] = batch.labels.detach().to(torch.int64).contiguous()
    dp = ({} if chunk.dp is None else {"dp-noise-multiplier": float(chunk.dp.noise_multiplier),
                                         "dp-expected-batch-size": float(chunk.dp.expected_batch_size)})
    return RecordDict({
        ACTIVATIONS: ArrayRecord(torch_state_dict=tensors),
        CHUNK: ConfigRecord({"batches": len(chunk.batches), **codec.config(hidden_size), **dp}),
        TIMING: MetricRecord({"client-seconds": float(chunk.client_seconds)}),
    })


def decode_activations(content: RecordDict, hidden_size: int, expect_labels: bool = True) -> ActivationChunk:
    """Parse and check a client's activation chunk (shapes, dtypes, finiteness, label presence)."""
    if ACTIVATIONS not in content.array_records or CHUNK not in content.config_records:
        raise ProtocolError(f"activation reply lacks {ACTIVATIONS!r}/{CHUNK!r} records; "
                            f"has {sorted(content.keys())}")
    count = content.config_records[CHUNK].get("batches")
    if not isinstance(count, int) or count < 1:
        raise ProtocolError(f"activation reply: 'batches'={count!r}, expected an integer >= 1")
    tensors = content.array_records[ACTIVATIONS].to_torch_state_dict()
    batches: list[ActivationBatch] = []
    for i in range(count):
        mask = tensors.get(f"mask.{i}")
        if f"hidden.{i}" not in tensors or mask is None:
            raise ProtocolError(f"activation reply: batch {i} lacks hidden states or mask")
        try:
            hidden = decode_hidden(tensors, f"hidden.{i}", content.config_records[CHUNK], hidden_size)
        except WireFormatError as err:
            raise ProtocolError(f"activation reply: batch {i}: {err}") from err
        if hidden.dim() != 3 or hidden.shape[-1] != hidden_size:
            raise ProtocolError(f"activation reply: batch {i} hidden shape {tuple(hidden.shape)}, "
                                f"expected [batch, seq, {hidden_size}]")
        if not hidden.is_floating_point() or not torch.isfinite(hidden).all():
            raise ProtocolError(f"activation reply: batch {i} hidden states are not finite floats")
        if tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ProtocolError(f"activation reply: batch {i} mask shape {tuple(mask.shape)} does not match "
                                f"hidden {tuple(hidden.shape[:2])}")
        labels = tensors.get(f"labels.{i}")
        if expect_labels:
            if labels is None or tuple(labels.shape) not in ((hidden.shape[0],), tuple(hidden.shape[:2])):
                raise ProtocolError(f"activation reply: batch {i} needs labels of shape [{hidden.shape[0]}] "
                                    f"(classes) or {list(hidden.shape[:2])} (tokens)")
        elif labels is not None:
            raise ProtocolError(f"activation reply: batch {i} carries labels, but labels stay on the client "
                                "in this run (U-shaped split)")
        batches.append(ActivationBatch(hidden.float(), mask.long(), None if labels is None else labels.long()))
    return ActivationChunk(batches, _client_seconds(content), _dp_step(content.config_records[CHUNK]))


def _dp_step(chunk: ConfigRecord) -> DpStep | None:
    """The chunk's DP-SGD parameters (None when it carries none); both must be finite and > 0."""
    sigma, expected = chunk.get("dp-noise-multiplier"), chunk.get("dp-expected-batch-size")
    if sigma is None and expected is None:
        return None
    for name, value in (("dp-noise-multiplier", sigma), ("dp-expected-batch-size", expected)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ProtocolError(f"activation reply: {name}={value!r}, expected a finite number > 0")
    return DpStep(float(sigma), float(expected))


def _client_seconds(content: RecordDict) -> float:
    timing = content.metric_records.get(TIMING)
    seconds = float(timing.get("client-seconds", 0.0)) if timing is not None else 0.0
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0


def _encode_tensor_list(key: str, tensors: list[torch.Tensor], dtype: torch.dtype,
                        **config: int | bool | float) -> RecordDict:
    return RecordDict({
        key: ArrayRecord(torch_state_dict={str(i): pack(t, dtype) for i, t in enumerate(tensors)}),
        CHUNK: ConfigRecord({"batches": len(tensors), "dtype": dtype_name(dtype), **config}),
    })


def _decode_tensor_list(content: RecordDict, key: str, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The ``key`` tensors, checked: one per expected shape, each of that shape, finite floats."""
    if key not in content.array_records or CHUNK not in content.config_records:
        raise ProtocolError(f"message lacks {key!r}/{CHUNK!r} records; has {sorted(content.keys())}")
    tensors = content.array_records[key].to_torch_state_dict()
    if len(tensors) != len(shapes):
        raise ProtocolError(f"{key}: {len(tensors)} tensors, expected {len(shapes)}")
    out = []
    for i, shape in enumerate(shapes):
        tensor = tensors.get(str(i))
        try:
            tensor = None if tensor is None else unpack(tensor, content.config_records[CHUNK].get("dtype"))
        except WireFormatError as err:
            raise ProtocolError(f"{key} {i}: {err}") from err
        if tensor is None or tuple(tensor.shape) != tuple(shape):
            raise ProtocolError(f"{key} {i}: shape {None if tensor is None else tuple(tensor.shape)}, "
                                f"expected {tuple(shape)}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ProtocolError(f"{key} {i}: not finite floats")
        out.append(tensor.float())
    return out


def encode_gradients(chunk: GradientChunk, server_round: int, dtype: torch.dtype = torch.float32) -> RecordDict:
    return _encode_tensor_list(GRADIENTS, chunk.gradients, dtype, final=chunk.final,
                               **{"server-round": server_round})


def decode_gradients(content: RecordDict, shapes: list[tuple[int, ...]]) -> GradientChunk:
    """Parse the server's gradients and check them against the shapes of the hidden states sent."""
    gradients = _decode_tensor_list(content, GRADIENTS, shapes)
    return GradientChunk(gradients, bool(content.config_records[CHUNK].get("final", False)))


def encode_top_hidden(chunk: TopHiddenChunk, server_round: int, dtype: torch.dtype = torch.float32) -> RecordDict:
    return _encode_tensor_list(TOP_HIDDEN, chunk.hidden, dtype, **{"server-round": server_round})


def decode_top_hidden(content: RecordDict, shapes: list[tuple[int, ...]]) -> TopHiddenChunk:
    """U-shape: parse the server's top hidden states, one per batch of the last chunk (its shapes)."""
    return TopHiddenChunk(_decode_tensor_list(content, TOP_HIDDEN, shapes))


def encode_top_gradients(chunk: TopGradientChunk, dtype: torch.dtype = torch.float32) -> RecordDict:
    content = _encode_tensor_list(TOP_GRADIENTS, chunk.gradients, dtype)
    content[TIMING] = MetricRecord({"client-seconds": float(chunk.client_seconds)})
    return content


def decode_top_gradients(content: RecordDict, shapes: list[tuple[int, ...]]) -> TopGradientChunk:
    """U-shape: parse a client's d loss / d top hidden states against the shapes the server sent."""
    return TopGradientChunk(_decode_tensor_list(content, TOP_GRADIENTS, shapes), _client_seconds(content))


def encode_final_reply(adapter: dict[str, torch.Tensor], num_examples: int, metrics: dict[str, float]) -> RecordDict:
    """The round's last reply, in the shape Flower strategies aggregate (``arrays`` + ``metrics``)."""
    return RecordDict({
        ADAPTER: ArrayRecord(torch_state_dict=adapter),
        METRICS: MetricRecord({NUM_EXAMPLES: int(num_examples), **{k: float(v) for k, v in metrics.items()}}),
    })


_EVENT_FIELDS = ("kind", "noise-multiplier", "sample-rate", "steps", "epsilon", "clip-norm", "round", "relation")


def encode_privacy(client_id: str, events: list[MechanismEvent]) -> ConfigRecord:
    """The events a client applied since its last reply, as parallel lists (0.0 stands for 'not set')."""
    return ConfigRecord({
        "client-id": client_id,
        "kind": [e.kind for e in events],
        "noise-multiplier": [float(e.noise_multiplier or 0.0) for e in events],
        "sample-rate": [float(e.sample_rate or 0.0) for e in events],
        "steps": [int(e.steps) for e in events],
        "epsilon": [float(e.epsilon) if e.epsilon is not None else -1.0 for e in events],
        "clip-norm": [float(e.clip_norm or 0.0) for e in events],
        "round": [int(e.round or 0) for e in events],
        "relation": [e.relation for e in events],
    })


def decode_privacy(content: RecordDict) -> tuple[str, list[MechanismEvent]]:
    """``(client id, events)`` from a reply; :class:`ProtocolError` if the record is missing or malformed.

    A reply without its privacy record is never read as 'nothing spent'.
    """
    record = content.config_records.get(PRIVACY)
    if record is None:
        raise ProtocolError("reply carries no privacy record: its spending is unknown")
    client_id = record.get("client-id")
    if not isinstance(client_id, str) or not client_id:
        raise ProtocolError("privacy record has no client-id")
    columns = {}
    for name in _EVENT_FIELDS:
        value = record.get(name, [])
        columns[name] = list(value) if isinstance(value, list) else None
        if columns[name] is None:
            raise ProtocolError(f"privacy record field {name!r} must be a list")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ProtocolError(f"privacy record fields have different lengths {sorted(lengths)}")
    events = []
    for i in range(lengths.pop()):
        epsilon = columns["epsilon"][i]
        pure = epsilon >= 0
        try:
            events.append(MechanismEvent(
                kind=columns["kind"][i],
                noise_multiplier=None if pure else columns["noise-multiplier"][i],
                sample_rate=None if pure else columns["sample-rate"][i],
                steps=columns["steps"][i],
                epsilon=epsilon if pure else None,
                clip_norm=columns["clip-norm"][i] or None,
                round=columns["round"][i],
                relation=columns["relation"][i],
            ))
        except (InvalidEventError, TypeError) as err:
            raise ProtocolError(f"privacy event {i} is malformed: {err}") from err
    return client_id, events


def encode_refusal(client_id: str, reason: str) -> RecordDict:
    """A client's refusal to train this round (e.g. its own budget would be exceeded)."""
    return RecordDict({REFUSAL: ConfigRecord({"client-id": client_id, "reason": reason}),
                       PRIVACY: encode_privacy(client_id, [])})
