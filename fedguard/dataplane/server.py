"""The ServerApp's data-plane endpoint: TLS, tickets, frame limits, one thread per client connection.

Per round the round loop registers a handler per sampled node (:meth:`DataPlaneServer.open_round`) and gets a
ticket for each. A client connects, passes the TLS handshake (the certificate it pins), sends a HELLO frame
with its node id and ticket; the ticket must be the one issued for that node this round (single use,
constant-time check). Then every MESSAGE frame it sends is given to the node's handler, whose reply goes back
as the next frame, until the handler says the conversation is over. Frames are checked against
:class:`~fedguard.dataplane.frames.FrameLimits` before anything is allocated; a connection that is silent for
``idle_timeout`` seconds, sends a bad frame, or disconnects, is closed and its handler is told why
(:meth:`SessionHandler.dropped`). Connections without a valid ticket are refused with a log line and change
nothing. At most ``max_connections`` connections are served at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Protocol

from flwr.app import ConfigRecord, RecordDict

from fedguard.dataplane import frames
from fedguard.dataplane.tickets import TicketBook
from fedguard.dataplane.tls import server_context

log = logging.getLogger("fedguard")

HELLO_LIMITS = frames.FrameLimits(max_dim=0, max_elements=0, max_bytes=0)  # a HELLO carries no arrays


class SessionHandler(Protocol):
    """What the data plane drives for one client: reply to each message, hear why a connection ended."""

    def handle(self, content: RecordDict) -> RecordDict | None:
        """The reply to ``content``, or None when the conversation is over (nothing more is sent)."""

    def dropped(self, reason: str) -> None:
        """The connection ended before the conversation did (``reason`` for ``clients_dropped``)."""

    @property
    def stream_done(self) -> bool:
        """Nothing more is expected on the data plane (the last reply was sent)."""


def recv_exact(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``conn`` (ConnectionError on EOF; socket.timeout when idle too long)."""
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class DataPlaneServer:
    """Listens on ``host:port`` (port 0 = ephemeral) and serves registered sessions over TLS."""

    def __init__(self, host: str, port: int, advertised_host: str, limits: frames.FrameLimits,
                 idle_timeout: float, max_connections: int = 64) -> None:
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.tickets = TicketBook()
        self._context, self.fingerprint = server_context()
        self._handlers: dict[int, SessionHandler] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(0.5)
        self.address = f"{advertised_host}:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="fedguard-data-plane", daemon=True)
        self._thread.start()

    # -- rounds ----------------------------------------------------------------------------------
    def open_round(self, handlers: dict[int, SessionHandler]) -> dict[int, str]:
        """Register ``handlers`` (node id -> handler) for this round; returns each node's ticket."""
        with self._lock:
            self._handlers = dict(handlers)
        return {node: self.tickets.issue(node) for node in handlers}

    def close_round(self) -> None:
        """Revoke unused tickets and forget the round's handlers."""
        self.tickets.revoke_all()
        with self._lock:
            self._handlers = {}

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)

    # -- connections -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                raw, peer = self._listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("data plane: refused a connection from %s: too many open connections", peer[0])
                raw.close()
                continue
            threading.Thread(target=self._serve, args=(raw, peer), daemon=True).start()

    def _serve(self, raw: socket.socket, peer: tuple) -> None:
        handler: SessionHandler | None = None
        try:
            raw.settimeout(min(self.idle_timeout, 30.0))
            try:
                conn = self._context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.warning("data plane: refused a connection from %s: TLS handshake failed (%s)", peer[0], err)
                return
            handler, node = self._authenticate(conn, peer)
            if handler is None:
                return
            conn.settimeout(self.idle_timeout)
            self._converse(conn, handler, node)
        finally:
            raw.close()
            self._slots.release()

    def _authenticate(self, conn: ssl.SSLSocket, peer: tuple) -> tuple[SessionHandler | None, int]:
        try:
            kind, hello = frames.read_frame(lambda n: recv_exact(conn, n), HELLO_LIMITS)
            record = hello.config_records.get("hello") if kind == frames.HELLO else None
            node = int(record["node-id"]) if record is not None and "node-id" in record else -1
            ticket = str(record.get("ticket", "")) if record is not None else ""
        except (frames.FrameError, ConnectionError, OSError, ValueError, TypeError) as err:
            log.warning("data plane: refused a connection from %s: no valid HELLO (%s)", peer[0], err)
            return None, -1
        with self._lock:
            handler = self._handlers.get(node)
        if handler is None or not self.tickets.redeem(node, ticket):
            log.warning("data plane: refused a connection from %s claiming node %s: no valid ticket for it in this "
                        "round (unknown, reused or wrong)", peer[0], node)
            _send_quietly(conn, frames.REFUSED, "no valid ticket")
            return None, node
        log.info("data plane: node %s connected from %s", node, peer[0])
        return handler, node

    def _converse(self, conn: ssl.SSLSocket, handler: SessionHandler, node: int) -> None:
        try:
            while True:
                kind, content = frames.read_frame(lambda n: recv_exact(conn, n), self.limits)
                if kind != frames.MESSAGE:
                    raise frames.FrameError(f"expected a message frame, got kind {kind}")
                reply = handler.handle(content)
                if reply is None:
                    return
                conn.sendall(frames.encode(frames.MESSAGE, reply))
                if handler.stream_done:
                    return
        except (socket.timeout, TimeoutError):
            reason = f"data plane: silent for more than {self.idle_timeout:g}s"
        except frames.FrameError as err:
            reason = f"data plane: bad frame ({err})"
        except (ConnectionError, ssl.SSLError, OSError) as err:
            reason = f"data plane: connection lost ({err})"
        except Exception as err:  # noqa: BLE001 - the handler failed on this client's data: drop the client
            log.exception("data plane: node %s: handler failed", node)
            reason = f"data plane: {type(err).__name__}: {err}"
        handler.dropped(reason)


def _send_quietly(conn: ssl.SSLSocket, kind: int, reason: str) -> None:
    try:
        conn.sendall(frames.encode(kind, RecordDict({"refused": ConfigRecord({"reason": reason})})))
    except OSError:
        pass


Handlers = dict[int, SessionHandler]
Factory = Callable[[int], SessionHandler]
