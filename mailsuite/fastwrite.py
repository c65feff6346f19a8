"""Send small protocol replies at once instead of through Twisted's write buffer.

``transport.write()`` only queues: it registers the socket for EPOLLOUT (one ``epoll_ctl``), the next reactor
round calls ``doWrite`` → ``send``, and ``stopWriting`` unregisters it again (a second ``epoll_ctl``).  For a
request/response protocol where every command gets a short reply that is two extra system calls and a reactor
round per reply; in the SMTP benchmark (bench/RESULTS.md, workload 1) they were a fifth of the reactor thread.
:func:`write_now` sends directly when the transport is a plain TCP connection with nothing queued, no pull
producer (a push producer that is not paused is fine) and no TLS layer; anything not sent at once (a full
socket buffer, an error) goes through ``transport.write`` as before, so ordering, back-pressure and error
handling stay Twisted's.

:func:`close_now` is the same for closing: ``loseConnection()`` always registers for EPOLLOUT and closes in
the next reactor round (three ``epoll_ctl`` and a ``doWrite``); with nothing queued it closes at once, the way
Twisted's own ``loseConnection`` does when the write side is already shut.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.main import CONNECTION_DONE
from twisted.internet.tcp import Connection
from twisted.python.failure import Failure

__all__ = ["write_now", "close_now"]

#: The reason given to ``connectionLost`` by :func:`close_now`, made once: a ``Failure`` computes the names
#: of its exception's classes when made, and nothing changes it afterwards.
_DONE = Failure(CONNECTION_DONE)


def _idle_plain_tcp(transport: Any) -> bool:
    """True when bytes sent on the socket now cannot overtake anything already queued."""
    if not isinstance(transport, Connection):
        # e.g. a TLSMemoryBIOProtocol (port 465/993/995): it forwards unknown attributes to the TCP
        # connection below it, so duck typing would find a socket that must never see plaintext
        return False
    try:
        return (
            transport.TLS is False
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            # a push producer that is not paused only regulates back-pressure (POP3's write gate is
            # registered for the whole session); a pull producer is fed as the buffer drains: not then
            and (transport.producer is None or (transport.streamingProducer and not transport.producerPaused))
            and transport._tempDataLen == 0
            and len(transport.dataBuffer) == transport.offset
        )
    except AttributeError:   # a Twisted version without these internals
        return False


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it immediately when that is safe (see the module docstring)."""
    if not data:
        return
    if _idle_plain_tcp(transport):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0     # a reset or broken pipe: let Twisted's own write path see it and close
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


def close_now(transport: Any) -> None:
    """Close ``transport`` after what was written to it: at once when nothing is queued (see the module
    docstring), else through ``loseConnection`` (Twisted flushes the buffer first).  The protocol's
    ``connectionLost`` may run before this returns."""
    if _idle_plain_tcp(transport):
        transport.stopReading()
        transport.stopWriting()
        transport.connectionLost(_DONE)
        return
    transport.loseConnection()
