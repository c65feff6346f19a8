"""Accepting TCP connections without Twisted's per-accept machinery.

Twisted's ``tcp.Port.doRead`` wraps each round of ``accept()`` in a log-buffering context (a ``Logger`` made per
call), pulls the sockets out of a generator, and Python's ``socket.accept()`` converts the listener's family and
type to enums for every new socket.  In the SMTP benchmark (bench/RESULTS.md, workload 1: one connection per
message) that was about 5% of the reactor thread, of which half is not the ``accept`` system call itself.

:func:`install` gives a listening ``tcp.Port`` a ``doRead`` that accepts with the socket's raw ``_accept()`` and
then does what Twisted does for each connection: the address (IPv6 with its scope id), ``buildProtocol``, a
session number, a ``tcp.Server`` transport, ``makeConnection``, and the same growth of ``numberAccepts``.  Any
``accept`` error other than "nothing left" is handed to Twisted's own ``doRead``, which knows them all
(``EMFILE`` with its reserved descriptor, ``EPERM``, ``ECONNABORTED``...).  Only ports of exactly Twisted's
class are changed.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

from mailsuite.logtext import Logger

__all__ = ["install"]

log = Logger(namespace="mailsuite.reactor")
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def install(port: Any) -> bool:
    """Give ``port`` (a listening ``tcp.Port``) the lean ``doRead``; True if it was changed."""
    if type(port) is not tcp.Port or getattr(port, "_mailsuite_fastaccept", False):
        return False
    listener = port.socket
    raw_accept = getattr(listener, "_accept", None)
    if raw_accept is None:
        return False
    family, kind, proto = int(listener.family), int(listener.type), listener.proto
    make_socket = socket.socket
    twisted_do_read = port.doRead

    def do_read() -> None:
        try:
            limit = port.numberAccepts
            accepted = 0
            while accepted < limit:
                try:
                    fd, addr = raw_accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    twisted_do_read()       # its loop handles (and logs) every accept error its way
                    return
                skt = make_socket(family, kind, proto, fileno=fd)
                accepted += 1
                if len(addr) == 4:          # IPv6: keep the scope id, as Twisted does
                    addr = (socket.getnameinfo(addr, _NUMERIC)[0], *addr[1:])
                protocol = port.factory.buildProtocol(port._buildAddr(addr))
                if protocol is None:
                    skt.close()
                    continue
                session = port.sessionno
                port.sessionno = session + 1
                protocol.makeConnection(port.transport(skt, protocol, addr, port, session, port.reactor))
            # Twisted's scaling of the accept loop: more next time if this round hit the limit
            port.numberAccepts = limit + 20 if accepted == limit else max(1, accepted)
        except BaseException:  # noqa: BLE001 - as Twisted's doRead: log, keep listening
            log.failure("accepting a connection on {port}", port=port)

    port.doRead = do_read
    port._mailsuite_fastaccept = True
    return True
