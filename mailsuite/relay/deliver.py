"""The delivery loop: Twisted connections around the client engine, per-destination reuse and limits.

`SMTPClientProtocol` is the thin adapter (bytes to the engine, events to the transport, STARTTLS, the
RFC 5321 §4.5.3.2 per-command timeouts from `[relay] command_timeout`, `data_timeout`, `data_end_timeout`,
and the message content streamed as the network takes it, with the §4.5.3.2.5 per-block timeout
`data_block_timeout`).
`Deliverer` takes due jobs from the `Queue`, groups them per destination
(the recipient domain, or the smarthost), resolves MX targets (`MXResolver`), opens at most
`max_per_destination` connections per destination and `max_concurrency` in all, sends several messages per
connection, and records every outcome in the queue.  Recipients in local domains (bounces to our own users)
go to the store through `deliver_local`.

Stopping (SIGTERM): no new transaction starts; a session waiting for the reply to its final "." gets up to
`STOP_GRACE` seconds to receive it (RFC 5321 §4.5.3.2.6: giving up there is what duplicates mail), idle
sessions QUIT, every other session is aborted (the remote discards the unfinished transaction), and what
was not answered stays queued with a transient error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet import defer, endpoints, error, protocol, ssl as tssl
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator, IPullProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsuite.relay.client import (
    ClientConfig, ClientEngine, Close, MessageResult, OutboundMessage, Ready, Reply, Send, SendBody, SessionFailed,
    StartTLS,
)
from mailsuite.relay.dns import MXResolver, RouteError, Target
from mailsuite.relay.queue import Job, Queue

__all__ = ["Deliverer", "SMTPClientProtocol", "SessionError", "relay_option", "LOCAL"]

log = Logger()

#: seconds a stopping relay waits for end-of-data replies (bounded by data_end_timeout; RelayService
#: gives the whole stop 10 s)
STOP_GRACE = 5.0

LOCAL = "\x00local"          # destination key for recipients in our own domains
SMARTHOST = "\x00smarthost"

_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
            "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384")


def relay_option(settings: Any, key: str, default: Any) -> Any:
    """`settings.relay.<key>`, or `default` while config.py does not have the key."""
    return getattr(getattr(settings, "relay", None), key, default)


def phase_timeouts(command: float = 300.0, data: float = 120.0, data_end: float = 600.0,
                   data_block: float = 180.0) -> dict[str, float]:
    """How long to wait in each engine phase (RFC 5321 §4.5.3.2; "SHOULD be easily reconfigurable"):
    `command` for the greeting (§4.5.3.2.1), EHLO, STARTTLS, AUTH, MAIL (§4.5.3.2.2), RCPT (§4.5.3.2.3) and
    RSET; `data` for the 354 (§4.5.3.2.4); `data_block` for the network to take each block of the message
    content (§4.5.3.2.5: restarted per block, so a big message on a slow uplink goes through as long as
    it moves); `data_end` for the reply to the final "." once all of it is out (§4.5.3.2.6)."""
    table = {phase: command for phase in ("greeting", "ehlo", "helo", "starttls", "tls-handshake", "auth",
                                          "ready", "mail", "rcpt", "rset")}
    table.update({"data": data, "data-block": data_block, "data-end": data_end, "quit": min(command, 60.0)})
    return table


class SessionError(Exception):
    def __init__(self, reply: Reply, tls_failed: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tls_failed = tls_failed


@implementer(IOpenSSLClientConnectionCreator)
class _OpportunisticTLS:
    """Client TLS without certificate checks (RFC 7435 opportunistic security for MX delivery), with SNI."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.context = tssl.CertificateOptions(
            verify=False, raiseMinimumTo=tssl.TLSVersion.TLSv1_2,
            acceptableCiphers=tssl.AcceptableCiphers.fromOpenSSLCipherString(_CIPHERS)).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        if self.hostname and not self.hostname[0].isdigit() and ":" not in self.hostname:
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        conn.set_app_data(tlsProtocol)
        conn.set_connect_state()
        return conn


@implementer(IHandshakeListener)
class SMTPClientProtocol(protocol.Protocol):
    """Adapter around one `ClientEngine` (see the module docstring)."""

    def __init__(self, engine: ClientEngine, clock: Any, tls_options: Any, timeouts: dict[str, float]) -> None:
        self.engine = engine
        self.clock = clock
        self.tls_options = tls_options
        self.timeouts = timeouts
        self.ready: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.failure: Reply | None = None
        self.tls_failed = False
        self._result: defer.Deferred | None = None
        self._timer: Any = None
        self._lost = False
        self._body: _BodyStream | None = None     # the message content going out (RFC 5321 §4.5.3.2.5)
        self._held: list[bytes] = []               # bytes to send once the content is out

    # -- twisted side

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        before = self.engine.replies
        events = self.engine.receive_data(data)
        # the timer runs per command (RFC 5321 §4.5.3.2): only a complete reply restarts it, so a server
        # that drips a reply byte by byte cannot hold the connection longer than the timeout
        self._handle(events, rearm=self.engine.replies != before)

    def handshakeCompleted(self) -> None:
        self._handle(self.engine.tls_established())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self._body = None
        self._held.clear()
        self._disarm()
        if self.engine.phase == "tls-handshake":
            self.tls_failed = True
        why = "connection lost"
        if not reason.check(error.ConnectionDone):
            why = f"connection lost: {reason.getErrorMessage()}"
        self._handle(self.engine.connection_lost(why))
        if not self.ready.called:
            self.ready.errback(SessionError(self.failure or Reply(421, (f"4.4.2 {why}",)), self.tls_failed))
        self.closed.callback(None)

    # -- timeouts (RFC 5321 §4.5.3.2): one per command, from when it is sent until its whole reply is in

    @property
    def _phase(self) -> str:
        """The engine's phase, or "data-block" while the message content is still going out."""
        return "data-block" if self._body is not None else self.engine.phase

    def _arm(self) -> None:
        self._disarm()
        if self._lost or self.engine.phase == "closed":
            return
        seconds = self.timeouts.get(self._phase, self.engine.timeout)
        self._timer = self.clock.callLater(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        phase = self._phase
        # RFC 5321 §4.5.3.2 + §3.8: a timeout fails the session; the message in flight is retried later
        self.abort(f"timeout waiting for the server ({phase})")

    # -- engine events

    def _handle(self, events: list, rearm: bool = True) -> None:
        for ev in events:
            if isinstance(ev, Send):
                if self._lost:
                    continue
                if self._body is not None:
                    self._held.append(ev.data)      # after the content that is going out, in order
                else:
                    self.transport.write(ev.data)
            elif isinstance(ev, SendBody):
                if self._lost:
                    continue
                if self._body is not None:
                    self._held.extend(ev.blocks)    # never: the engine waits for the end of a body
                else:
                    # started here, not after the loop: a callback below (a MessageResult whose
                    # Deferred sends the next message) must find the content going out and queue behind it
                    self._body = _BodyStream(self, ev.blocks)
                    self._arm()
                    self.transport.registerProducer(self._body, False)   # pulls the first block at once
            elif isinstance(ev, StartTLS):
                self.transport.startTLS(self.tls_options)
            elif isinstance(ev, Ready):
                if not self.ready.called:
                    self.ready.callback(self)
            elif isinstance(ev, MessageResult):
                d, self._result = self._result, None
                if d is not None:
                    d.callback(ev)
            elif isinstance(ev, SessionFailed):
                self.failure = ev.reply
                if not self.ready.called:
                    self.ready.errback(SessionError(ev.reply, self.tls_failed))
            elif isinstance(ev, Close):
                if not self._lost and self.transport is not None:
                    if self._body is not None:
                        self._held.append(b"")      # close once the content and what follows are out
                    else:
                        self.transport.loseConnection()
        if rearm or self._timer is None:
            self._arm()

    def _block_taken(self) -> None:
        """The network took a block of the content: the §4.5.3.2.5 timer starts again."""
        self._arm()

    def _body_sent(self) -> None:
        """All of the content is out: send what was held back, then wait for the reply (§4.5.3.2.6)."""
        self._body = None
        self.transport.unregisterProducer()
        held, self._held = self._held, []
        for data in held:
            if self._lost:
                break
            if data:
                self.transport.write(data)
            else:
                self.transport.loseConnection()
        self._arm()

    # -- used by the Deliverer

    @property
    def usable(self) -> bool:
        return not self._lost and self.failure is None and self.engine.phase == "ready"

    def send(self, message: OutboundMessage) -> defer.Deferred:
        """Deferred[MessageResult] for one message."""
        self._result = defer.Deferred()
        d = self._result
        self._handle(self.engine.send_message(message))
        return d

    def quit(self) -> defer.Deferred:
        if not self._lost:
            self._handle(self.engine.quit())
            if self.engine.phase == "closed" and not self._lost:
                self.transport.loseConnection()
        return self.closed

    @property
    def awaiting_end_of_data(self) -> bool:
        """The whole message went out and the reply to the final "." has not come yet."""
        return not self._lost and self._body is None and self.engine.phase == "data-end"

    def abort(self, why: str | None = None) -> None:
        """Drop the connection now; `why` is recorded for the message in flight (else "connection lost")."""
        if why is not None and not self._lost:
            self._handle(self.engine.connection_lost(why), rearm=False)
        if not self._lost and self.transport is not None:
            self.transport.abortConnection()


@implementer(IPullProducer)
class _BodyStream:
    """The message content of one transaction, handed to the transport one block each time it asks for
    more (a pull producer: asked when its buffer has gone out), so each block restarts the per-block
    timeout (RFC 5321 §4.5.3.2.5) and a big message is not all in Twisted's buffer at once."""

    def __init__(self, owner: SMTPClientProtocol, blocks: Iterator[bytes]) -> None:
        self.owner = owner
        self.blocks = blocks

    def resumeProducing(self) -> None:
        owner = self.owner
        if owner._lost or owner._body is not self:
            return
        block = next(self.blocks, None)
        if block is not None:
            owner.transport.write(block)
            owner._block_taken()
        else:
            owner._body_sent()

    def stopProducing(self) -> None:
        self.blocks = iter(())


@dataclass
class _Destination:
    key: str
    jobs: deque[Job] = field(default_factory=deque)
    workers: int = 0


class Deliverer:
    """Runs the queue's due jobs (see the module docstring).

    `deliver_local(address, sender, data) -> Deferred[Reply]` delivers to a recipient in a local domain;
    `is_local_domain(domain) -> bool` says which those are.  `clock` schedules retries and timeouts
    (a `twisted.internet.task.Clock` in tests); connections use `reactor`.
    """

    def __init__(self, queue: Queue, settings: Any, *, reactor: Any = None, clock: Any = None,
                 resolver: MXResolver | None = None,
                 deliver_local: Callable[[str, str, bytes], defer.Deferred] | None = None,
                 is_local_domain: Callable[[str], bool] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.queue = queue
        self.settings = settings
        self.hostname = getattr(settings, "hostname", None) or "localhost"
        opt = lambda key, default: relay_option(settings, key, default)
        self.port = int(opt("port", 25))
        self.starttls = str(opt("starttls", "opportunistic"))
        self.require_tls = {d.lower() for d in opt("require_tls_domains", ())}
        self.smarthost = str(opt("smarthost", "") or "")
        self.smarthost_port = int(opt("smarthost_port", 587))
        self.smarthost_tls = str(opt("smarthost_tls", "starttls"))
        self.smarthost_user = str(opt("smarthost_user", "") or "")
        self.smarthost_password = str(opt("smarthost_password", "") or "")
        self.smarthost_verify = bool(opt("smarthost_verify", True))
        self.smarthost_ca_file = str(opt("smarthost_ca_file", "") or "")
        self.max_concurrency = max(1, int(opt("max_concurrency", 10)))
        self.max_per_destination = max(1, int(opt("max_per_destination", 2)))
        self.max_messages_per_connection = max(1, int(opt("max_messages_per_connection", 100)))
        self.connect_timeout = float(opt("connect_timeout", 30.0))
        self.data_end_timeout = float(opt("data_end_timeout", 600.0))
        self.timeouts = phase_timeouts(float(opt("command_timeout", 300.0)), float(opt("data_timeout", 120.0)),
                                       self.data_end_timeout, float(opt("data_block_timeout", 180.0)))
        self.timeouts.update(opt("timeouts", {}) or {})         # per-phase overrides (tests)
        self.chunk_size = 65536           # size of the writes carrying a message body
        self.resolver = resolver or MXResolver(
            nameservers=opt("resolvers", ()), local_names=[self.hostname, *opt("local_names", ())],
            reactor=reactor, ipv6=bool(opt("ipv6", True)))
        self.deliver_local = deliver_local
        self.is_local_domain = is_local_domain or (lambda domain: False)
        self._dests: dict[str, _Destination] = {}
        self._sessions: set[SMTPClientProtocol] = set()
        self._connections = 0
        self._running = False
        self._wakeup: Any = None
        self._idle_waiters: list[defer.Deferred] = []
        self._grace_timer: Any = None

    # ---------------------------------------------------------------------------------- control

    def start(self) -> None:
        self._running = True
        self.queue.listeners.append(self.kick)
        self.kick()

    def stop(self) -> defer.Deferred:
        self._running = False
        if self.kick in self.queue.listeners:
            self.queue.listeners.remove(self.kick)
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        for dest in self._dests.values():
            while dest.jobs:
                self.queue.release(dest.jobs.popleft())
        waiting = False
        for session in list(self._sessions):
            if session.awaiting_end_of_data:
                # RFC 5321 §4.5.3.2.6, §6.1: the remote may be taking responsibility right now; giving up
                # here would send it again after the restart (RFC 1047), so wait a little for the reply
                waiting = True
            elif session.usable:
                session.quit()
            else:
                session.abort("the relay is shutting down")
        if waiting or self._sessions:
            grace = min(STOP_GRACE, self.data_end_timeout)
            self._grace_timer = self.clock.callLater(grace, self._abort_all)
        self.resolver.stop()
        d = self.idle()
        d.addBoth(self._stopped)
        return d

    def _abort_all(self) -> None:
        self._grace_timer = None
        for session in list(self._sessions):
            session.abort("the relay is shutting down (no reply in time; the remote may have a copy)"
                          if session.awaiting_end_of_data else "the relay is shutting down")

    def _stopped(self, result: Any) -> Any:
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        self._grace_timer = None
        return result

    def awaiting_end_of_data(self) -> int:
        """Sessions whose message went out whole and whose reply to the final "." is still to come."""
        return sum(1 for session in self._sessions if session.awaiting_end_of_data)

    def busy(self) -> bool:
        return any(d.workers or d.jobs for d in self._dests.values())

    def idle(self) -> defer.Deferred:
        """Fires when no delivery is running (tests; shutdown)."""
        if not self.busy():
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def kick(self) -> None:
        """Start whatever is due, and schedule the next wake-up."""
        if not self._running:
            return
        for job in self.queue.due_jobs():
            key = self._destination_key(job.domain)
            self._dests.setdefault(key, _Destination(key)).jobs.append(job)
        for dest in list(self._dests.values()):
            self._start_workers(dest)
        self._schedule()
        self._check_idle()

    def _schedule(self) -> None:
        when = self.queue.next_wakeup()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        if when is not None and self._running:
            self._wakeup = self.clock.callLater(max(0.0, when - self.queue.now()), self.kick)

    def _check_idle(self) -> None:
        for dest in [d for d in self._dests.values() if not d.jobs and not d.workers]:
            del self._dests[dest.key]
        if not self.busy():
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _destination_key(self, domain: str) -> str:
        if self.is_local_domain(domain):
            return LOCAL
        if self.smarthost:
            return SMARTHOST
        return domain

    def _start_workers(self, dest: _Destination) -> None:
        limit = 1 if dest.key == LOCAL else self.max_per_destination
        while dest.jobs and dest.workers < min(limit, len(dest.jobs)) \
                and (dest.key == LOCAL or self._connections < self.max_concurrency):
            dest.workers += 1
            if dest.key != LOCAL:
                self._connections += 1
            d = self._run_local(dest) if dest.key == LOCAL else self._run_remote(dest)
            d.addErrback(lambda f: log.failure("relay: delivery worker crashed", f))
            d.addBoth(self._worker_done, dest)

    def _worker_done(self, _: Any, dest: _Destination) -> None:
        dest.workers -= 1
        if dest.key != LOCAL:
            self._connections -= 1
        if self._running:
            self.kick()
        else:
            self._check_idle()

    # ------------------------------------------------------------------------------------ local

    @defer.inlineCallbacks
    def _run_local(self, dest: _Destination) -> Any:
        while dest.jobs and self._running:
            job = dest.jobs.popleft()
            data = yield self._read(job)
            if data is None:
                continue
            outcomes = []
            for rcpt in job.recipients:
                if self.deliver_local is None:
                    reply = Reply(451, ("4.3.0 local delivery is not available",))
                else:
                    try:
                        reply = yield self.deliver_local(rcpt.address, job.sender, data)
                    except Exception as exc:
                        log.failure("relay: local delivery to {rcpt} failed", rcpt=rcpt.address)
                        reply = Reply(451, (f"4.3.0 local delivery failed: {exc}",))
                outcomes.append((rcpt.address, reply))
            yield self.queue.record(job, outcomes, remote=None)

    @defer.inlineCallbacks
    def _read(self, job: Job) -> Any:
        """The message bytes, or None when the message is gone (deleted by the admin, or its file lost)."""
        try:
            data = yield self.queue.read(job.id)
        except OSError as exc:
            if job.id in self.queue:
                log.error("relay: {id}: cannot read the message file: {exc}", id=job.id, exc=exc)
                reply = Reply(554, (f"5.3.0 the queued message file cannot be read: {exc.strerror}",))
                yield self.queue.record(job, [(r.address, reply) for r in job.recipients])
            else:
                self.queue.release(job)
            return None
        return data

    # ----------------------------------------------------------------------------------- remote

    def _targets(self, dest: _Destination) -> defer.Deferred:
        if dest.key == SMARTHOST:
            return defer.succeed([Target(self.smarthost, self.smarthost, 0)])
        return self.resolver.route(dest.key)

    def _tls_mode(self, dest: _Destination) -> str:
        if dest.key == SMARTHOST:
            if self.smarthost_tls == "implicit":
                return "off"              # TLS from the first byte (RFC 8314)
            if self.smarthost_user:
                return "required"         # credentials never travel in clear text (RFC 4954 §4)
            return self.starttls
        if dest.key in self.require_tls:
            return "required"
        return self.starttls

    def _client_tls(self, hostname: str, smarthost: bool) -> Any:
        if smarthost and self.smarthost_verify:
            if self.smarthost_ca_file:
                root = tssl.Certificate.loadPEM(Path(self.smarthost_ca_file).read_bytes())
            else:
                root = tssl.platformTrust()
            return tssl.optionsForClientTLS(hostname, trustRoot=root)
        return _OpportunisticTLS(hostname)

    @defer.inlineCallbacks
    def _connect(self, dest: _Destination, target: Target, tls_mode: str) -> Any:
        smart = dest.key == SMARTHOST
        tls_options = self._client_tls(target.host, smart)
        implicit = smart and self.smarthost_tls == "implicit"
        config = ClientConfig(
            helo_name=self.hostname, starttls=tls_mode, tls=implicit,
            auth_user=(self.smarthost_user or None) if smart else None,
            auth_password=self.smarthost_password if smart else None, chunk_size=self.chunk_size)
        engine = ClientEngine(config)
        proto = SMTPClientProtocol(engine, self.clock, tls_options, self.timeouts)
        if smart:
            port = self.smarthost_port
            ep: Any = endpoints.HostnameEndpoint(self.reactor, target.host, port, timeout=self.connect_timeout)
            if implicit:
                ep = endpoints.wrapClientTLS(tls_options, ep)
        else:
            port = self.port
            cls = endpoints.TCP6ClientEndpoint if ":" in target.address else endpoints.TCP4ClientEndpoint
            ep = cls(self.reactor, target.address, port, timeout=self.connect_timeout)
        try:
            yield endpoints.connectProtocol(ep, proto)
        except Exception as exc:
            raise SessionError(Reply(451, (f"4.4.1 cannot connect to {target.host}[{target.address}]:{port}: "
                                            f"{exc}",)))
        if not self._running:
            proto.ready.addErrback(lambda _: None)             # nobody waits for this session
            proto.abort("the relay is shutting down")         # connected after stop(): start nothing
            raise SessionError(Reply(421, ("4.4.2 the relay is shutting down",)))
        self._sessions.add(proto)
        proto.closed.addBoth(lambda _: self._sessions.discard(proto))
        yield proto.ready
        return proto

    @defer.inlineCallbacks
    def _run_remote(self, dest: _Destination) -> Any:
        try:
            targets = yield self._targets(dest)
        except RouteError as exc:
            log.info("relay: no route to {dest}: {reply}", dest=dest.key, reply=str(exc.reply))
            yield self._fail_remaining(dest, exc.reply, None, force=True)
            return
        except Exception as exc:
            yield self._fail_remaining(dest, Reply(451, (f"4.4.3 routing failed: {exc}",)), None, force=True)
            return
        last_error = Reply(451, ("4.4.1 no mail server could be reached",))
        last_host: str | None = None
        index = 0
        while dest.jobs and index < len(targets) and self._running:
            target = targets[index]
            session = None
            for mode in (self._tls_mode(dest), "off"):
                try:
                    session = yield self._connect(dest, target, mode)
                    break
                except SessionError as exc:
                    last_error, last_host = exc.reply, target.host
                    log.info("relay: {host}[{addr}] for {dest}: {reply}", host=target.host, addr=target.address,
                             dest=dest.key, reply=str(exc.reply))
                    # RFC 7435 §6: an opportunistic handshake that fails is retried without TLS.
                    if not (exc.tls_failed and mode == "opportunistic"):
                        break
            if session is None:
                index += 1          # RFC 5321 §5.1: try the next MX host / address
                continue
            sent = 0
            while dest.jobs and session.usable and sent < self.max_messages_per_connection:
                job = dest.jobs.popleft()
                data = yield self._read(job)
                if data is None:
                    continue
                if not session.usable:
                    dest.jobs.appendleft(job)        # the session ended while we read the file
                    break
                message = OutboundMessage(sender=job.sender, recipients=job.recipients, data=data,
                                          ret=job.ret, envid=job.envid, tag=job)
                try:
                    result = yield session.send(message)
                    outcomes = [(r.address, reply) for r, reply in result.outcomes]
                except Exception as exc:
                    log.failure("relay: sending {id} failed", id=job.id)
                    outcomes = [(r.address, Reply(451, (f"4.3.0 local error: {exc}",))) for r in job.recipients]
                    session.abort()
                yield self.queue.record(job, outcomes, remote=target.host,
                                        dsn_passed=session.engine.supports("DSN"))
                sent += 1
            if not session.usable:
                # the server failed or closed the session: the next host takes the remaining jobs
                last_error = session.failure or Reply(421, ("4.4.2 the server closed the connection",))
                last_host = target.host
                index += 1
            yield session.quit()
        if dest.jobs and not self._running:
            while dest.jobs:                     # stopping: untried jobs go back unchanged
                self.queue.release(dest.jobs.popleft())
        if dest.jobs:
            # every host failed: the destination is unreachable for now, the waiting jobs retry later
            yield self._fail_remaining(dest, last_error, last_host)

    def _fail_remaining(self, dest: _Destination, reply: Reply, host: str | None,
                        force: bool = False) -> defer.Deferred:
        """Record a session-level failure for every job still waiting for this destination."""
        if not force and not reply.transient:
            # a refusal of the whole session (554 greeting, ...) is not a verdict on the message
            reply = Reply(451, (f"4.4.1 {host or dest.key} said: {reply}",))
        ds = []
        while dest.jobs:
            job = dest.jobs.popleft()
            ds.append(self.queue.record(job, [(r.address, reply) for r in job.recipients], remote=host))
        return defer.gatherResults(ds, consumeErrors=True)
