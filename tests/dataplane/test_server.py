"""The data plane is as strict as Flower's own channel: the pinned certificate, a single-use ticket bound to the
node, frames within the limits. Rogue connections are refused with a log line and change nothing."""

from __future__ import annotations

import logging
import socket
import ssl
import threading

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedguard.dataplane import frames
from fedguard.dataplane.client import DataPlaneClient, DataPlaneRefused
from fedguard.dataplane.server import DataPlaneServer
from fedguard.dataplane.tickets import TicketBook
from fedguard.dataplane.tls import PinMismatchError

LIMITS = frames.limits_for(max_batch=2, max_length=4, hidden_size=8)


class Echo:
    """A session handler that answers each message with its ``n`` + 1, and records how it ended."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.ended: str | None = None
        self.stream_done = False

    def handle(self, content: RecordDict) -> RecordDict | None:
        n = int(content.config_records["c"]["n"])
        self.seen.append(n)
        return RecordDict({"c": ConfigRecord({"n": n + 1})})

    def dropped(self, reason: str) -> None:
        self.ended = reason


@pytest.fixture
def server():
    plane = DataPlaneServer("127.0.0.1", 0, "127.0.0.1", LIMITS, idle_timeout=2.0, max_connections=4)
    yield plane
    plane.close()


def _client(plane: DataPlaneServer, ticket: str, node: int = 7, fingerprint: str | None = None) -> DataPlaneClient:
    return DataPlaneClient(plane.address, fingerprint or plane.fingerprint, ticket, node, LIMITS, timeout=5.0)


def _ask(link: DataPlaneClient, n: int) -> int:
    return int(link.exchange(RecordDict({"c": ConfigRecord({"n": n})})).config_records["c"]["n"])


def test_a_ticketed_client_talks_to_its_session(server):
    echo = Echo()
    tickets = server.open_round({7: echo})
    with _client(server, tickets[7]) as link:
        assert [_ask(link, 1), _ask(link, 5)] == [2, 6]
    assert echo.seen == [1, 5]


def test_no_ticket_a_reused_ticket_or_another_nodes_ticket_gets_nothing(server, caplog):
    echo, other = Echo(), Echo()
    tickets = server.open_round({7: echo, 8: other})
    with caplog.at_level(logging.WARNING, logger="fedguard"):
        for ticket, node in (("", 7), ("0" * 64, 7), (tickets[8], 7)):
            with pytest.raises((DataPlaneRefused, ConnectionError, ssl.SSLError)):
                with _client(server, ticket, node) as link:
                    _ask(link, 1)
        with _client(server, tickets[7]) as link:  # the real one works once ...
            assert _ask(link, 1) == 2
        with pytest.raises((DataPlaneRefused, ConnectionError, ssl.SSLError)):  # ... and never again
            with _client(server, tickets[7]) as link:
                _ask(link, 3)
    assert echo.seen == [1] and other.seen == [] and other.ended is None
    refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == 4 and all("no valid ticket" in r for r in refusals)


def test_tickets_are_single_use_and_bound_to_their_node():
    book = TicketBook()
    ticket = book.issue(3)
    assert not book.redeem(4, ticket) and not book.redeem(3, ticket.upper()) and book.redeem(3, ticket)
    assert not book.redeem(3, ticket)
    late = book.issue(5)
    book.revoke_all()
    assert not book.redeem(5, late)


def test_a_server_with_another_certificate_is_refused_before_anything_is_sent(server):
    tickets = server.open_round({7: Echo()})
    with pytest.raises(PinMismatchError, match="fingerprint mismatch"):
        with _client(server, tickets[7], fingerprint="ab" * 32):
            pass
    # The ticket was never presented: the genuine client can still use it.
    with _client(server, tickets[7]) as link:
        assert _ask(link, 1) == 2


def test_an_oversized_frame_drops_the_session_with_its_reason(server):
    echo = Echo()
    tickets = server.open_round({7: echo})
    with _client(server, tickets[7]) as link:
        assert _ask(link, 1) == 2
        import torch
        from flwr.app import ArrayRecord

        big = RecordDict({"a": ArrayRecord(torch_state_dict={"x": torch.zeros(3, 4, 8)})})  # batch 3 > max 2
        link.send(big)
        with pytest.raises((ConnectionError, ssl.SSLError, frames.FrameError, OSError)):
            link.exchange(RecordDict({"c": ConfigRecord({"n": 9})}))
    _wait(lambda: echo.ended is not None)
    assert "bad frame" in echo.ended and echo.seen == [1]


def test_a_silent_client_is_dropped_after_the_idle_timeout(server):
    echo = Echo()
    tickets = server.open_round({7: echo})
    with _client(server, tickets[7]) as link:
        assert _ask(link, 1) == 2
        _wait(lambda: echo.ended is not None, timeout=10)
    assert "silent for more than 2s" in echo.ended


def test_a_plain_tcp_connection_without_tls_gets_nothing(server, caplog):
    echo = Echo()
    server.open_round({7: echo})
    with caplog.at_level(logging.WARNING, logger="fedguard"):
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            raw.settimeout(5)
            try:
                assert raw.recv(100) == b""
            except (ConnectionError, TimeoutError, socket.timeout):
                pass
        _wait(lambda: any("TLS handshake failed" in r.getMessage() for r in caplog.records))
    assert echo.seen == [] and echo.ended is None


def _wait(condition, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        done.wait(0.05)
    assert condition()
