"""How a round's split exchanges travel: one small interface, two transports (run-config ``split-transport``).

* :class:`StreamTransport` (``"stream"``, the default): Flower carries one train message per sampled client
  (global adapter, round config, and a data-plane address, certificate fingerprint and single-use ticket) and
  one reply (final adapter, metrics, privacy record). Inside that one ClientApp call the client connects to
  the ServerApp's data plane (:mod:`fedguard.dataplane`) and runs all of its round's batches over it, one
  batch (chunk) per exchange, at network speed, while the server drives every client's
  :class:`~fedguard.apps.server_session.ServerSession` from the data plane's connection threads.
* :class:`FlowerTransport` (``"flower"``): every exchange is a Flower message (for sites that cannot open a
  port). Deployments then pay Flower's per-message cost (a fresh ClientApp process, 3 s polls) per exchange.

The round loop only builds sessions, calls :meth:`SplitTransport.run`, and aggregates the sessions' finals.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedguard.apps.server_session import ServerSession
from fedguard.config import RunConfig
from fedguard.dataplane import frames
from fedguard.dataplane.server import DataPlaneServer
from fedguard.protocol import messages as proto

log = logging.getLogger("fedguard")

Progress = Callable[[int, int], None]  # (batches done, batches planned)


@dataclass
class TransportResult:
    """``exchanges``: split exchanges of the longest session (the Flower reply counted as one);
    ``client_seconds``: the critical path of client compute (see each transport)."""

    exchanges: int
    client_seconds: float


class SplitTransport(Protocol):
    """Drives the sessions of one round to their end (final, refusal or dropped)."""

    name: str

    def run(self, messages: list[Message], sessions: dict[int, ServerSession], progress: Progress | None) -> TransportResult:
        """Send the train ``messages`` and drive ``sessions`` (node id -> session) until each is over."""

    def close(self) -> None:
        """Release the transport's resources (listening socket)."""


def _count_down(messages: list[Message], sessions: dict[int, ServerSession]) -> None:
    for message in messages:
        sessions[message.metadata.dst_node_id].stats.bytes_down += proto.payload_bytes(message.content)


def _report(progress: Progress | None, sessions: dict[int, ServerSession], steps: int) -> None:
    if progress is not None:
        progress(sum(s.done_steps for s in sessions.values()), len(sessions) * steps)


class FlowerTransport:
    """Every exchange is a Flower message; clients move in lock-step, one exchange at a time.
    ``client_seconds`` is the sum over exchanges of the slowest client's compute."""

    name = "flower"

    def __init__(self, grid: Grid, config: RunConfig) -> None:
        self.grid, self.config = grid, config

    def run(self, messages: list[Message], sessions: dict[int, ServerSession], progress: Progress | None) -> TransportResult:
        timeout = self.config.round_timeout
        _count_down(messages, sessions)
        exchanges, client_seconds = 0, 0.0
        while messages:
            waiting = {m.metadata.dst_node_id for m in messages}
            # An error reply for a node that went offline comes from the SuperLink, not the node: match replies to
            # the instruction they answer, not to their sender.
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set on send
            exchanges += 1
            messages, slowest = [], 0.0
            answered: list[ServerSession] = []
            for reply in replies:
                node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                waiting.discard(node)
                session = sessions[node]
                if reply.has_error():
                    session.dropped(f"client error: {reply.error.reason}")
                    continue
                down = session.handle_reply(reply)
                slowest = max(slowest, session.stats.last_client_seconds)
                answered.append(session)
                if down is not None:
                    messages.append(Message(down, dst_node_id=node, message_type=proto.EXCHANGE))
            for session in answered:  # U-shape: every backward of this exchange saw the same middle weights
                for grads in session.deferred:
                    session.trainer.step(grads)
                session.deferred.clear()
            for node in waiting:
                sessions[node].dropped(f"no reply within round-timeout={timeout:g}s")
                messages = [m for m in messages if m.metadata.dst_node_id != node]
            client_seconds += slowest
            _report(progress, sessions, self.config.local_steps)
        return TransportResult(exchanges, client_seconds)

    def close(self) -> None:
        pass


class StreamTransport:
    """One Flower message per client per round; the split exchanges go over the data plane.
    ``client_seconds`` is the largest client's own compute (clients run concurrently)."""

    name = "stream"
    POLL_SECONDS = 0.05  # reply polling (Flower's own send_and_receive sleeps 3 s between pulls in deployments)

    def __init__(self, grid: Grid, config: RunConfig, hidden_size: int, simulation: bool) -> None:
        self.grid, self.config = grid, config
        bind, port, advertised = data_plane_address(config.data_plane_address, simulation)
        self.limits = frames.limits_for(max_batch(config), config.max_length, hidden_size)
        self.server = DataPlaneServer(bind, port, advertised, self.limits, idle_timeout=config.round_timeout)
        log.info("split data plane listening on %s (TLS, certificate %s…; bound to %s)", self.server.address,
                 self.server.fingerprint[:16], f"{bind}:{port}")

    def run(self, messages: list[Message], sessions: dict[int, ServerSession], progress: Progress | None) -> TransportResult:
        tickets = self.server.open_round(sessions)
        try:
            messages = [self._ticketed(m, tickets[m.metadata.dst_node_id]) for m in messages]
            _count_down(messages, sessions)
            self._wait_for_finals(messages, sessions, progress)
        finally:
            self.server.close_round()
        longest = max((s.stats.exchanges for s in sessions.values()), default=0)
        return TransportResult(longest, max((s.stats.client_seconds for s in sessions.values()), default=0.0))

    def _ticketed(self, message: Message, ticket: str) -> Message:
        """A copy of a train message whose config also names the data plane and carries the node's ticket (Flower
        strategies send one shared content object to every node: it must not be changed in place)."""
        content = RecordDict(dict(message.content.items()))
        config = ConfigRecord(dict(message.content.config_records.get("config", ConfigRecord())))
        config.update({proto.DATA_PLANE_ADDRESS: self.server.address,
                       proto.DATA_PLANE_FINGERPRINT: self.server.fingerprint, proto.DATA_PLANE_TICKET: ticket})
        content["config"] = config
        return Message(content, dst_node_id=message.metadata.dst_node_id, message_type=message.metadata.message_type,
                       group_id=message.metadata.group_id)

    def _wait_for_finals(self, messages: list[Message], sessions: dict[int, ServerSession],
                         progress: Progress | None) -> None:
        ids = list(self.grid.push_messages(messages))
        node_of = {message_id: m.metadata.dst_node_id for message_id, m in zip(ids, messages)}
        pending = set(ids)
        per_exchange = self.config.round_timeout
        # A silent connection is dropped by the data plane after round-timeout; the Flower reply of a client whose
        # stream ended gets one more round-timeout; the whole round at most its exchanges' worth.
        deadline = time.monotonic() + per_exchange * (2 * self.config.exchanges_per_round + 1)
        reported = -1
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                message_id = reply.metadata.reply_to_message_id
                pending.discard(message_id)
                sessions[node_of.get(message_id, reply.metadata.src_node_id)].handle_reply(reply)
            done = sum(s.done_steps for s in sessions.values())
            if done != reported:
                reported = done
                _report(progress, sessions, self.config.local_steps)
            if pending and all(sessions[node_of[i]].dropped_reason is not None for i in pending):
                break  # every client still owed a reply was dropped by the data plane: nothing to wait for
            if pending:
                time.sleep(self.POLL_SECONDS)
        for message_id in pending:
            sessions[node_of[message_id]].dropped(f"no reply within the round's timeout "
                                                  f"({per_exchange:g}s per exchange)")

    def close(self) -> None:
        self.server.close()


def max_batch(config: RunConfig) -> int:
    """The largest batch a frame may carry: ``batch-size``, or under DP-SGD's Poisson sampling 4x that + 16
    (a Poisson(b) draw above 4b + 16 has probability below 1e-12 for every b >= 1)."""
    return config.batch_size * 4 + 16 if config.dp_enabled else config.batch_size


def data_plane_address(setting: str, simulation: bool) -> tuple[str, int, str]:
    """``(bind host, bind port, advertised host)`` for ``data-plane-address``: "" = this host, an ephemeral port
    (loopback in a simulation); ``HOST:PORT`` binds there (``0.0.0.0:PORT``: every interface, advertised as this
    host's address)."""
    if not setting:
        return ("127.0.0.1", 0, "127.0.0.1") if simulation else ("0.0.0.0", 0, _this_host())
    host, _, port = setting.rpartition(":")
    host = host.strip("[]")
    advertised = _this_host() if host in ("", "0.0.0.0", "::") else host
    return host or "0.0.0.0", int(port), advertised


def _this_host() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.getfqdn()


def build_transport(grid: Grid, config: RunConfig, hidden_size: int, simulation: bool) -> SplitTransport:
    """The transport ``split-transport`` names."""
    if config.split_transport == "flower":
        return FlowerTransport(grid, config)
    return StreamTransport(grid, config, hidden_size, simulation)
