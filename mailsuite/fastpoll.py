"""The epoll reactor's poll step without Twisted's per-event log context.

Twisted's ``EPollReactor.doPoll`` runs every read or write event through ``log.callWithLogger``: it asks the
connection for its ``logPrefix()``, pushes a ``{"system": prefix}`` context (a thread-local dict stack) and
pops it again.  That context only names the connection in lines of Twisted's *legacy* ``log.msg`` / ``log.err``;
our lines come from ``twisted.logger.Logger`` and carry their own namespace and fields.  In bench 1-2 the
wrapper was about 10% of the reactor thread (py-spy ``--gil``: ``callWithLogger`` 85% inclusive,
``_doReadOrWrite`` 74%), paid on every event of every connection.

:func:`install` gives the running reactor a ``doIteration`` that calls ``_doReadOrWrite`` directly.  What
``callWithLogger`` adds besides the context is a last-resort ``except`` that logs; that stays (with the
connection's prefix in the message).  Only Twisted's own epoll reactor, of exactly that class, is changed;
any other reactor (``twistd -r poll``, a test's fake clock) is left alone.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.logger import Logger

__all__ = ["install"]

log = Logger(namespace="mailsuite.reactor")


def install(reactor: Any) -> bool:
    """Replace the poll step of ``reactor`` if it is Twisted's ``EPollReactor``; True if replaced."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:      # not Linux
        return False
    if type(reactor) is not EPollReactor or getattr(reactor, "_mailsuite_fastpoll", False):
        return False
    poller = reactor._poller
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        """``EPollReactor.doPoll`` (Twisted 26.10) less the per-event ``callWithLogger``."""
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                # _doReadOrWrite catches what doRead/doWrite raise and drops the connection itself
                handle(selectable, fd, event)
            except Exception:
                log.failure("unhandled error in the event handler of {prefix}", prefix=_prefix(selectable))

    reactor.doIteration = do_poll
    reactor._mailsuite_fastpoll = True
    return True


def _prefix(selectable: Any) -> str:
    try:
        return str(selectable.logPrefix())
    except Exception:  # noqa: BLE001 - only for a log line
        return repr(selectable)
