"""A Flower ``Grid`` that delivers every message to the real FedGuard ``ClientApp`` in this process.

Only the transport is replaced: the server's round loop (:class:`SplitRoundRunner`) and the client's
message handlers run unchanged, each node with its own ``Context`` (state kept across messages, as a
SuperNode keeps it). Every message in both directions is recorded, so tests can inspect what crossed the
wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedguard.apps.client_app import app as client_app
from fedguard.testing import FakeGrid


class LoopbackGrid(FakeGrid):
    """``node_contexts``: node id -> that node's ``Context`` (node config, run config, state)."""

    def __init__(self, node_contexts: dict[int, Context]) -> None:
        super().__init__(node_contexts)
        self.contexts = node_contexts
        self.sent: list[Message] = []  # server -> client
        self.received: list[Message] = []  # client -> server

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(message)
            saved = TaskIdentity._node_id
            TaskIdentity._node_id = message.metadata.dst_node_id
            try:
                reply = client_app(message, self.contexts[message.metadata.dst_node_id])
            finally:
                TaskIdentity._node_id = saved
            self.received.append(reply)
            replies.append(reply)
        return replies


def node_contexts(run_config: dict, num_nodes: int, first_id: int = 101) -> dict[int, Context]:
    """One ``Context`` per simulated node, with the partition ids a simulation would give them."""
    return {first_id + i: Context(run_id=1, node_id=first_id + i,
                                  node_config={"partition-id": i, "num-partitions": num_nodes},
                                  state=RecordDict(), run_config=dict(run_config))
            for i in range(num_nodes)}
