"""mailsuite.fastpoll: the epoll reactor's poll step without the per-event log context."""

from __future__ import annotations

import socket
import sys

import pytest
from twisted.internet.task import Clock

from mailsuite import fastpoll

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll is Linux only")


class _Reader:
    """A minimal IReadDescriptor around one end of a socket pair."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock, self.fail, self.got = sock, fail, b""
        self.lost = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "test-reader"

    def doRead(self) -> None:
        self.got += self.sock.recv(100)
        if self.fail:
            raise RuntimeError("boom")

    def connectionLost(self, reason) -> None:
        self.lost = reason


@pytest.fixture
def epoll_reactor():
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()          # not installed: a private instance for the test
    yield reactor
    reactor._poller.close()


def test_install_replaces_the_poll_step_once(epoll_reactor) -> None:
    assert fastpoll.install(epoll_reactor) is True
    assert "doIteration" in vars(epoll_reactor)
    assert fastpoll.install(epoll_reactor) is False      # already done


def test_other_reactors_are_left_alone() -> None:
    clock = Clock()
    assert fastpoll.install(clock) is False
    assert "doIteration" not in vars(clock)


def test_events_reach_the_descriptor(epoll_reactor) -> None:
    fastpoll.install(epoll_reactor)
    a, b = socket.socketpair()
    with a, b:
        reader = _Reader(a)
        epoll_reactor.addReader(reader)
        b.sendall(b"hello")
        epoll_reactor.doIteration(1.0)
        assert reader.got == b"hello"
        epoll_reactor.removeReader(reader)


def test_a_failing_handler_drops_that_connection_only(epoll_reactor) -> None:
    """doRead raising: Twisted's _doReadOrWrite drops that descriptor (connectionLost); the loop goes on."""
    fastpoll.install(epoll_reactor)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        bad, good = _Reader(a, fail=True), _Reader(c)
        epoll_reactor.addReader(bad)
        epoll_reactor.addReader(good)
        b.sendall(b"x")
        d.sendall(b"y")
        epoll_reactor.doIteration(1.0)
        assert good.got == b"y" and bad.got == b"x"
        assert bad.lost is not None and good.lost is None
        epoll_reactor.removeReader(good)
