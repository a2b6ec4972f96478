"""Test kit for strategy authors: fake client replies and a one-round driver, no federation needed.

Typical use (see docs/writing-a-strategy.md)::

    from fedguard.testing import run_one_round, tiny_bert_adapter
    result = run_one_round(MyStrategy(RunConfig(), {}), tiny_bert_adapter())
    assert result.arrays is not None

* :func:`tiny_bert_adapter` — a real FedGuard client adapter (a randomly initialised 4-block BERT, split
  after block 2, peft LoRA on query/value): the tensor names and shapes a strategy sees in a real run;
  :func:`adapter_from_shapes` builds one from a ``{name: shape}`` dict instead.
* :func:`train_reply` / :func:`reply_from` — a client's final reply (``arrays`` + ``metrics`` with
  ``num-examples``), exactly as the FedGuard client sends it; :func:`bad_reply` — each kind of bad reply.
* :func:`run_one_round` — ``configure_train`` on a :class:`FakeGrid`, one reply per sampled node, then
  ``aggregate_train``; works for any Flower ``Strategy``.

Flower messages need a task identity; these helpers set a server-side one when none is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedguard.protocol import messages as proto

BAD_REPLY_KINDS = ("error", "no-adapter", "wrong-names", "wrong-shape", "wrong-dtype", "nan", "inf",
                   "huge-norm", "no-num-examples", "zero-num-examples")

Adapter = dict[str, torch.Tensor]


def ensure_message_identity() -> None:
    """Give this process a server task identity if it has none (needed to construct Flower messages)."""
    for attr, value in (("run_id", 0), ("task_id", 0), ("node_id", SUPERLINK_NODE_ID)):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, value)


class FakeGrid(Grid):
    """A Grid with fixed connected ``node_ids`` for ``configure_train``/``configure_evaluate``; sends nothing."""

    simulation = True  # one process, like Flower's simulation: clients may keep budgets in memory (with a warning)

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def set_run(self, run: object) -> None:  # noqa: D102 - Grid API, unused here
        pass

    @property
    def run(self):  # noqa: ANN201, D102
        raise NotImplementedError("FakeGrid has no run")

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,  # noqa: D102
                       group_id: str = "", ttl: float | None = None) -> Message:
        ensure_message_identity()
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError("FakeGrid does not send messages; use run_one_round")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("FakeGrid does not send messages; use run_one_round")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None,  # noqa: D102
                         ) -> Iterable[Message]:
        raise NotImplementedError("FakeGrid does not send messages; use run_one_round")


# -- adapters ------------------------------------------------------------------------------------
def tiny_bert_adapter(lora_r: int = 4, split_layer: int = 2, seed: int = 0) -> Adapter:
    """The initial client adapter of a tiny random BERT (hidden 32, 4 blocks) split after ``split_layer``,
    built with FedGuard's own split and LoRA code: names like
    ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight`` ([r, 32]);
    A drawn from ``seed``, B zero (peft's initialisation)."""
    from transformers import BertConfig, BertForSequenceClassification

    from fedguard.model.lora import LoraSettings, attach_lora, trainable_state
    from fedguard.model.split import family_of, split_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(BertConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64))
        client, _ = split_model(model, split_layer)
        client = attach_lora(client, LoraSettings(r=lora_r), family_of(model))
    return trainable_state(client)


def adapter_from_shapes(shapes: Mapping[str, tuple[int, ...]], seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> Adapter:
    """Random N(0, 0.1²) tensors with the given names and shapes."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (0.1 * torch.randn(*shape, generator=generator)).to(dtype) for name, shape in shapes.items()}


def perturbed(adapter: Mapping[str, torch.Tensor], scale: float = 0.01, seed: int = 0,
              names: Iterable[str] | None = None) -> Adapter:
    """``adapter`` plus N(0, scale²) noise on ``names`` (default: all): a plausible trained client adapter."""
    generator = torch.Generator().manual_seed(seed)
    chosen = set(adapter) if names is None else set(names)
    return {name: (t + scale * torch.randn(t.shape, generator=generator).to(t.dtype)) if name in chosen
            else t.clone() for name, t in adapter.items()}


# -- replies -------------------------------------------------------------------------------------
def train_message(node_id: int, global_adapter: Mapping[str, torch.Tensor], server_round: int = 1) -> Message:
    """A ``train`` message to ``node_id`` carrying ``global_adapter`` (what a strategy would send)."""
    ensure_message_identity()
    content = RecordDict({proto.ADAPTER: ArrayRecord(torch_state_dict=dict(global_adapter)),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=node_id, message_type=proto.TRAIN)


def train_reply(message: Message, adapter: Mapping[str, torch.Tensor], num_examples: int = 32,
                metrics: Mapping[str, float] | None = None) -> Message:
    """The client's final reply to ``message``, encoded as the FedGuard client encodes it."""
    ensure_message_identity()
    metrics = {"client-seconds": 0.1, "steps": 1, **(metrics or {})}
    return Message(proto.encode_final_reply(dict(adapter), num_examples, metrics), reply_to=message)


def reply_from(node_id: int, adapter: Mapping[str, torch.Tensor], num_examples: int = 32,
               metrics: Mapping[str, float] | None = None) -> Message:
    """A final reply from ``node_id`` without a preceding train message."""
    return train_reply(train_message(node_id, adapter), adapter, num_examples, metrics)


def bad_reply(kind: str, node_id: int, global_adapter: Mapping[str, torch.Tensor]) -> Message:
    """A reply from ``node_id`` that every strategy must reject; ``kind`` is one of :data:`BAD_REPLY_KINDS`
    (``huge-norm`` is an update of norm 1e6, far beyond any sensible bound)."""
    good = perturbed(global_adapter, 0.01, seed=node_id)
    name = sorted(good)[0]
    request = train_message(node_id, global_adapter)
    if kind == "error":
        return Message(Error(code=0, reason="client crashed (simulated)"), reply_to=request)
    if kind == "no-adapter":
        content = RecordDict({proto.METRICS: MetricRecord({proto.NUM_EXAMPLES: 32})})
        return Message(content, reply_to=request)
    if kind in ("no-num-examples", "zero-num-examples"):
        metrics = {"client-seconds": 0.1} if kind == "no-num-examples" else {proto.NUM_EXAMPLES: 0}
        content = RecordDict({proto.ADAPTER: ArrayRecord(torch_state_dict=good),
                              proto.METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=request)
    if kind == "wrong-names":
        good[name + ".renamed"] = good.pop(name)
    elif kind == "wrong-shape":
        good[name] = torch.zeros(*(d + 1 for d in good[name].shape), dtype=good[name].dtype)
    elif kind == "wrong-dtype":
        good[name] = good[name].to(torch.float64 if good[name].dtype != torch.float64 else torch.float32)
    elif kind in ("nan", "inf"):
        good[name] = good[name].clone()
        good[name].view(-1)[0] = math.nan if kind == "nan" else math.inf
    elif kind == "huge-norm":
        good[name] = good[name] + 1e6 / math.sqrt(good[name].numel())
    else:
        raise ValueError(f"unknown bad reply kind {kind!r}; allowed: {', '.join(BAD_REPLY_KINDS)}")
    return train_reply(request, good)


# -- one round -----------------------------------------------------------------------------------
@dataclass
class RoundResult:
    """What one :func:`run_one_round` produced: the train messages, the new global adapter (``None`` when the
    strategy skipped the round) and the returned metrics as a plain dict."""

    messages: list[Message]
    arrays: Adapter | None
    metrics: dict[str, object] | None


def noisy_client(scale: float = 0.01, num_examples: int = 32) -> Callable[[Message], Message]:
    """A fake client: replies with the received adapter plus N(0, scale²) noise seeded by its node id.
    A client told ``lora-freeze-a`` leaves every LoRA A untouched, like the real one."""
    def client(message: Message) -> Message:
        adapter = message.content.array_records[proto.ADAPTER].to_torch_state_dict()
        config = message.content.config_records.get("config", ConfigRecord())
        frozen = bool(config.get(proto.FREEZE_LORA_A, False))
        names = [n for n in adapter if not (frozen and ".lora_A." in n)]
        return train_reply(message, perturbed(adapter, scale, message.metadata.dst_node_id, names), num_examples)
    return client


def run_one_round(strategy, global_adapter: Mapping[str, torch.Tensor],  # noqa: ANN001 - any Flower Strategy
                  client: Callable[[Message], Message] | None = None, num_nodes: int = 4, server_round: int = 1,
                  extra_replies: Iterable[Message] = ()) -> RoundResult:
    """``strategy.configure_train`` on a :class:`FakeGrid` of ``num_nodes`` nodes (ids 1001, 1002 ...),
    ``client(message)`` for each train message (default :func:`noisy_client`), then
    ``strategy.aggregate_train`` over those replies plus ``extra_replies`` (e.g. :func:`bad_reply`)."""
    ensure_message_identity()
    grid = FakeGrid(range(1001, 1001 + num_nodes))
    config = ConfigRecord({proto.NUM_LABELS: 2})
    messages = list(strategy.configure_train(server_round, ArrayRecord(torch_state_dict=dict(global_adapter)),
                                             config, grid))
    client = client or noisy_client()
    replies = [client(m) for m in messages] + list(extra_replies)
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return RoundResult(messages, None if arrays is None else dict(arrays.to_torch_state_dict()),
                       None if metrics is None else dict(metrics))
