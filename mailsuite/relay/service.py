"""The relay as a Twisted service: the queue, the delivery loop, admin requests, local bounces.

mailsuite/service.py calls `attach(ctx, parent)`: it loads the queue (taking its lock), sets `ctx.queue`
(what the SMTP server hands outbound mail to) and adds a `RelayService` to the parent MultiService.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailsuite.relay.client import Reply
from mailsuite.relay.deliver import Deliverer, relay_option
from mailsuite.relay.dns import MXResolver
from mailsuite.relay.queue import Queue

__all__ = ["RelayService", "attach"]

log = Logger()


class RelayService(service.Service):
    """Runs deliveries from `ctx`'s settings; `clock` may be a fake for simulated time."""

    name = "relay"

    def __init__(self, ctx: Any, *, clock: Any = None, resolver: MXResolver | None = None,
                 queue: Queue | None = None) -> None:
        self.ctx = ctx
        settings = ctx.settings
        reactor = ctx.reactor
        self.clock = clock if clock is not None else reactor
        self.queue = queue or Queue(Path(settings.data_dir) / "queue", settings=settings, reactor=reactor,
                                    clock=self.clock)
        self.deliverer = Deliverer(self.queue, settings, reactor=reactor, clock=self.clock, resolver=resolver,
                                   deliver_local=self.deliver_local,
                                   is_local_domain=ctx.accounts.is_local_domain)
        self.scan_interval = float(relay_option(settings, "scan_interval", 5.0))
        self._loop = LoopingCall(self.scan)
        self._loop.clock = self.clock

    def startService(self) -> None:
        super().startService()
        self.deliverer.start()
        self.queue.resume().addErrback(lambda f: log.failure("relay: resuming the queue failed", f))
        self._loop.start(self.scan_interval, now=True).addErrback(
            lambda f: log.failure("relay: queue scan failed", f))
        log.info("relay: {n} message(s) in the queue {dir}{via}", n=len(self.queue), dir=str(self.queue.dir),
                 via=f", via smarthost {self.deliverer.smarthost}" if self.deliverer.smarthost else "")

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        waiting = self.deliverer.awaiting_end_of_data()
        log.info("relay: stopping ({n} message(s) queued; waiting for {w} end-of-data repl{ies})",
                 n=len(self.queue), w=waiting, ies="y" if waiting == 1 else "ies")
        d = self.deliverer.stop()
        d.addTimeout(10, self.ctx.reactor)
        d.addErrback(lambda f: None)
        d.addCallback(lambda _: self.queue.close())
        return d

    def scan(self) -> defer.Deferred:
        """Carry out `mailsuite queue ...` requests and start whatever is due."""
        d = self.queue.process_control()
        d.addCallback(lambda _: self.deliverer.kick())
        return d

    def deliver_local(self, address: str, sender: str, data: bytes) -> defer.Deferred:
        """Deliver to a recipient in one of our domains (bounces for local senders): Deferred[Reply]."""
        resolution = self.ctx.accounts.resolve(address)
        if resolution is None:
            return defer.succeed(Reply(550, (f"5.1.1 <{address}>: no such local recipient",)))
        # RFC 5321 §4.4: the final delivery records the reverse-path.
        stamped = f"Return-Path: <{sender}>\r\n".encode("utf-8") + data
        ds = []
        for target in resolution.local:
            d = self.ctx.store.deliver(target.user, stamped, target.folder) if target.folder \
                else self.ctx.store.deliver(target.user, stamped)
            if target.folder:
                d.addErrback(lambda _, user=target.user: self.ctx.store.deliver(user, stamped))
            ds.append(d)
        if resolution.external:
            ds.append(self.queue.enqueue(sender, list(resolution.external), data))
        d = defer.gatherResults(ds, consumeErrors=True)
        d.addCallback(lambda _: Reply(250, ("2.0.0 delivered",)))
        return d


def attach(ctx: Any, parent: Any) -> RelayService:
    """Load the queue, publish it as `ctx.queue`, and run the relay under `parent`."""
    relay = RelayService(ctx)
    try:
        relay.queue.load()
    except (RuntimeError, OSError) as exc:
        from mailsuite.service import StartupError
        raise StartupError(f"mailsuite: relay queue: {exc}") from None
    ctx.queue = relay.queue
    relay.setServiceParent(parent)
    return relay
