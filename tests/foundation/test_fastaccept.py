"""mailsuite.fastaccept: a listening port's lean doRead does what Twisted's does for each connection."""

from __future__ import annotations

import errno
import socket
import sys

import pytest
from twisted.internet import protocol, tcp

from mailsuite import fastaccept

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll is Linux only")


class _Hello(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.append(self)
        self.transport.write(b"hello\r\n")


class _Factory(protocol.ServerFactory):
    protocol = _Hello

    def __init__(self, refuse: bool = False) -> None:
        self.made: list[_Hello] = []
        self.addrs: list = []
        self.refuse = refuse

    def buildProtocol(self, addr):
        self.addrs.append(addr)
        return None if self.refuse else super().buildProtocol(addr)


@pytest.fixture
def reactor():
    from twisted.internet.epollreactor import EPollReactor

    r = EPollReactor()                  # a private, not installed reactor
    yield r
    for reader in list(r.getReaders()):
        r.removeReader(reader)
    r._poller.close()


def _listen(reactor, factory, interface: str = "127.0.0.1") -> tcp.Port:
    port = tcp.Port(0, factory, interface=interface, reactor=reactor)
    port.startListening()
    return port


def _spin(reactor, until, rounds: int = 50) -> None:
    for _ in range(rounds):
        if until():
            return
        reactor.doIteration(0.05)
        reactor.runUntilCurrent()
    raise AssertionError("condition not reached")


def test_install_only_once_and_only_on_twisted_ports(reactor) -> None:
    port = _listen(reactor, _Factory())
    try:
        assert fastaccept.install(port) is True
        assert fastaccept.install(port) is False
        assert fastaccept.install(object()) is False
    finally:
        port.stopListening()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_connections_get_the_transport_twisted_gives(reactor, family, host) -> None:
    factory = _Factory()
    port = _listen(reactor, factory, host)
    fastaccept.install(port)
    clients = [socket.create_connection((host, port.getHost().port)) for _ in range(3)]
    try:
        _spin(reactor, lambda: len(factory.made) == 3)
        _spin(reactor, lambda: all(not p.transport.dataBuffer and not p.transport._tempDataBuffer
                                   for p in factory.made) and not reactor.getWriters())
        for client in clients:
            client.settimeout(2)
            assert client.recv(100) == b"hello\r\n"
        made = factory.made[0]
        assert isinstance(made.transport, tcp.Server) and made.transport.socket.gettimeout() == 0.0
        assert made.transport.socket.family == family
        assert made.transport.getPeer().host == host and factory.addrs[0].host == host
        assert [p.transport.sessionno for p in factory.made] == [0, 1, 2]
    finally:
        for client in clients:
            client.close()
        port.stopListening()


def test_a_refused_protocol_closes_the_socket(reactor) -> None:
    factory = _Factory(refuse=True)
    port = _listen(reactor, factory)
    fastaccept.install(port)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        _spin(reactor, lambda: factory.addrs)
        client.settimeout(2)
        assert client.recv(100) == b""          # closed by the server
    finally:
        client.close()
        port.stopListening()


def test_accept_errors_go_to_twisteds_loop(reactor, monkeypatch) -> None:
    factory = _Factory()
    port = _listen(reactor, factory)
    calls: list[str] = []
    monkeypatch.setattr(tcp.Port, "doRead", lambda self: calls.append("twisted"))

    def fail():
        raise OSError(errno.EMFILE, "Too many open files")

    port.socket = _Listener(port.socket, fail)
    fastaccept.install(port)
    try:
        port.doRead()
        assert calls == ["twisted"] and factory.made == []
    finally:
        port.socket = port.socket.real
        port.stopListening()


class _Listener:
    """The listening socket with a failing ``_accept`` (set before install reads it)."""

    def __init__(self, real: socket.socket, accept) -> None:
        self.real, self._accept = real, accept

    def __getattr__(self, name):
        return getattr(self.real, name)
