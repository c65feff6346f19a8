"""mailsuite.fastwrite: write_now sends and close_now closes at once only when nothing can be overtaken."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import interfaces, protocol, tcp
from zope.interface import implementer

from twisted.internet import main

from mailsuite.fastwrite import close_now, write_now


@implementer(interfaces.IPushProducer)
class _Push:
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


@implementer(interfaces.IPullProducer)
class _Pull:
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: list = []

    def connectionLost(self, reason=None) -> None:
        self.lost.append(reason)


@pytest.fixture
def pair():
    from twisted.internet import reactor

    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(1.0)
    conn = tcp.Connection(a, protocol.Protocol(), reactor)
    conn.connected = 1
    yield conn, b
    conn.producer = None
    conn.stopWriting()                        # a queued write registered the socket with the reactor
    a.close()
    b.close()


def _queued(conn: tcp.Connection) -> int:
    return conn._tempDataLen + len(conn.dataBuffer) - conn.offset


def test_idle_connection_sends_at_once(pair) -> None:
    conn, peer = pair
    write_now(conn, b"+OK hello\r\n")
    assert _queued(conn) == 0
    assert peer.recv(100) == b"+OK hello\r\n"


def test_a_push_producer_that_is_not_paused_does_not_stop_it(pair) -> None:
    conn, peer = pair
    conn.producer, conn.streamingProducer = _Push(), True
    write_now(conn, b"+OK 1\r\n")
    assert _queued(conn) == 0 and peer.recv(100) == b"+OK 1\r\n"
    conn.producerPaused = True                # the send buffer was full: keep Twisted's order
    write_now(conn, b"+OK 2\r\n")
    assert _queued(conn) == len(b"+OK 2\r\n")


def test_a_pull_producer_or_queued_bytes_go_through_the_buffer(pair) -> None:
    conn, _peer = pair
    conn.producer, conn.streamingProducer = _Pull(), False
    write_now(conn, b"a")
    assert _queued(conn) == 1
    conn.producer = None
    write_now(conn, b"b")                     # behind "a": must not overtake it
    assert _queued(conn) == 2


def test_a_full_socket_buffer_queues_the_rest(pair) -> None:
    conn, peer = pair
    big = b"x" * (8 << 20)
    write_now(conn, big)
    queued = _queued(conn)
    assert 0 < queued < len(big)              # part went straight out, the rest waits for doWrite


def test_close_now_on_an_idle_connection_closes_at_once(pair) -> None:
    conn, peer = pair
    proto = _Recorder()
    conn.protocol = proto
    write_now(conn, b"221 bye\r\n")
    close_now(conn)
    assert len(proto.lost) == 1 and proto.lost[0].check(main.CONNECTION_DONE.__class__)
    assert not conn.connected and conn.fileno() == -1
    assert peer.recv(100) == b"221 bye\r\n" and peer.recv(100) == b""     # the reply, then EOF


def test_close_now_with_queued_bytes_leaves_it_to_twisted(pair) -> None:
    conn, peer = pair
    proto = _Recorder()
    conn.protocol = proto
    conn.write(b"queued\r\n")                 # not sent yet: Twisted must flush it before closing
    close_now(conn)
    assert proto.lost == [] and conn.disconnecting and conn.connected
    conn.doWrite()
    assert peer.recv(100) == b"queued\r\n"
