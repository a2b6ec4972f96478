"""The client's side of the data plane: one TLS connection per round, pinned, ticketed, frame-checked."""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from fedguard.dataplane import frames
from fedguard.dataplane.server import recv_exact
from fedguard.dataplane.tls import client_connect


class DataPlaneRefused(ConnectionError):
    """The server refused this connection (the text says why)."""


class DataPlaneClient:
    """``with DataPlaneClient(address, fingerprint, ticket, node_id, limits, timeout) as link: link.exchange(m)``"""

    def __init__(self, address: str, fingerprint: str, ticket: str, node_id: int, limits: frames.FrameLimits,
                 timeout: float) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"data-plane address {address!r}: expected HOST:PORT")
        self.host, self.port = host.strip("[]"), int(port)
        self.fingerprint, self.ticket, self.node_id = fingerprint, ticket, node_id
        self.limits, self.timeout = limits, timeout
        self.conn = None

    def __enter__(self) -> "DataPlaneClient":
        self.conn = client_connect(self.host, self.port, self.fingerprint, self.timeout)
        hello = RecordDict({"hello": ConfigRecord({"node-id": int(self.node_id), "ticket": self.ticket})})
        self.conn.sendall(frames.encode(frames.HELLO, hello))
        return self

    def exchange(self, content: RecordDict) -> RecordDict:
        """Send ``content``; return the server's reply (checked against ``limits`` before allocation)."""
        self.send(content)
        kind, reply = frames.read_frame(lambda n: recv_exact(self.conn, n), self.limits)
        if kind == frames.REFUSED:
            record = reply.config_records.get("refused")
            raise DataPlaneRefused(f"the data-plane server refused: {record.get('reason') if record else '?'}")
        if kind != frames.MESSAGE:
            raise frames.FrameError(f"expected a message frame, got kind {kind}")
        return reply

    def send(self, content: RecordDict) -> None:
        self.conn.sendall(frames.encode(frames.MESSAGE, content))

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()
