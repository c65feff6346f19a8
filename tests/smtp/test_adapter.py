"""The Twisted adapter with an in-memory transport and a fake clock: timers, limits, actions, STARTTLS."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailsuite.accounts import LocalTarget, Resolution
from mailsuite.config import parse_settings
from mailsuite.smtp.adapter import build_factory


class Transport(StringTransport):
    def __init__(self, ip: str = "192.0.2.9") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", ip, 40000))
        self.nodelay = False
        self.tls_started: list[Any] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def startTLS(self, options: Any) -> None:
        self.tls_started.append(options)


class FakeAccounts:
    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"

    def resolve(self, address: str) -> Resolution | None:
        if address.lower() == "alice@example.org":
            return Resolution((LocalTarget("alice@example.org", None),), ())
        return None

    def may_send_as(self, user: str, address: str) -> bool:
        return user == address

    def authenticate(self, login: str, password: str, *, service: str, ip: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


class FakeStore:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, bytes]] = []

    def deliver(self, user: str, data: bytes, folder: str = "INBOX", *, crlf: bool = False) -> defer.Deferred:
        self.delivered.append((user, folder, data))
        return defer.succeed("f")


def make(tmp_path: Path, service: str = "smtp", extra: str = "") -> Any:
    settings = parse_settings(f"""
hostname = "mail.example.org"
domains = ["example.org"]
data_dir = "{tmp_path}"
[smtp]
command_timeout = 30
data_timeout = 100
max_connections_per_ip = 2
{extra}
""")
    clock = Clock()
    ctx = SimpleNamespace(settings=settings, accounts=FakeAccounts(), store=FakeStore(), queue=None,
                          tls=SimpleNamespace(server_options=lambda: "tls-options"), reactor=clock)
    return ctx, build_factory(ctx, service), clock


def connect(factory: Any, ip: str = "192.0.2.9") -> tuple[Any, Transport]:
    proto = factory.buildProtocol(None)
    transport = Transport(ip)
    proto.makeConnection(transport)
    return proto, transport


def test_greeting_nodelay_and_delivery(tmp_path: Path) -> None:
    ctx, factory, _clock = make(tmp_path)
    proto, t = connect(factory)
    assert t.nodelay
    assert t.value() == b"220 mail.example.org ESMTP mailsuite\r\n"
    t.clear()
    proto.dataReceived(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
                       b"RCPT TO:<bob@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
    proto.dataReceived(b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    lines = t.value().decode().split("\r\n")
    assert lines[-7:-3] == ["250 2.1.5 Ok", "550 5.1.1 Recipient address rejected: user unknown",
                            "554 5.7.1 Relay access denied", "354 End data with <CR><LF>.<CR><LF>"]
    assert lines[-3].startswith("250 2.0.0 Ok: delivered as ")
    assert lines[-2] == "221 2.0.0 mail.example.org closing connection"
    assert t.disconnecting
    user, folder, data = ctx.store.delivered[0]
    assert (user, folder) == ("alice@example.org", "INBOX")
    assert data.startswith(b"Return-Path: <x@remote.test>\r\nReceived: from c ([192.0.2.9])")


def test_connection_limit_per_ip(tmp_path: Path) -> None:
    _ctx, factory, _clock = make(tmp_path)
    a, _ = connect(factory)
    connect(factory)
    third, t3 = connect(factory)
    assert t3.value() == b"421 4.7.0 mail.example.org Too many connections from your host, try again later\r\n"
    assert t3.disconnecting
    third.connectionLost(None)
    _, other_ip = connect(factory, "192.0.2.77")
    assert other_ip.value().startswith(b"220 ")
    a.connectionLost(None)
    _, again = connect(factory)
    assert again.value().startswith(b"220 ")


def test_command_and_data_timeouts(tmp_path: Path) -> None:
    _ctx, factory, clock = make(tmp_path)
    proto, t = connect(factory)
    clock.advance(29)
    proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
    clock.advance(29)
    assert not t.disconnecting
    clock.advance(60)          # inside DATA the data timeout (100 s) applies
    assert not t.disconnecting
    proto.dataReceived(b"more\r\n")
    clock.advance(100)
    assert t.disconnecting
    assert t.value().endswith(b"421 4.4.2 mail.example.org Error: timeout exceeded\r\n")
    proto.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_pending_auth_holds_input_and_keeps_order(tmp_path: Path) -> None:
    ctx, factory, clock = make(tmp_path, "submissions")
    proto, t = connect(factory)
    token = base64.b64encode(b"\0alice@example.org\0pw").decode()
    proto.dataReceived(f"EHLO c\r\nAUTH PLAIN {token}\r\nNOOP\r\n".encode())
    assert t.producerState == "producing"         # a little input is held in the engine, no pause
    assert clock.getDelayedCalls() == []          # no idle timer while the check runs
    assert not t.value().endswith(b"250 2.0.0 Ok\r\n")
    proto.dataReceived(b"NOOP\r\n")
    ctx.accounts.pending.pop().callback("alice@example.org")
    assert t.producerState == "producing"
    assert t.value().endswith(b"235 2.7.0 Authentication successful\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n")


def test_flood_while_action_runs_pauses_transport(tmp_path: Path) -> None:
    """Input beyond MAX_HELD while an action runs pauses reading; the result resumes it, nothing is lost."""
    from mailsuite.smtp.adapter import MAX_HELD

    ctx, factory, clock = make(tmp_path, "submissions")
    proto, t = connect(factory)
    token = base64.b64encode(b"\0alice@example.org\0pw").decode()
    proto.dataReceived(f"EHLO c\r\nAUTH PLAIN {token}\r\n".encode())
    assert t.producerState == "producing"
    flood = b"NOOP\r\n" * (MAX_HELD // 6 + 10)
    proto.dataReceived(flood)
    assert t.producerState == "paused"
    ctx.accounts.pending.pop().callback("alice@example.org")
    assert t.producerState == "producing"
    assert t.value().count(b"250 2.0.0 Ok\r\n") == MAX_HELD // 6 + 10 and not proto.engine.closed
    assert len(clock.getDelayedCalls()) == 1


def test_auth_result_after_disconnect_is_ignored(tmp_path: Path) -> None:
    ctx, factory, _clock = make(tmp_path, "submissions")
    proto, t = connect(factory)
    token = base64.b64encode(b"\0alice@example.org\0pw").decode()
    proto.dataReceived(f"EHLO c\r\nAUTH PLAIN {token}\r\n".encode())
    proto.connectionLost(None)
    before = t.value()
    ctx.accounts.pending.pop().callback(None)
    assert t.value() == before


def test_starttls_calls_transport_and_drops_injected(tmp_path: Path) -> None:
    ctx, factory, _clock = make(tmp_path, "submission")
    proto, t = connect(factory)
    proto.dataReceived(b"EHLO c\r\n")
    t.clear()
    proto.dataReceived(b"STARTTLS\r\nMAIL FROM:<alice@example.org>\r\n")
    assert t.value() == b"220 2.0.0 Ready to start TLS\r\n"
    assert t.tls_started == ["tls-options"]


def test_sender_check_uses_accounts(tmp_path: Path) -> None:
    ctx, factory, _clock = make(tmp_path, "submissions")
    proto, t = connect(factory)
    token = base64.b64encode(b"\0alice@example.org\0pw").decode()
    proto.dataReceived(f"EHLO c\r\nAUTH PLAIN {token}\r\n".encode())
    ctx.accounts.pending.pop().callback("alice@example.org")
    t.clear()
    proto.dataReceived(b"MAIL FROM:<bob@example.org>\r\nMAIL FROM:<alice@example.org>\r\n")
    assert t.value() == b"553 5.7.1 Sender address rejected: not owned by user\r\n250 2.1.0 Ok\r\n"
