"""The IMAP adapter over an in-memory transport and a fake clock: actions, streaming, IDLE wake-ups,
STARTTLS, connection limits, autologout."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailsuite.config import parse_settings
from mailsuite.context import ServerContext
from mailsuite.imap.adapter import ImapFactory, build_factory

from .harness import MESSAGE, USERS, make_store


class FakeAccounts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def authenticate(self, login: str, password: str, *, service: str, ip: str) -> defer.Deferred:
        self.calls.append((service, ip))
        return defer.succeed(login if USERS.get(login) == password else None)


class FakeTLS:
    def server_options(self) -> str:
        return "tls-options"


class Transport(StringTransport):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 50000))
        self.tls: Any = None
        self.closed = False

    def startTLS(self, options: Any) -> None:
        self.tls = options

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = True


@pytest.fixture
def env(tmp_path):
    store = make_store(tmp_path)
    settings = parse_settings("[imap]\nmax_connections_per_ip = 2\ntimeout = 60\n")
    ctx = ServerContext(settings=settings, accounts=FakeAccounts(), store=store, tls=FakeTLS(), reactor=Clock())
    yield ctx
    store.close()


def connect(ctx: ServerContext, factory: ImapFactory, host: str = "127.0.0.1"):
    proto = factory.buildProtocol(IPv4Address("TCP", host, 50000))
    tr = Transport(host)
    proto.makeConnection(tr)
    return proto, tr


def drain(tr: Transport) -> bytes:
    """Run a registered pull producer to its end, then return and clear what was written."""
    for _ in range(10000):
        if tr.producer is None:
            break
        tr.producer.resumeProducing()
    out = tr.value()
    tr.clear()
    return out


def test_session_with_streamed_fetch_and_idle_wakeup(env):
    factory = build_factory(env, "imap")
    proto, tr = connect(env, factory)
    assert tr.value().startswith(b"* OK [CAPABILITY")
    tr.clear()
    proto.dataReceived(b"a STARTTLS\r\nb LOGIN alice@example.org secret\r\n")
    assert tr.tls == "tls-options" and tr.value() == b"a OK Begin TLS negotiation now\r\n"
    assert env.accounts.calls == []  # the pipelined LOGIN was dropped
    tr.clear()
    proto.dataReceived(b"c LOGIN alice@example.org secret\r\n")
    assert b"c OK" in tr.value() and env.accounts.calls == [("imap", "127.0.0.1")]
    tr.clear()
    proto.dataReceived(b"d APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\ne SELECT INBOX\r\n")
    out = tr.value()
    assert b"d OK [APPENDUID" in out and b"e OK [READ-WRITE]" in out
    tr.clear()
    proto.dataReceived(b"f FETCH 1 (BODY[])\r\ng NOOP\r\n")
    out = drain(tr)
    assert MESSAGE in out and out.index(b"f OK") < out.index(b"g OK")
    proto.dataReceived(b"h IDLE\r\n")
    assert tr.value() == b"+ idling\r\n"
    tr.clear()
    env.store.deliver("alice@example.org", MESSAGE)
    assert tr.value() == b""  # reported on the next reactor turn, not inside the delivery
    env.reactor.advance(0)
    assert tr.value() == b"* 2 EXISTS\r\n* 2 RECENT\r\n"
    tr.clear()
    proto.dataReceived(b"DONE\r\ni LOGOUT\r\n")
    assert b"h OK" in tr.value() and b"* BYE" in tr.value() and tr.closed
    proto.connectionLost(None)
    assert factory.per_ip.total() == 0


def test_outside_changes_seen_while_idle(env):
    factory = build_factory(env, "imaps")
    proto, tr = connect(env, factory)
    assert b"STARTTLS" not in tr.value()
    proto.dataReceived(b"a LOGIN alice@example.org secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
    tr.clear()
    env.store.deliver_sync("alice@example.org", MESSAGE)  # like another program writing the Maildir
    env.reactor.advance(16)
    assert b"* 1 EXISTS" in tr.value()
    proto.connectionLost(None)


def test_connection_limit_per_ip(env):
    factory = build_factory(env, "imap")
    first = [connect(env, factory) for _ in range(2)]
    proto, tr = connect(env, factory)
    assert tr.value() == b"* BYE Too many connections from your address\r\n" and tr.closed
    proto.connectionLost(None)
    other, tr2 = connect(env, factory, "127.0.0.2")
    assert tr2.value().startswith(b"* OK")
    for p, _ in first:
        p.connectionLost(None)
    assert factory.per_ip.count("127.0.0.2") == 1 and factory.per_ip.total() == 1


def test_autologout(env):
    factory = build_factory(env, "imap")
    proto, tr = connect(env, factory)
    tr.clear()
    env.reactor.advance(61)
    assert tr.value() == b"* BYE Autologout; idle for too long\r\n" and tr.closed
    proto.connectionLost(None)


def test_not_an_imap_service(env):
    with pytest.raises(ValueError):
        build_factory(env, "pop3")


def test_compress_deflate(env):
    import zlib

    factory = build_factory(env, "imaps")
    proto, tr = connect(env, factory)
    proto.dataReceived(b"a LOGIN alice@example.org secret\r\n")
    tr.clear()
    client_out = zlib.compressobj(6, zlib.DEFLATED, -15)
    client_in = zlib.decompressobj(-15)

    def z(data: bytes) -> bytes:
        return client_out.compress(data) + client_out.flush(zlib.Z_SYNC_FLUSH)

    # a client that pipelines compressed commands right after COMPRESS
    proto.dataReceived(b"b COMPRESS DEFLATE\r\n" + z(b"c SELECT INBOX\r\n"))
    assert tr.value() == b"b OK DEFLATE active\r\n"
    tr.clear()
    env.reactor.advance(0)
    proto.dataReceived(z(b"d APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\ne FETCH 1 BODY[]\r\n"))
    out = client_in.decompress(drain(tr))
    assert b"c OK [READ-WRITE]" in out and b"d OK [APPENDUID" in out
    assert MESSAGE in out and out.endswith(b"e OK FETCH completed\r\n")
    # a decompression bomb is inflated step by step, and a too-long line is refused, not stored
    proto.dataReceived(z(b"f NOOP " + b"x" * 3_000_000 + b"\r\ng NOOP\r\n"))
    out = client_in.decompress(tr.value())
    assert b"f BAD Line too long" in out and out.endswith(b"g OK NOOP completed\r\n")
    assert proto.engine.framer.buffered() < 200_000
    tr.clear()
    proto.dataReceived(b"garbage that is not deflate \xff\xff\xff")
    assert tr.closed
    proto.connectionLost(None)


def test_bad_sasl_plain_is_a_logged_delayed_failure_on_both_ports(env):
    """A malformed PLAIN response or a foreign authorization identity writes the fail2ban line (service
    ``imap`` on 993 too), waits ``auth.failure_delay`` like a wrong password, and counts toward
    ``auth.max_failures`` (DESIGN §4)."""
    import base64

    from twisted.logger import globalLogPublisher

    lines: list[str] = []

    def observer(event: dict) -> None:
        from twisted.logger import formatEvent
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        factory = build_factory(env, "imaps")
        proto, tr = connect(env, factory)
        tr.clear()
        proxy = base64.b64encode(b"bob@example.org\0alice@example.org\0secret")
        proto.dataReceived(b"a AUTHENTICATE PLAIN " + proxy + b"\r\nb NOOP\r\n")
        assert tr.value() == b""  # the answer waits for failure_delay, like a wrong password
        env.reactor.advance(env.settings.auth.failure_delay)
        assert tr.value() == b"a NO [AUTHORIZATIONFAILED] No proxy authentication\r\nb OK NOOP completed\r\n"
        tr.clear()
        proto.dataReceived(b"c AUTHENTICATE PLAIN\r\n" + base64.b64encode(b"\0only-one-nul") + b"\r\n")
        env.reactor.advance(env.settings.auth.failure_delay)
        assert tr.value() == b"+ \r\nc BAD Malformed PLAIN response\r\n"
        tr.clear()
        proto.dataReceived(b"d LOGIN alice@example.org wrong\r\n")
        assert b"d NO [AUTHENTICATIONFAILED]" in tr.value() and b"* BYE" in tr.value() and tr.closed
        assert env.accounts.calls == [("imap", "127.0.0.1")]  # service "imap" on 993 as on 143
        proto.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert "mailsuite auth failure: service=imap ip=127.0.0.1 user=alice@example.org" in lines
    assert "mailsuite auth failure: service=imap ip=127.0.0.1 user=only-one-nul" in lines
