"""The POP3 adapter over an in-memory transport: actions run, locks, streaming, STLS, timeouts."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailsuite.config import default_settings, parse_settings
from mailsuite.pop3.adapter import CHUNK, Pop3Factory
from mailsuite.pop3.engine import DropEntry

from .test_pop3_dotstuff import reference

PASSWORDS = {"alice@example.org": "secret", "bob@example.org": "pw"}


class FakeAccounts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def authenticate(self, login: str, password: str, *, service: str, ip: str) -> defer.Deferred:
        self.calls.append((login, password, service, ip))
        return defer.succeed(login if PASSWORDS.get(login) == password else None)


class FakeTLS:
    def server_options(self) -> str:
        return "tls-options"


@dataclass(eq=False)
class FakeStore:
    mail: dict[str, dict[str, bytes]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    seen_calls: int = 0
    removed: list[str] = field(default_factory=list)
    opened: int = 0


class FakeMaildrop:
    def __init__(self, store: FakeStore, user: str) -> None:
        self.store, self.user = store, user
        self.snapshot: dict[str, bytes] = {}

    def open(self) -> list[DropEntry]:
        self.store.opened += 1
        self.snapshot = dict(self.store.mail.get(self.user, {}))
        return [DropEntry(k, len(v), "u-" + k) for k, v in self.snapshot.items()]

    def open_message(self, key: str) -> io.BytesIO:
        if key not in self.store.mail.get(self.user, {}):
            raise LookupError(key)
        return io.BytesIO(self.store.mail[self.user][key])

    def mark_seen(self, keys: Sequence[str]) -> None:
        self.store.seen_calls += 1
        self.store.seen.update(keys)

    def remove(self, keys: Sequence[str]) -> bool:
        for key in keys:
            del self.store.mail[self.user][key]
            self.store.removed.append(key)
        return True


class TLSCapableTransport(StringTransport):
    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls: Any = None
        self.nodelay = False

    def startTLS(self, options: Any) -> None:
        self.tls = options

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # like twisted's FileDescriptor: a pull producer is asked for data at once
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()


@dataclass
class Ctx:
    settings: Any
    accounts: Any
    store: Any
    tls: Any
    reactor: Any


class Client:
    def __init__(self, ctx: Ctx, service: str = "pop3", peer: str = "192.0.2.7") -> None:
        self.factory = Pop3Factory(ctx, service, FakeMaildrop)
        self.proto = self.factory.buildProtocol(None)
        self.clock = Clock()
        self.proto.callLater = self.clock.callLater      # TimeoutMixin's clock
        self.transport = TLSCapableTransport(peer)
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.proto.dataReceived(data)
        self.pump()
        return self.transport.value()

    def pump(self) -> None:
        for _ in range(100000):
            producer = self.transport.producer
            if producer is None or self.transport.streaming:     # the write gate, not a message sender
                return
            producer.resumeProducing()
        raise AssertionError("producer never finished")


def make_ctx(config: str = "", mail: dict[str, dict[str, bytes]] | None = None) -> Ctx:
    settings = parse_settings(config) if config else default_settings()
    return Ctx(settings, FakeAccounts(), FakeStore(mail or {}), FakeTLS(), Clock())


def login(client: Client) -> bytes:
    client.send(b"STLS\r\n")
    return client.send(b"USER alice@example.org\r\nPASS secret\r\n")


def test_greeting_nodelay_and_stls() -> None:
    ctx = make_ctx()
    client = Client(ctx)
    assert client.transport.value() == b"+OK mailsuite POP3 server ready\r\n"
    assert client.transport.nodelay
    assert client.send(b"STLS\r\nUSER alice@example.org\r\n") == b"+OK begin TLS negotiation\r\n"
    assert client.transport.tls == "tls-options"
    assert client.send(b"PASS secret\r\n") == b"-ERR PASS must follow USER\r\n"
    assert ctx.accounts.calls == []


def test_plaintext_refused_without_tls() -> None:
    ctx = make_ctx()
    client = Client(ctx)
    assert client.send(b"USER alice@example.org\r\n").startswith(b"-ERR [SYS/PERM]")
    assert ctx.accounts.calls == []


def test_loopback_exemption_only_by_config_and_only_on_loopback() -> None:
    ctx = make_ctx("[auth]\nallow_plaintext_loopback = true\n", {"alice@example.org": {}})
    assert Client(ctx, peer="127.0.0.1").send(b"USER alice@example.org\r\n") == b"+OK send PASS\r\n"
    assert Client(ctx, peer="192.0.2.1").send(b"USER alice@example.org\r\n").startswith(b"-ERR [SYS/PERM]")
    assert Client(make_ctx(), peer="127.0.0.1").send(b"USER x\r\n").startswith(b"-ERR [SYS/PERM]")


def test_implicit_tls_service_allows_login() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"k1": b"a\r\n"}})
    client = Client(ctx, "pop3s")
    out = client.send(b"CAPA\r\nUSER alice@example.org\r\nPASS secret\r\n")
    assert b"STLS" not in out and out.endswith(b"+OK logged in, 1 messages (3 octets)\r\n")
    assert ctx.accounts.calls == [("alice@example.org", "secret", "pop3", "192.0.2.7")]


def test_retr_streams_large_message_in_chunks() -> None:
    body = b"Subject: big\r\n\r\n" + (b".dot line\r\n" + b"y" * 998 + b"\r\n") * 1200
    ctx = make_ctx(mail={"alice@example.org": {"big": body}})
    client = Client(ctx)
    login(client)
    client.transport.clear()
    client.proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    first = client.transport.value()
    # not the whole message at once: the first read, then one chunk (the test transport resumes at once)
    assert len(first) < len(body) and len(first) <= 2 * CHUNK + 1000
    client.pump()
    out = client.transport.value()
    expected = b"+OK %d octets\r\n" % len(body) + body.replace(b"\r\n.", b"\r\n..") + b".\r\n+OK\r\n"
    assert out == expected
    assert ctx.store.seen == set()                 # \Seen is set when the session ends, in one batch
    assert client.send(b"QUIT\r\n") == b"+OK bye\r\n"
    assert ctx.store.seen == {"big"} and ctx.store.seen_calls == 1


def test_mark_seen_can_be_turned_off() -> None:
    ctx = make_ctx("[pop3]\nmark_seen_on_retr = false\n", {"alice@example.org": {"k": b"x\r\n"}})
    client = Client(ctx)
    login(client)
    assert client.send(b"RETR 1\r\n") == b"+OK 3 octets\r\nx\r\n.\r\n"
    assert ctx.store.seen == set()


def test_top_and_missing_message() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"H: 1\r\n\r\nb1\r\nb2\r\n", "b": b"x\r\n"}})
    client = Client(ctx)
    login(client)
    assert client.send(b"TOP 1 1\r\n") == b"+OK top of message follows\r\nH: 1\r\n\r\nb1\r\n.\r\n"
    del ctx.store.mail["alice@example.org"]["b"]          # removed by IMAP after login
    assert client.send(b"RETR 2\r\n") == b"-ERR [SYS/TEMP] message no longer available\r\n"
    assert ctx.store.seen == set()


def test_dele_quit_removes_and_drop_does_not() -> None:
    mail = {"alice@example.org": {"a": b"1\r\n", "b": b"2\r\n"}}
    ctx = make_ctx(mail=mail)
    client = Client(ctx)
    login(client)
    client.send(b"DELE 1\r\n")
    client.proto.connectionLost(None)
    assert ctx.store.removed == [] and set(mail["alice@example.org"]) == {"a", "b"}
    client = Client(ctx)
    login(client)
    assert client.send(b"DELE 2\r\nQUIT\r\n") == b"+OK message 2 deleted\r\n+OK bye\r\n"
    assert client.transport.disconnecting
    assert ctx.store.removed == ["b"]


def test_in_use_and_lock_released() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"1\r\n"}})
    first = Client(ctx)
    login(first)
    second = Client(ctx)
    assert login(second).endswith(b"-ERR [IN-USE] maildrop already locked by another POP3 session\r\n")
    assert Client(ctx, "pop3s").send(b"USER alice@example.org\r\nPASS secret\r\n").startswith(b"+OK send PASS\r\n-ERR [IN-USE]")
    first.proto.connectionLost(None)
    third = Client(ctx)
    assert login(third).endswith(b"+OK logged in, 1 messages (3 octets)\r\n")
    third.send(b"QUIT\r\n")
    assert login(Client(ctx)).startswith(b"+OK send PASS\r\n+OK logged in")


def test_failed_login_closes_after_max_failures() -> None:
    ctx = make_ctx()
    client = Client(ctx)
    client.send(b"STLS\r\n")
    out = client.send(b"USER alice@example.org\r\nPASS no\r\n" * 3)
    assert out.count(b"-ERR [AUTH]") == 3 and client.transport.disconnecting


def test_idle_timeout_closes_without_update() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"1\r\n"}})
    client = Client(ctx)
    login(client)
    client.send(b"DELE 1\r\n")
    client.transport.clear()
    client.clock.advance(599)
    assert not client.transport.disconnecting
    client.clock.advance(2)
    assert client.transport.value() == b"-ERR autologout; idle for too long\r\n"
    assert client.transport.disconnecting and ctx.store.removed == []


def test_pipelined_commands_answered_in_order() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"A\r\n", "b": b"B\r\n"}})
    client = Client(ctx)
    client.send(b"STLS\r\n")
    out = client.send(b"USER alice@example.org\r\nPASS secret\r\nRETR 2\r\nRETR 1\r\nUIDL\r\nQUIT\r\n")
    assert out == (b"+OK send PASS\r\n+OK logged in, 2 messages (6 octets)\r\n+OK 3 octets\r\nB\r\n.\r\n"
                   b"+OK 3 octets\r\nA\r\n.\r\n+OK 2 messages\r\n1 u-a\r\n2 u-b\r\n.\r\n+OK bye\r\n")


def test_many_pipelined_retr_do_not_recurse() -> None:
    mail = {"alice@example.org": {f"m{i}": b"x\r\n" for i in range(400)}}
    client = Client(make_ctx(mail=mail))
    login(client)
    out = client.send(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(400)))
    assert out.count(b"+OK 3 octets\r\nx\r\n.\r\n") == 400


def test_connection_lost_while_streaming() -> None:
    body = b"z" * (CHUNK * 4)
    ctx = make_ctx(mail={"alice@example.org": {"a": body}})
    client = Client(ctx)
    login(client)
    client.proto.dataReceived(b"RETR 1\r\n")
    assert client.transport.producer is not None
    client.proto.connectionLost(None)
    assert client.transport.producer is None
    assert ctx.store.seen == set()


def test_loopback_detection() -> None:
    from mailsuite.limits import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("?")


def test_client_that_does_not_read_replies_is_not_read_either() -> None:
    """DESIGN §4, no unbounded buffers: while the replies pile up in the send buffer (the transport pauses its
    producer) new commands are held, not answered, and reading stops once much is held; a message sender
    borrows the producer slot and gives it back; the slot is free before the connection closes."""
    from mailsuite.pop3.adapter import MAX_BUFFERED
    ctx = make_ctx(mail={"alice@example.org": {"a": b"A\r\n"}})
    client = Client(ctx)
    gate = client.transport.producer
    assert gate is not None and client.transport.streaming
    gate.pauseProducing()                     # what a transport does when its send buffer is over its limit
    assert client.send(b"CAPA\r\n" * (MAX_BUFFERED // 6)) == b""
    assert client.transport.producerState == "producing"          # a TLS handshake may still need reading
    assert client.send(b"CAPA\r\n" * 10) == b""
    assert client.transport.producerState == "paused"             # now too much is held
    client.transport.clear()
    gate.resumeProducing()                    # the replies drained
    assert client.transport.value().count(b"+OK capability list follows") == MAX_BUFFERED // 6 + 10
    assert client.transport.producerState == "producing"
    login(client)
    assert client.send(b"RETR 1\r\n") == b"+OK 3 octets\r\nA\r\n.\r\n"
    assert client.transport.producer is gate and client.transport.streaming
    assert client.send(b"QUIT\r\n") == b"+OK bye\r\n"
    assert client.transport.producer is None and client.transport.disconnecting


# -- issue 7: one write per small message, bigger chunks, \Seen in one batch when the session ends ---------


class CRLFMaildrop(FakeMaildrop):
    """A maildrop that vouches for the CRLF line ends of the keys starting with "crlf"."""

    def crlf(self, key: str) -> bool:
        return key.startswith("crlf")


class DrainingTransport(TLSCapableTransport):
    """Like twisted's FileDescriptor: a write that takes the buffer over ``limit`` pauses a streaming
    producer; ``drain()`` empties the buffer and resumes it."""

    limit = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.limit \
                and self.producerState != "paused":
            self.producer.pauseProducing()
            self.producerState = "paused"

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def drain(self) -> bytes:
        out = self.value()
        self.clear()
        if self.producer is not None and self.streaming and self.producerState == "paused":
            self.producerState = "producing"
            self.producer.resumeProducing()
        return out


def _client(ctx: Ctx, maildrop: Any = CRLFMaildrop, transport: Any = TLSCapableTransport) -> Client:
    client = Client.__new__(Client)
    client.factory = Pop3Factory(ctx, "pop3", maildrop)
    client.proto = client.factory.buildProtocol(None)
    client.clock = Clock()
    client.proto.callLater = client.clock.callLater
    client.transport = transport("192.0.2.7")
    client.proto.makeConnection(client.transport)
    return client


def test_small_message_goes_out_in_one_write_without_a_producer() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b".x\r\ny\r\n"}})
    client = Client(ctx)
    login(client)
    gate = client.transport.producer
    client.transport.clear()
    client.proto.dataReceived(b"RETR 1\r\nNOOP\r\n")          # no pump: nothing is streamed
    assert client.transport.value() == b"+OK 7 octets\r\n..x\r\ny\r\n.\r\n+OK\r\n"
    assert client.transport.producer is gate and client.transport.streaming


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 3, 2 * CHUNK + 2])
@pytest.mark.parametrize("shift", [-1, 0, 1, 2])
@pytest.mark.parametrize("key", ["crlf", "other"])
def test_sizes_around_the_chunk_with_a_dot_line_on_the_boundary(size: int, shift: int, key: str) -> None:
    """A "\r\n." whose "." sits at CHUNK + shift: the read boundary falls after the ".", between LF and
    ".", between CR and LF, or before the CR (and the same at 2 * CHUNK)."""
    line = b"x" * 98 + b"\r\n"
    body = bytearray((line * (size // 100 + 2))[:size])
    for at in (CHUNK + shift, 2 * CHUNK + shift):
        if at < size:
            body[at - 2:at + 1] = b"\r\n."
    body = bytes(body)
    ctx = make_ctx(mail={"alice@example.org": {key: body}})
    client = _client(ctx)
    login(client)
    out = client.send(b"RETR 1\r\nQUIT\r\n")
    wire = body if body.endswith(b"\r\n") else body + b"\r\n"
    assert out == b"+OK %d octets\r\n" % len(body) + wire.replace(b"\r\n.", b"\r\n..") + b".\r\n+OK bye\r\n"
    assert out.count(b"\r\n..") == sum(1 for at in (CHUNK + shift, 2 * CHUNK + shift) if at < size)
    assert ctx.store.seen == {key}


def test_the_maildrop_crlf_promise_reaches_the_stuffer() -> None:
    mail = {"crlf-vouched": b"a\nb\r\n", "plain": b"a\nb\r\n"}
    client = _client(make_ctx(mail={"alice@example.org": mail}))
    login(client)
    assert client.send(b"RETR 1\r\n") == b"+OK 5 octets\r\na\nb\r\n.\r\n"          # no LF check
    assert client.send(b"RETR 2\r\n") == b"+OK 5 octets\r\na\r\nb\r\n.\r\n"        # LF → CRLF


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b".", b"\r\n", b"\r\n.", b"ab", b"\r", b"\n", b"..", b" "]), max_size=60)
       .map(b"".join), st.integers(1, 9), st.booleans())
def test_any_message_and_chunk_size_sent_exactly(monkeypatch: pytest.MonkeyPatch, message: bytes, chunk: int,
                                                 crlf: bool) -> None:
    """Whatever the chunk size: RETR sends what the whole-message reference stuffer gives."""
    from mailsuite.pop3 import adapter
    if crlf:
        message = message.replace(b"\n", b"").replace(b"\r", b"\r\n")
    key = "crlf" if crlf else "x"
    monkeypatch.setattr(adapter, "CHUNK", chunk)
    client = _client(make_ctx(mail={"alice@example.org": {key: message}}))
    login(client)
    out = client.send(b"RETR 1\r\nTOP 1 1\r\n")
    first = b"+OK %d octets\r\n" % len(message)
    assert out == first + reference(message) + b"+OK top of message follows\r\n" + reference(message, 1)


def test_seen_is_set_in_one_batch_at_quit_and_not_on_top_or_deleted() -> None:
    mail = {"alice@example.org": {k: b"%s\r\n" % k.encode() for k in ("a", "b", "c", "d")}}
    ctx = make_ctx(mail=mail)
    client = Client(ctx)
    login(client)
    client.send(b"RETR 1\r\nRETR 2\r\nRETR 2\r\nTOP 3 0\r\nRETR 4\r\nDELE 4\r\n")
    assert ctx.store.seen == set() and ctx.store.seen_calls == 0       # nothing until the session ends
    assert client.send(b"QUIT\r\n") == b"+OK bye\r\n"
    assert ctx.store.seen == {"a", "b"} and ctx.store.seen_calls == 1  # one call; "d" is removed anyway
    assert ctx.store.removed == ["d"]


def test_seen_is_set_when_the_connection_drops_but_nothing_is_removed() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"1\r\n", "b": b"2\r\n"}})
    client = Client(ctx)
    login(client)
    client.send(b"RETR 2\r\nDELE 1\r\n")
    client.proto.connectionLost(None)
    assert ctx.store.seen == {"b"} and ctx.store.seen_calls == 1 and ctx.store.removed == []
    client.proto.connectionLost(None)                                    # twice: no second batch
    assert ctx.store.seen_calls == 1


def test_seen_is_set_at_autologout() -> None:
    ctx = make_ctx(mail={"alice@example.org": {"a": b"1\r\n"}})
    client = Client(ctx)
    login(client)
    client.send(b"RETR 1\r\n")
    client.clock.advance(601)
    assert client.transport.disconnecting and ctx.store.seen == {"a"}


def test_seen_failure_is_logged_and_quit_still_answers() -> None:
    class Failing(FakeMaildrop):
        def mark_seen(self, keys: Sequence[str]) -> None:
            raise OSError("disk gone")

    from twisted.logger import globalLogPublisher
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        ctx = make_ctx(mail={"alice@example.org": {"a": b"1\r\n"}})
        client = _client(ctx, Failing)
        login(client)
        client.send(b"RETR 1\r\n")
        assert client.send(b"QUIT\r\n") == b"+OK bye\r\n"
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0].check(OSError)


def test_pipelined_retr_waits_for_the_send_buffer_to_drain() -> None:
    """A message written in one go that fills the send buffer: the next pipelined command is answered
    only once the buffer has drained (no unbounded buffer with many pipelined RETRs)."""
    big = b"y" * 100_000 + b"\r\n"
    mail = {"alice@example.org": {"a": big, "b": big, "c": b"c\r\n"}}
    client = _client(make_ctx(mail=mail), transport=DrainingTransport)
    login(client)
    client.transport.clear()
    client.proto.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 3\r\nQUIT\r\n")
    first = client.transport.drain()
    assert first == b"+OK 100002 octets\r\n" + big + b".\r\n"           # RETR 2 waits
    second = client.transport.drain()
    assert second == b"+OK 100002 octets\r\n" + big + b".\r\n"
    rest = client.transport.drain()
    assert rest == b"+OK 3 octets\r\nc\r\n.\r\n+OK bye\r\n"
    assert client.transport.disconnecting
