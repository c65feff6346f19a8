"""The POP3 adapter: a thin twisted Protocol around ``Pop3Engine`` that runs its actions.

``build_factory(ctx, service)`` serves ``pop3`` (110, STLS) and ``pop3s`` (995; service.py wraps the factory
in TLS).  The adapter writes replies, starts TLS, checks passwords through ``ctx.accounts``, holds the
per-user POP3 lock, sends messages from the store through the dot-stuffer (in one write when the message
fits in one read, else through a producer), sets ``\\Seen`` on the retrieved messages in one batch when the
session ends, and removes the messages marked with DELE at QUIT.  Protocol decisions stay in the engine.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from typing import Any, BinaryIO, Callable

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from ..fastwrite import write_now
from ..limits import PerIPCounter, is_loopback
from ..logtext import Logger
from .dotstuff import DotStuffer
from .engine import (Authenticate, Close, CommitDeletions, EngineConfig, Event, OpenMaildrop, Pop3Engine, Reply,
                     SendMessage, StartTLS)
from .maildrop import Maildrop

__all__ = ["build_factory", "Pop3Protocol", "Pop3Factory"]

log = Logger()

#: bytes read from a message file per step: a message up to this size goes out in one write, a bigger one
#: through a producer, one chunk each time the transport's buffer has drained (fewer, bigger socket writes)
CHUNK = 256 * 1024
#: pause reading from a client that pipelines this much while an action runs
MAX_BUFFERED = 64 * 1024

# one POP3 lock set per store object (RFC 1939 §8: one session per maildrop), shared by 110 and 995
_LOCKS: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()


def _locks(store: Any) -> set[str]:
    """The users whose maildrop a POP3 session holds, for this store."""
    return _LOCKS.setdefault(store, set())


def _size(handle: BinaryIO) -> int:
    """The size of an open message file (CHUNK when it has no file descriptor, e.g. a test's BytesIO)."""
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, ValueError, AttributeError):
        return CHUNK


@implementer(interfaces.IPullProducer)
class _MessageSender:
    """Streams one message file through a DotStuffer to the transport, one chunk per ``resumeProducing``."""

    def __init__(self, transport: Any, handle: BinaryIO, stuffer: DotStuffer, progress: Any) -> None:
        self.transport, self.handle, self.stuffer, self.progress = transport, handle, stuffer, progress
        self.deferred: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        self.transport.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        if self.deferred.called:
            return
        try:
            chunk = self.handle.read(CHUNK)
        except OSError as exc:
            self._end(exc)
            return
        self.progress()         # a slow reader of a big message is not idle
        if chunk:
            data = self.stuffer.feed(chunk)
            if data:
                self.transport.write(data)
        if not chunk or self.stuffer.done:
            self.transport.write(self.stuffer.finish())
            self._end(None)

    def stopProducing(self) -> None:
        self._end(ConnectionError("connection lost while sending a message"))

    def _end(self, error: BaseException | None) -> None:
        if self.deferred.called:
            return
        self.handle.close()
        self.transport.unregisterProducer()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)


@implementer(interfaces.IPushProducer)
class _WriteGate:
    """Registered with the transport while no message streams.  When a client sends commands but does not read
    the replies, the transport's send buffer fills and pauses this producer: the protocol then holds new input
    instead of answering it, and stops reading once that much is held (DESIGN §4: no unbounded buffer; without
    it a few MB of pipelined ``CAPA`` grew the process thirty-fold).  A TLS layer also pauses its producer while
    the handshake is pending, so reading itself must go on until the held input is large."""

    def __init__(self, protocol: "Pop3Protocol") -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._write_full = True

    def resumeProducing(self) -> None:
        self.protocol._write_full = False
        self.protocol._drained()

    def stopProducing(self) -> None:
        self.protocol._write_full = False


class Pop3Protocol(Protocol, TimeoutMixin):
    """One POP3 connection."""

    def __init__(self, factory: "Pop3Factory") -> None:
        self.factory = factory
        self.ctx = factory.ctx
        self.engine: Pop3Engine | None = None
        self.peer = "?"
        self.maildrop: Maildrop | None = None
        self.locked_user: str | None = None
        self._events: deque[Event] = deque()
        self._running = False
        self._gone = False
        self._paused = False
        self._sender: _MessageSender | None = None
        self._counted = False
        self._gate = _WriteGate(self)
        self._gate_registered = False
        self._write_full = False           # the transport's send buffer is full (see _WriteGate)
        self._held = bytearray()           # input read while _write_full, answered once the replies drain
        self._sent_pending = False         # a message went out in one write; go on once the replies drain
        self._seen: dict[str, None] = {}   # keys retrieved by RETR (in order), \Seen when the session ends

    # -- connection --------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)     # replies are small and pipelined: send them at once
        except (AttributeError, OSError):          # not TCP (a unix socket)
            pass
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        settings = self.ctx.settings
        if not self.factory.per_ip.open(self.peer):
            # DESIGN §4: connection floods; RFC 2449 §8.1.2 SYS/TEMP: a temporary problem, try later
            self._gone = True
            self.transport.write(b"-ERR [SYS/TEMP] too many connections from your address, try again later\r\n")
            self.transport.loseConnection()
            return
        self._counted = True
        implicit = self.factory.service == "pop3s"
        plain_ok = bool(settings.auth.allow_plaintext_loopback) and is_loopback(self.peer)
        self.engine = Pop3Engine(EngineConfig(
            tls_active=implicit,
            tls_available=self.ctx.tls is not None,
            plaintext_allowed=plain_ok,
            max_auth_failures=settings.auth.max_failures,
            mark_seen_on_retr=bool(getattr(settings.pop3, "mark_seen_on_retr", True)),
        ))
        self.setTimeout(float(getattr(settings.pop3, "timeout", 600.0)))
        self._gate_on()
        self._handle(self.engine.greeting())

    def dataReceived(self, data: bytes) -> None:
        if self.engine is None or self._gone:
            return
        self.resetTimeout()
        if self._write_full or self._held:
            self._held += data
        else:
            self._handle(self.engine.receive_data(data))
        self._flow_control()

    def _drained(self) -> None:
        """The transport's send buffer drained: finish a message sent in one write, then answer held input."""
        if self._sent_pending:
            self._sent_pending = False
            if self.engine is not None and not self._gone:
                self.resetTimeout()         # a slow reader of a message is not idle
                self._feed(self.engine.message_sent())
        if not self._write_full:
            self._release_held()

    def _release_held(self) -> None:
        """The replies drained: answer the input held meanwhile."""
        if self._held and self.engine is not None and not self._gone:
            data, self._held = bytes(self._held), bytearray()
            self._handle(self.engine.receive_data(data))
        self._flow_control()

    def timeoutConnection(self) -> None:
        if self.engine is not None and self._sender is None:
            self._handle(self.engine.timeout())
        else:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        # RFC 1939 §6: a connection that ends without QUIT never enters the UPDATE state: nothing is removed
        self._gone = True
        if self._counted:
            self._counted = False
            self.factory.per_ip.close(self.peer)
        self.setTimeout(None)
        self._events.clear()
        if self._sender is not None:
            self._sender.stopProducing()
        self._flush_seen()          # what was retrieved stays retrieved, as with Dovecot
        self._unlock()

    # -- events ------------------------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        """Run events in order; results of synchronous actions queue their events behind."""
        self._events.extend(events)
        if self._running:
            return
        self._running = True
        try:
            while self._events and not self._gone:
                self._run(self._events.popleft())
        finally:
            self._running = False

    def _run(self, event: Event) -> None:
        assert self.engine is not None
        if isinstance(event, Reply):
            write_now(self.transport, event.data)
        elif isinstance(event, StartTLS):
            # RFC 2595 §4: the engine has dropped everything the client sent after STLS
            self.transport.startTLS(self.ctx.tls.server_options())
        elif isinstance(event, Close):
            self._events.clear()
            self.setTimeout(None)
            self._flush_seen()
            self._unlock()          # the session is over (QUIT, autologout, too many failures)
            self._gate_off()        # a TLS transport closes only once no producer is registered
            self.transport.loseConnection()
        elif isinstance(event, Authenticate):
            self._authenticate(event)
        elif isinstance(event, OpenMaildrop):
            self._open_maildrop(event)
        elif isinstance(event, SendMessage):
            self._send_message(event)
        elif isinstance(event, CommitDeletions):
            self._commit(event)

    def _feed(self, events: list[Event]) -> None:
        """Hand the events following an action result to ``_handle``, unless the client is gone."""
        if not self._gone:
            self._handle(events)
            self._flow_control()

    def _flow_control(self) -> None:
        """Stop reading while a pipelining client has a lot of input waiting behind a pending action."""
        if self.engine is None or self._gone:
            return
        want_pause = (self.engine.busy and self.engine.buffered > MAX_BUFFERED) or len(self._held) > MAX_BUFFERED
        if want_pause and not self._paused:
            self.transport.pauseProducing()
            self._paused = True
        elif not want_pause and self._paused:
            self.transport.resumeProducing()
            self._paused = False

    def _gate_on(self) -> None:
        if not self._gone and not self._gate_registered:
            self._gate_registered = True
            self.transport.registerProducer(self._gate, True)

    def _gate_off(self) -> None:
        """Unregister the write gate (a message sender takes the producer slot; or the session ends)."""
        if self._gate_registered:
            self._gate_registered = False
            self.transport.unregisterProducer()
            self._write_full = False

    # -- actions -----------------------------------------------------------------------------------------

    def _authenticate(self, event: Authenticate) -> None:
        assert self.engine is not None
        engine = self.engine
        # Accounts.authenticate hashes in a thread, logs the fail2ban line and delays failures
        d = defer.maybeDeferred(self.ctx.accounts.authenticate, event.user, event.password, service="pop3",
                                ip=self.peer)

        def broken(failure: Any) -> None:
            log.failure("POP3: password check failed", failure)
            return None

        d.addErrback(broken)
        d.addCallback(lambda user: self._feed(engine.auth_result(user)))

    def _open_maildrop(self, event: OpenMaildrop) -> None:
        assert self.engine is not None
        engine = self.engine
        locks = _locks(self.ctx.store)
        if event.user in locks:
            # RFC 2449 §8.1.1 IN-USE: another POP3 session holds this maildrop (IMAP and delivery go on)
            self._handle(engine.maildrop_failed(True))
            return
        locks.add(event.user)
        self.locked_user = event.user
        self.maildrop = self.factory.maildrop_factory(self.ctx.store, event.user)
        d = defer.maybeDeferred(self.maildrop.open)

        def opened(entries: Any) -> None:
            log.info("pop3 login: user={user} ip={ip} messages={count}", user=event.user, ip=self.peer,
                     count=len(entries))
            self._feed(engine.maildrop_opened(entries))

        def failed(failure: Any) -> None:
            log.failure("POP3: cannot open the maildrop of {user}", failure, user=event.user)
            self._unlock()
            self._feed(engine.maildrop_failed(False))

        d.addCallbacks(opened, failed)

    def _send_message(self, event: SendMessage) -> None:
        assert self.engine is not None and self.maildrop is not None
        engine, maildrop = self.engine, self.maildrop
        try:
            handle = maildrop.open_message(event.key)
        except (OSError, LookupError):
            self._handle(engine.message_failed())
            return
        crlf = getattr(maildrop, "crlf", None)
        stuffer = DotStuffer(event.body_lines, crlf=bool(crlf is not None and crlf(event.key)))
        try:
            # ask for the file's size + 1, not CHUNK: a read of n bytes allocates n first (256 KiB for a 4 KB
            # message cost 11 us more per RETR, bench 3); a short read still means the end of the file
            want = min(CHUNK, _size(handle) + 1)
            first = handle.read(want)
        except OSError:
            handle.close()
            self._handle(engine.message_failed())      # nothing written yet
            return
        data = stuffer.feed(first) if first else b""
        # RFC 1939 §5 RETR / §7 TOP: dot-stuffed; a message that fits in one read goes out in one write
        if len(first) < want or stuffer.done:
            handle.close()
            # sent at once when the socket is idle (mailsuite/fastwrite.py: no reactor round per message)
            write_now(self.transport, b"".join((event.ok_line, data, stuffer.finish())))
            self._message_done(event)
            return
        # a bigger one is streamed (no whole copy in memory), one chunk each time the transport drained
        write_now(self.transport, event.ok_line + data)
        self._gate_off()
        self._sender = _MessageSender(self.transport, handle, stuffer, self.resetTimeout)

        def sent(_: Any) -> None:
            self._sender = None
            self._gate_on()
            self._message_done(event)

        def broken(failure: Any) -> None:
            self._sender = None
            if not self._gone:
                # part of the message is out: the only safe way on is to drop the connection
                log.failure("POP3: error while sending {key}", failure, key=event.key)
                self.transport.abortConnection()

        self._sender.start().addCallbacks(sent, broken)

    def _message_done(self, event: SendMessage) -> None:
        """The whole message is written: remember it for ``\\Seen``; answer the next commands, or, while the
        send buffer is over its limit (the transport paused the write gate), once it has drained."""
        if event.mark_seen:
            self._seen[event.key] = None
        if self._write_full:
            self._sent_pending = True
            return
        assert self.engine is not None
        self._feed(self.engine.message_sent())
        self._release_held()

    def _flush_seen(self, skip: "set[str] | frozenset[str]" = frozenset()) -> None:
        """Set ``\\Seen`` on the messages retrieved in this session, in one store call (one index commit), when
        the session ends: at QUIT, or when the connection ends otherwise (deletions need QUIT, RFC 1939 §6;
        \\Seen does not, as with Dovecot).  ``skip``: messages about to be removed anyway."""
        keys, self._seen = [k for k in self._seen if k not in skip], {}
        if not keys or self.maildrop is None:
            return
        try:
            self.maildrop.mark_seen(keys)
        except Exception:
            log.failure("POP3: cannot set \\Seen on {count} messages of {user}", count=len(keys),
                        user=self.locked_user)

    def _commit(self, event: CommitDeletions) -> None:
        """RFC 1939 §6 UPDATE: remove the marked messages through the store (IMAP sees them go)."""
        assert self.engine is not None and self.maildrop is not None
        engine = self.engine
        self._flush_seen(set(event.keys))
        d = defer.maybeDeferred(self.maildrop.remove, event.keys)

        def failed(failure: Any) -> bool:
            log.failure("POP3: cannot remove messages of {user}", failure, user=event.user)
            return False

        def finish(ok: Any) -> None:
            self._unlock()
            self._feed(engine.update_done(bool(ok)))

        d.addErrback(failed)
        d.addCallback(finish)

    def _unlock(self) -> None:
        if self.locked_user is not None:
            _locks(self.ctx.store).discard(self.locked_user)
            self.locked_user = None


class Pop3Factory(ServerFactory):
    noisy = False

    def __init__(self, ctx: Any, service: str, maildrop_factory: Callable[[Any, str], Maildrop] | None = None) -> None:
        self.ctx, self.service = ctx, service
        self.per_ip = PerIPCounter(int(getattr(ctx.settings.pop3, "max_connections_per_ip", 20)))
        if maildrop_factory is None:
            from twisted.internet import threads

            from .maildrop import InboxMaildrop

            def maildrop_factory(store: Any, user: str) -> Maildrop:
                # message sizes are measured once per file, in a thread (RFC 1939 §11 CRLF counting)
                return InboxMaildrop(store, user, runner=threads.deferToThread)
        self.maildrop_factory = maildrop_factory

    def buildProtocol(self, addr: Any) -> Pop3Protocol:
        return Pop3Protocol(self)


def build_factory(ctx: Any, service: str) -> Pop3Factory:
    """The factory for listener ``service`` (``pop3`` with STLS, ``pop3s`` wrapped in TLS by service.py)."""
    return Pop3Factory(ctx, service)
