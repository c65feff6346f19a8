"""The thin Twisted side of the SMTP server: feeds bytes to the engine, writes replies, runs its actions.

``build_factory(ctx, service)`` serves ``smtp`` (MX, port 25), ``submission`` (587) and ``submissions`` (465;
service.py wraps that factory in TLS).  Per connection: TCP_NODELAY, an idle timer (RFC 5321 §4.5.3.2: the
command timeout between commands, the data timeout while message content is arriving, no timer while an
action such as a delivery is running), and a per-IP connection limit answered with 421 (RFC 5321 §3.8).
While an action runs, input is left in the engine's buffer; only beyond ``MAX_HELD`` bytes is the transport
paused, so a client cannot make the engine buffer without bound (pausing every time cost two ``epoll_ctl``
per message).  Replies produced together are written together, sent at once when the socket is idle
(:func:`mailsuite.fastwrite.write_now`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol, ServerFactory

from mailsuite.fastwrite import close_now, write_now
from mailsuite.limits import PerIPCounter
from mailsuite.logtext import Logger
from mailsuite.tls import tls_info

from .delivery import Delivery
from .engine import EngineConfig, SMTPServerEngine
from .events import (Action, Authenticate, CheckRecipient, CheckSender, Close, Deliver, Event, RecipientCheck,
                     Reply, SendReply, StartTLS)

__all__ = ["build_factory", "SMTPFactory", "SMTPServerProtocol", "MODE_OF_SERVICE"]

log = Logger()
MODE_OF_SERVICE = {"smtp": "mx", "submission": "submission", "submissions": "submissions"}
#: Input held in the engine while an action runs before the transport is paused.
MAX_HELD = 256 * 1024


class SMTPServerProtocol(Protocol):
    """One SMTP connection."""

    def __init__(self, factory: "SMTPFactory") -> None:
        self.factory = factory
        self.engine: SMTPServerEngine | None = None
        self.peer_ip = ""
        self._timer: Any = None
        self._waiting = False
        self._paused = False
        self._gone = False
        self._counted = False

    # -- connection --------------------------------------------------------------------------------
    def connectionMade(self) -> None:
        factory = self.factory
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "") or ""
        self._nodelay()
        if not factory.per_ip.open(self.peer_ip):
            # RFC 5321 §3.8 / §4.3.2: 421 at greeting time and close
            log.info("smtp: too many connections from ip={ip}", ip=self.peer_ip)
            self.transport.write(Reply(421, "4.7.0", f"{factory.ctx.settings.hostname} Too many connections "
                                       "from your host, try again later").to_bytes())
            self.transport.loseConnection()
            self._gone = True
            return
        self._counted = True
        self.engine = SMTPServerEngine(factory.config, factory.mode, self.peer_ip,
                                       tls_active=factory.mode == "submissions")
        self._handle(self.engine.connection_made())
        self._arm()

    def _nodelay(self) -> None:
        for transport in (self.transport, getattr(self.transport, "transport", None)):
            setter = getattr(transport, "setTcpNoDelay", None)
            if setter is not None:
                try:
                    setter(True)
                except OSError:
                    pass
                return

    def connectionLost(self, reason: Any = None) -> None:
        self._gone = True
        self._disarm()
        if self._counted:
            self._counted = False
            self.factory.per_ip.close(self.peer_ip)

    def dataReceived(self, data: bytes) -> None:
        if self.engine is None or self._gone:
            return
        self._handle(self.engine.receive_data(data))
        if not self._waiting:
            self._arm()
        elif not self._paused and self.engine.buffered > MAX_HELD:
            self._pause_transport()

    # -- timers (RFC 5321 §4.5.3.2) ----------------------------------------------------------------
    def _arm(self) -> None:
        if self._gone or self.engine is None or self.engine.closed:
            self._disarm()
            return
        smtp = self.factory.ctx.settings.smtp
        delay = smtp.data_timeout if self.engine.in_data else smtp.command_timeout
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(delay)      # cheaper than cancel + callLater once per command
        else:
            self._timer = self.factory.ctx.reactor.callLater(delay, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.engine is not None and not self._gone:
            log.info("smtp: timeout ip={ip}", ip=self.peer_ip)
            self._handle(self.engine.timeout())

    # -- events ------------------------------------------------------------------------------------
    def _handle(self, events: list[Event]) -> None:
        if len(events) == 1 and type(events[0]) is SendReply:
            if not self._gone:                  # most commands: one reply, nothing else
                write_now(self.transport, events[0].data)
            return
        queue = list(events)
        out: list[bytes] = []
        while queue and not self._gone:
            event = queue.pop(0)
            if isinstance(event, SendReply):
                out.append(event.data)
                continue
            if out:
                self._write(out)
            if isinstance(event, StartTLS):
                # RFC 3207 §4.2: the engine already dropped any plaintext pipelined after STARTTLS
                self.transport.startTLS(self.factory.ctx.tls.server_options())
            elif isinstance(event, Close):
                self._disarm()
                self._gone = True
                close_now(self.transport)
            elif isinstance(event, CheckRecipient):
                # a lookup in memory: answered at once, without a Deferred (it runs for every recipient)
                assert self.engine is not None
                queue.extend(self.engine.action_result(self._check_recipient(event.address)))
            elif isinstance(event, Action):
                fired: list[Any] = []
                sync = [True]

                def done(result: Any, fired: list[Any] = fired, sync: list[bool] = sync) -> None:
                    if sync[0]:
                        fired.append(result)
                    else:
                        self._resume(result)
                self._run(event).addCallback(done)
                sync[0] = False
                if fired:
                    assert self.engine is not None
                    queue.extend(self.engine.action_result(fired[0]))
                else:
                    self._waiting = True
                    self._disarm()
        if out and not self._gone:
            self._write(out)

    def _write(self, out: list[bytes]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        write_now(self.transport, data)

    def _pause_transport(self) -> None:
        for transport in (self.transport, getattr(self.transport, "transport", None)):
            if hasattr(transport, "pauseProducing"):
                transport.pauseProducing()
                self._paused = True
                return

    def _resume(self, result: Any) -> None:
        self._waiting = False
        if self._gone or self.engine is None:
            return
        if self._paused:
            self._paused = False
            for transport in (self.transport, getattr(self.transport, "transport", None)):
                if hasattr(transport, "resumeProducing"):
                    transport.resumeProducing()
                    break
        self._handle(self.engine.action_result(result))
        if not self._waiting:
            self._arm()

    # -- actions -----------------------------------------------------------------------------------
    def _run(self, action: Action) -> defer.Deferred:
        """Run an action; the Deferred never errbacks (failures become a safe negative result).
        ``CheckRecipient`` is answered in ``_handle`` without one."""
        ctx = self.factory.ctx
        if isinstance(action, Authenticate):
            d = defer.maybeDeferred(ctx.accounts.authenticate, action.username, action.password,
                                    service=self.factory.service, ip=self.peer_ip)
            return d.addErrback(self._failed, None)
        if isinstance(action, CheckSender):
            d = defer.maybeDeferred(self._may_send_as, action.user, action.address)
            return d.addErrback(self._failed, False)
        if isinstance(action, Deliver):
            info = tls_info(self.transport) if action.envelope.tls else None
            return self.factory.delivery.deliver(action.envelope, action.data,
                                                 submission=self.factory.mode != "mx", tls=info)
        return defer.succeed(None)

    def _check_recipient(self, address: str) -> RecipientCheck:
        try:
            return self._classify(address)
        except Exception:  # noqa: BLE001 - a failed lookup is a temporary failure (451), never a crash
            log.failure("smtp: action failed")
            return RecipientCheck("error")

    @staticmethod
    def _failed(failure: Any, value: Any) -> Any:
        log.failure("smtp: action failed", failure)
        return value

    def _may_send_as(self, user: str, address: str) -> bool:
        accounts = self.factory.ctx.accounts
        if not address:
            return False
        return bool(accounts.may_send_as(user, address))

    def _classify(self, address: str) -> RecipientCheck:
        accounts = self.factory.ctx.accounts
        domain = address.rpartition("@")[2]
        if not accounts.is_local_domain(domain):
            return RecipientCheck("external")
        resolution = accounts.resolve(address)
        if resolution is None:
            return RecipientCheck("unknown")
        return RecipientCheck("local", resolution)


class SMTPFactory(ServerFactory):
    """Shared per listener: the engine config, the connection counts per IP, the delivery object."""

    noisy = False

    def __init__(self, ctx: Any, service: str) -> None:
        if service not in MODE_OF_SERVICE:
            raise ValueError(f"not an SMTP service: {service!r}")
        self.ctx = ctx
        self.service = service
        self.mode = MODE_OF_SERVICE[service]
        self.config = EngineConfig.from_settings(ctx.settings, tls_available=ctx.tls is not None)
        self.per_ip = PerIPCounter(ctx.settings.smtp.max_connections_per_ip)
        self.delivery = Delivery(ctx)

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:
        protocol = SMTPServerProtocol(self)
        protocol.factory = self
        return protocol


def build_factory(ctx: Any, service: str) -> SMTPFactory:
    """The factory for the ``smtp``, ``submission`` or ``submissions`` listener (docs/architecture.md)."""
    return SMTPFactory(ctx, service)
