"""A Flower ``Grid`` that delivers every message to the real FedGuard ``ClientApp`` in this process.

Only the transport is replaced: the server's round loop (:class:`SplitRoundRunner`) and the client's
message handlers run unchanged, each node with its own ``Context`` (state kept across messages, as a
SuperNode keeps it). Every message in both directions is recorded, so tests can inspect what crossed the
wire.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedguard.apps import server_app
from fedguard.apps.client_app import app as client_app
from fedguard.apps.local_run import ROOT
from fedguard.dataplane.client import DataPlaneClient
from fedguard.protocol import messages as proto
from fedguard.testing import FakeGrid, ensure_message_identity


class LoopbackGrid(FakeGrid):
    """``node_contexts``: node id -> that node's ``Context`` (node config, run config, state)."""

    def __init__(self, node_contexts: dict[int, Context]) -> None:
        super().__init__(node_contexts)
        self.contexts = node_contexts
        self.sent: list[Message] = []  # server -> client
        self.received: list[Message] = []  # client -> server

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self._deliver(message) for message in messages]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now (the ClientApp runs to its reply in this thread) and keep the reply."""
        self._replies = getattr(self, "_replies", {})
        ids = []
        for message in messages:
            reply = self._deliver(message)
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = getattr(self, "_replies", {})
        return [replies.pop(i) for i in list(message_ids) if i in replies]

    def _deliver(self, message: Message) -> Message:
        message.metadata.__dict__["_message_id"] = str(uuid4())
        self.sent.append(message)
        saved = TaskIdentity._node_id
        TaskIdentity._node_id = message.metadata.dst_node_id
        try:
            reply = client_app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as err:  # noqa: BLE001 - as Flower does: a failing ClientApp sends an error reply
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}"),
                            reply_to=message)
        finally:
            TaskIdentity._node_id = saved
        self.received.append(reply)
        return reply


def node_contexts(run_config: dict, num_nodes: int, first_id: int = 101,
                  num_partitions: int | None = None) -> dict[int, Context]:
    """One ``Context`` per simulated node, with the partition ids a simulation would give them (node i holds
    partition i of ``num_partitions``, default ``num_nodes``: more partitions than nodes leave rows untrained)."""
    return {first_id + i: Context(run_id=1, node_id=first_id + i,
                                  node_config={"partition-id": i, "num-partitions": num_partitions or num_nodes},
                                  state=RecordDict(), run_config=dict(run_config))
            for i in range(num_nodes)}


def run_server(tmp_path: Path, overrides: dict, num_nodes: int = 2) -> tuple[LoopbackGrid, dict]:
    """One small run of the real apps over a loopback grid (the app's default config + ``overrides``);
    returns the grid (every message recorded) and the run's ``metrics.json``."""
    ensure_message_identity()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"num-server-rounds": 1, "local-steps": 4, "batch-size": 4, "exchange-batches": 2,
                "max-length": 48, "eval-examples": 16, "output-dir": str(tmp_path / "run"), **overrides})
    grid = LoopbackGrid(node_contexts(raw, num_nodes))
    with recording_data_plane(grid):
        server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    return grid, json.loads((tmp_path / "run" / "metrics.json").read_text())


@contextmanager
def recording_data_plane(grid: LoopbackGrid) -> Iterator[None]:
    """Also record what crosses the data plane (stream transport) as messages — client to server in
    ``grid.received``, server to client in ``grid.sent`` — so tests inspect everything whichever transport
    carried it."""
    send, exchange = DataPlaneClient.send, DataPlaneClient.exchange

    def recording_send(self, content: RecordDict) -> None:
        grid.received.append(Message(content, dst_node_id=0, message_type=proto.EXCHANGE))
        send(self, content)

    def recording_exchange(self, content: RecordDict) -> RecordDict:
        reply = exchange(self, content)
        grid.sent.append(Message(reply, dst_node_id=self.node_id, message_type=proto.EXCHANGE))
        return reply

    DataPlaneClient.send, DataPlaneClient.exchange = recording_send, recording_exchange
    try:
        yield
    finally:
        DataPlaneClient.send, DataPlaneClient.exchange = send, exchange


def tensors_of(message: Message) -> dict[str, torch.Tensor]:
    """Every tensor a message carries, keyed ``<record>/<name>``."""
    out = {}
    for key, record in message.content.array_records.items():
        for name, tensor in record.to_torch_state_dict().items():
            out[f"{key}/{name}"] = tensor
    return out
