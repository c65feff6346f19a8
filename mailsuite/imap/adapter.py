"""The IMAP adapter: a thin twisted Protocol around :class:`~mailsuite.imap.engine.ImapEngine`.

``build_factory(ctx, service)`` serves ``imap`` (143, STARTTLS) and ``imaps`` (993; service.py wraps the
factory in TLS, RFC 8314).  The adapter writes the engine's bytes, starts TLS, checks passwords through
``ctx.accounts``, streams FETCH responses through a pull producer (big bodies go out chunk by chunk from
the file), runs store Deferreds (APPEND), and turns store change notifications into ``poll()`` calls so
an IDLE client hears ``* N EXISTS`` as soon as a message is delivered (RFC 2177).  Changes made by other
programs are found by one rescan per IDLE mailbox (:class:`OutsideWatch`), shared by all its sessions.
Protocol decisions stay in the engine.

Memory per idle session is what bench 7a measures (2000 IDLE sessions): the timers of all sessions — the
autologout and the outside-change rescans — are one :class:`Deadlines` each per factory instead of a
``DelayedCall`` per session, replies go out through :func:`~mailsuite.fastwrite.write_now` (no Twisted write
buffer left on the transport), and the per-session classes use ``__slots__``.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Callable, Iterator

from twisted.internet import defer, interfaces, task
from twisted.internet.protocol import Protocol, ServerFactory
from zope.interface import implementer

from ..accounts import AUTH_FAILURE_FORMAT
from ..fastwrite import write_now
from ..limits import PerIPCounter, is_loopback
from ..logtext import Logger
from ..store.errors import MailboxNotFound
from .backend import Mailbox, UserMail
from .engine import (Authenticate, AuthFailed, Await, Close, EngineConfig, ImapEngine, Output, StartCompression,
                     StartTLS, Stream)

__all__ = ["build_factory", "Deadlines", "ImapProtocol", "ImapFactory", "OutsideWatch"]

log = Logger()

WRITE_BATCH = 64 * 1024  # bytes written per producer step
INFLATE_STEP = 64 * 1024  # COMPRESS=DEFLATE input is inflated at most this much at a time
OUTSIDE_CHANGES_POLL = 15.0  # seconds between Maildir rescans of an IDLE mailbox (changes by other tools)
#: the service name in the fail2ban line, for 143 and 993 alike (one name per protocol keeps the jail simple)
AUTH_SERVICE = "imap"


def _shown_user(user: str) -> str:
    """The user name as the fail2ban line shows it: printable, no spaces, bounded ("-" when empty)."""
    return "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in user)[:100] or "-"


class Deadlines:
    """Keys that each expire ``period`` seconds after they were last armed, all served by one ``DelayedCall``.

    Every key has the same period, so the deadlines fall in the order the keys were armed: an insertion-ordered
    dict (re-arming moves a key to the end) keeps them sorted, and one timer set for the first deadline is
    enough.  ``expire(key)`` is called for each key whose deadline has passed (it has been disarmed by then and
    may arm itself again).  Per key this costs a dict entry and a float instead of a ``DelayedCall`` (about
    450 bytes with its bound methods), and timing is the same as a ``DelayedCall`` per key."""

    __slots__ = ("reactor", "period", "_expire", "_due", "_call")

    def __init__(self, reactor: Any, period: float, expire: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self.period = period
        self._expire = expire
        self._due: dict[Any, float] = {}
        self._call: Any = None

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: Any) -> bool:
        return key in self._due

    def arm(self, key: Any) -> None:
        """(Re)start ``key``'s period now."""
        due = self._due
        due.pop(key, None)
        due[key] = self.reactor.seconds() + self.period
        if self._call is None:
            self._call = self.reactor.callLater(self.period, self._run)

    def rearm(self, key: Any) -> None:
        """Restart ``key``'s period if it is armed (activity on a session with a timeout)."""
        if key in self._due:
            self.arm(key)

    def disarm(self, key: Any) -> None:
        due = self._due
        if due.pop(key, None) is not None and not due and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _run(self) -> None:
        self._call = None
        due = self._due
        now = self.reactor.seconds()
        while due:
            key = next(iter(due))
            if due[key] > now:
                break
            del due[key]
            try:
                self._expire(key)
            except Exception:
                log.failure("IMAP: timer of {key!r} failed", key=key)
        if due and self._call is None:
            self._call = self.reactor.callLater(max(0.0, due[next(iter(due))] - now), self._run)


class OutsideWatch:
    """The outside-change rescan of one shared :class:`Mailbox` (the store keeps one per user and folder) for
    all the sessions IDLE on it: every ``OUTSIDE_CHANGES_POLL`` seconds (the factory's shared
    :class:`Deadlines`) it syncs the mailbox once with the Maildir.  A sync that finds changes notifies the
    store's listeners, which wake each session (RFC 2177), so the sessions themselves do not rescan."""

    __slots__ = ("mailbox", "sessions", "syncs", "_factory")

    def __init__(self, factory: "ImapFactory", mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        #: the sessions IDLE on it: a handful at most per mailbox (a list is a third of a set's size)
        self.sessions: list["ImapProtocol"] = []
        self.syncs = 0  # Maildir syncs made (tests and profiling)
        self._factory = factory

    def join(self, proto: "ImapProtocol") -> None:
        if proto not in self.sessions:
            self.sessions.append(proto)
        if self not in self._factory.outside_timer:
            self._factory.outside_timer.arm(self)

    def leave(self, proto: "ImapProtocol") -> None:
        if proto in self.sessions:
            self.sessions.remove(proto)
        if not self.sessions:
            self._factory.outside_timer.disarm(self)
            self._factory._watch_done(self)

    def _tick(self) -> None:
        self.syncs += 1
        try:
            self.mailbox.sync()  # changes -> store listeners -> each session's _wakeup
        except MailboxNotFound:
            # the folder is gone: each session finds out by itself and says BYE (RFC 3501 §7.1.5)
            for proto in list(self.sessions):
                proto._poll(outside=True)
        except Exception:
            log.failure("IMAP: syncing {mailbox} with its Maildir failed", mailbox=self.mailbox.name)
        if self.sessions and self not in self._factory.outside_timer:
            self._factory.outside_timer.arm(self)


@implementer(interfaces.IPullProducer)
class _StreamSender:
    """Writes an engine :class:`Stream` to the transport as the transport asks for more."""

    def __init__(self, proto: "ImapProtocol", chunks: Iterator[bytes]) -> None:
        self.proto = proto
        self.chunks = chunks
        self.deferred: defer.Deferred = defer.Deferred()
        self.done = False

    def start(self) -> defer.Deferred:
        self.proto.transport.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        if self.done:
            return
        out: list[bytes] = []
        size = 0
        try:
            while size < WRITE_BATCH:
                chunk = next(self.chunks)
                out.append(chunk)
                size += len(chunk)
        except StopIteration:
            self.proto.write(b"".join(out))
            self._end(None)
            return
        except Exception as exc:
            self._end(exc)
            return
        self.proto.resetTimeout()  # a slow reader of a big message is not idle
        self.proto.write(b"".join(out))

    def stopProducing(self) -> None:
        self._end(ConnectionError("connection lost during FETCH"))

    def _end(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.proto.transport.unregisterProducer()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)


class ImapProtocol(Protocol):
    """One IMAP connection."""

    # no per-instance __dict__ (Protocol's own attributes included): 2000 IDLE sessions are bench 7a
    __slots__ = ("factory", "transport", "connected", "engine", "peer", "_queue", "_running", "_blocked", "_gone",
                 "_paused", "_poll_pending", "_watch", "_deflate", "_inflate", "_compressed_in")

    def __init__(self, factory: "ImapFactory") -> None:
        self.factory = factory
        self.transport: Any = None
        self.connected = 0
        self.engine: ImapEngine | None = None
        self.peer = "?"
        self._queue: list[Output] | None = None  # outputs not run yet (an action is in progress); None when empty
        self._running = False
        self._blocked = False  # an async action or stream is in progress
        self._gone = False
        self._paused = False
        self._poll_pending = False
        self._watch: OutsideWatch | None = None  # the shared outside-change rescan while IDLE
        self._deflate: Any = None  # RFC 4978 COMPRESS=DEFLATE, once active
        self._inflate: Any = None
        self._compressed_in = b""  # compressed input not inflated yet (held while an action runs)

    @property
    def ctx(self) -> Any:
        return self.factory.ctx

    # -- connection --------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        if not self.factory.connection_opened(self.peer):
            # DESIGN §4: connections per IP are limited
            self.write(b"* BYE Too many connections from your address\r\n")
            self._gone = True
            self.transport.loseConnection()
            return
        factory = self.factory
        self.engine = ImapEngine(factory.engine_config(self.peer), factory.open_user, wakeup=self._wakeup,
                                 peer=self.peer)
        factory.session_timer.arm(self)  # RFC 3501 §5.4 autologout: at least 30 minutes
        self._handle(self.engine.greeting())

    def dataReceived(self, data: bytes) -> None:
        if self.engine is None or self._gone:
            return
        self.factory.session_timer.rearm(self)
        if self._inflate is not None:
            self._compressed_in += data
            self._feed_compressed()
            return
        self._handle(self.engine.receive_data(data))

    def write(self, data: bytes) -> None:
        """Write to the client, through DEFLATE once COMPRESS is active (RFC 4978 §3: each write ends
        with a sync flush so the client can decode it at once)."""
        if not data:
            return
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        write_now(self.transport, data)  # sent at once when nothing is queued (no write buffer left behind)

    def resetTimeout(self) -> None:
        """Activity: the autologout period starts again."""
        self.factory.session_timer.rearm(self)

    def _feed_compressed(self) -> None:
        """Inflate the input in bounded steps, and only while the engine reads (a small compressed
        input can expand enormously)."""
        assert self.engine is not None and self._inflate is not None
        while self._compressed_in and not self._blocked and not self._gone:
            try:
                plain = self._inflate.decompress(self._compressed_in, INFLATE_STEP)
            except zlib.error:
                log.info("IMAP: bad DEFLATE data from {peer}", peer=self.peer)
                self._gone = True
                self.transport.abortConnection()
                return
            self._compressed_in = self._inflate.unconsumed_tail
            if self._inflate.eof:
                self._compressed_in = b""
            if plain:
                self._handle(self.engine.receive_data(plain))

    def timeoutConnection(self) -> None:
        if not self._gone:
            self.write(b"* BYE Autologout; idle for too long\r\n")
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._gone and self.engine is None:
            return
        self._gone = True
        self.factory.session_timer.disarm(self)
        self._queue = None
        self._leave_watch()
        self.factory.connection_closed(self.peer)
        if self.engine is not None:
            self.engine.connection_lost()

    # -- store notifications ------------------------------------------------------------------------------

    def _wakeup(self) -> None:
        """A store listener fired (maybe inside another session's command): poll on the next turn."""
        if self._poll_pending or self._gone:
            return
        self._poll_pending = True
        self.factory.poll_soon(self)

    def _poll(self, outside: bool = False) -> None:
        self._poll_pending = False
        if self.engine is None or self._gone or self._blocked:
            return
        self._handle(self.engine.poll(check_outside=outside))

    def _schedule_outside_poll(self) -> None:
        """While IDLE, have the factory's shared timer look at the Maildir now and then for changes
        made by other programs; leave it when IDLE ends, another mailbox is selected or the session ends."""
        if self.engine is None or self._gone:
            self._leave_watch()
            return
        sel = self.engine.selected
        mailbox = sel.mailbox if sel is not None and self.engine.idle_tag is not None else None
        if self._watch is not None and self._watch.mailbox is not mailbox:
            self._leave_watch()
        if mailbox is not None and self._watch is None:
            self._watch = self.factory.outside_watch(mailbox)
            self._watch.join(self)

    def _leave_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.leave(self)

    # -- outputs ------------------------------------------------------------------------------------------

    def _handle(self, outputs: list[Output]) -> None:
        if self._queue is None:
            if outputs:
                self._queue = outputs  # the engine hands over a fresh list
        else:
            self._queue.extend(outputs)
        if self._running:
            return
        self._running = True
        try:
            while self._queue and not self._gone and not self._blocked:
                self._run(self._queue.pop(0))
        finally:
            self._running = False
            if not self._queue:
                self._queue = None
        self._flow_control()
        self._schedule_outside_poll()

    def _flow_control(self) -> None:
        """Stop reading while an action runs, so a pipelining client is held back by TCP."""
        if self._gone:
            return
        if self._blocked and not self._paused:
            self.transport.pauseProducing()
            self._paused = True
        elif not self._blocked and self._paused:
            self.transport.resumeProducing()
            self._paused = False

    def _run(self, item: Output) -> None:
        assert self.engine is not None
        if isinstance(item, bytes):
            self.write(item)
        elif isinstance(item, Stream):
            self._blocked = True
            sender = _StreamSender(self, item.chunks)
            sender.start().addCallbacks(self._stream_done, self._stream_failed)
        elif isinstance(item, Authenticate):
            self._blocked = True
            d = defer.maybeDeferred(self.ctx.accounts.authenticate, item.user, item.password,
                                    service=AUTH_SERVICE, ip=self.peer)
            d.addErrback(lambda f: log.failure("IMAP password check failed", f) or None)
            d.addCallback(lambda user: self._resume(lambda: self.engine.auth_result(user)))
        elif isinstance(item, AuthFailed):
            # Same line and same delay as a wrong password (ctx.accounts.authenticate), DESIGN §4
            self._blocked = True
            log.info(AUTH_FAILURE_FORMAT, service=AUTH_SERVICE, ip=self.peer, user=_shown_user(item.user))
            delay = float(getattr(self.ctx.settings.auth, "failure_delay", 2.0))
            d = task.deferLater(self.ctx.reactor, delay, lambda: None)
            d.addCallback(lambda _: self._resume(lambda: self.engine.auth_result(None)))
        elif isinstance(item, Await):
            self._blocked = True
            callback = item.callback
            item.deferred.addBoth(lambda result: self._resume(lambda: callback(result)))
        elif isinstance(item, StartCompression):
            # RFC 4978 §3 / RFC 1951 raw DEFLATE; the tagged OK before it went out uncompressed
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflate = zlib.decompressobj(-15)
            self._compressed_in = item.pending + self._compressed_in
            self.ctx.reactor.callLater(0, self._resume_input)
        elif isinstance(item, StartTLS):
            # RFC 3501 §6.2.1: the engine has already dropped whatever was pipelined after STARTTLS
            self.transport.startTLS(self.ctx.tls.server_options())
        elif isinstance(item, Close):
            if self._queue is not None:
                self._queue.clear()
            self._gone = True
            self.factory.session_timer.disarm(self)
            self.transport.loseConnection()

    def _resume(self, step: Any) -> None:
        self._blocked = False
        if self._gone:
            return
        self._handle(step())
        self._resume_input()

    def _resume_input(self) -> None:
        """Compressed input held back while an action ran."""
        if self._inflate is not None and self._compressed_in and not self._gone and not self._blocked:
            self._feed_compressed()

    def _stream_done(self, _: Any) -> None:
        self._resume(lambda: self.engine.resume())  # type: ignore[union-attr]

    def _stream_failed(self, failure: Any) -> None:
        self._blocked = False
        if not self._gone:
            # half a response was sent: the only safe way out is to drop the connection
            log.failure("IMAP: error while streaming a FETCH response", failure)
            self._gone = True
            self.transport.abortConnection()


class ImapFactory(ServerFactory):
    noisy = False

    def __init__(self, ctx: Any, service: str) -> None:
        self.ctx, self.service = ctx, service
        imap = ctx.settings.imap
        self.per_ip = PerIPCounter(int(getattr(imap, "max_connections_per_ip", 20)))
        #: shared outside-change rescans, by identity of the store's Mailbox (one per user and folder)
        self.watches: dict[int, OutsideWatch] = {}
        #: one timer for the outside-change rescans of every IDLE mailbox
        self.outside_timer = Deadlines(ctx.reactor, OUTSIDE_CHANGES_POLL, OutsideWatch._tick)
        #: one timer for the autologout of every session (RFC 3501 §5.4: at least 30 minutes)
        self.session_timer = Deadlines(ctx.reactor, float(getattr(imap, "timeout", 1800.0)),
                                       ImapProtocol.timeoutConnection)
        #: the engine's store access, one callable for all the sessions
        self.open_user = partial(UserMail, ctx.store)
        self._configs: dict[bool, EngineConfig] = {}
        self._polls: list[ImapProtocol] = []  # sessions a store change woke, polled on the next turn
        self._polls_call: Any = None

    def engine_config(self, peer: str) -> EngineConfig:
        """The engine settings of a session from ``peer``: shared by all the sessions that get the same (the
        engine copies it before changing it, at STARTTLS)."""
        settings = self.ctx.settings
        plaintext_ok = bool(settings.auth.allow_plaintext_loopback) and is_loopback(peer)
        cfg = self._configs.get(plaintext_ok)
        if cfg is None:
            imap = settings.imap
            implicit = self.service == "imaps"
            cfg = EngineConfig(
                hostname=settings.hostname,
                tls_available=self.ctx.tls is not None and not implicit,
                tls_active=implicit,
                plaintext_auth_ok=plaintext_ok,
                max_literal=int(getattr(imap, "max_literal_size", 50 * 1024 * 1024)),
                max_auth_failures=int(settings.auth.max_failures),
                quota_bytes=int(getattr(imap, "quota_bytes", 0)),
            )
            cfg.max_buffer = cfg.max_literal + cfg.max_line
            self._configs[plaintext_ok] = cfg
        return cfg

    def poll_soon(self, proto: ImapProtocol) -> None:
        """Have ``proto`` poll on the next reactor turn: one call for all the sessions a delivery woke (not a
        ``DelayedCall`` each, bench 7a)."""
        self._polls.append(proto)
        if self._polls_call is None:
            self._polls_call = self.ctx.reactor.callLater(0, self._run_polls)

    def _run_polls(self) -> None:
        polls, self._polls, self._polls_call = self._polls, [], None
        for proto in polls:
            try:
                proto._poll()
            except Exception:
                log.failure("IMAP: polling a session after a store change failed")

    def outside_watch(self, mailbox: Mailbox) -> OutsideWatch:
        """The rescan of ``mailbox``, created for its first IDLE session; dropped when the last leaves."""
        watch = self.watches.get(id(mailbox))
        if watch is None or watch.mailbox is not mailbox:
            watch = self.watches[id(mailbox)] = OutsideWatch(self, mailbox)
        return watch

    def _watch_done(self, watch: OutsideWatch) -> None:
        if self.watches.get(id(watch.mailbox)) is watch:
            del self.watches[id(watch.mailbox)]

    def buildProtocol(self, addr: Any) -> ImapProtocol:
        return ImapProtocol(self)

    def connection_opened(self, ip: str) -> bool:
        return self.per_ip.open(ip)

    def connection_closed(self, ip: str) -> None:
        self.per_ip.close(ip)


def build_factory(ctx: Any, service: str) -> ImapFactory:
    """The factory for the ``imap`` (STARTTLS) or ``imaps`` (implicit TLS) listener."""
    if service not in ("imap", "imaps"):
        raise ValueError(f"not an IMAP service: {service}")
    return ImapFactory(ctx, service)
