"""End to end: never an open relay, AUTH only after TLS, STARTTLS injection, SMTP smuggling (DESIGN.md §4)."""

from __future__ import annotations

import base64
import socket
import time
import uuid

import pytest

from tests.server import MailServer

from .conftest import USERS, client_tls


class Raw:
    """A line-level SMTP client on a plain socket, so tests control every byte and packet."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def reply(self) -> str:
        """Read one complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] == b" ":
                return "\r\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def queue_files(srv: MailServer) -> list[str]:
    q = srv.data_dir / "queue"
    return sorted(p.name for p in q.iterdir() if p.suffix == ".eml") if q.is_dir() else []


@pytest.mark.parametrize("rcpt, expected", [
    ("<victim@elsewhere.test>", "554 5.7.1"),                               # unauthenticated relay
    ("<victim%elsewhere.test@example.org>", "550 5.7.1"),                   # percent hack
    ('<"victim@elsewhere.test"@example.org>', "550 5.7.1"),                 # quoted local part
    ('<"victim%elsewhere.test"@example.org>', "550 5.7.1"),
    ("<elsewhere.test!victim@example.org>", "550 5.7.1"),                   # bang path
    ("<@example.org:victim@elsewhere.test>", "554 5.7.1"),                  # source route through us
    ("<@example.org,@example.net:victim@elsewhere.test>", "554 5.7.1"),
    ("<victim@[127.0.0.1]>", "554 5.7.1"),                                  # address literal
])
@pytest.mark.parametrize("sender", ["<stranger@remote.test>", "<>", "<alice@example.org>"])
def test_mx_is_not_an_open_relay(smtp_server: MailServer, rcpt: str, expected: str, sender: str) -> None:
    before = queue_files(smtp_server)
    c = Raw(smtp_server.port("smtp"))
    try:
        c.reply()
        c.cmd("EHLO attacker.test")
        assert c.cmd(f"MAIL FROM:{sender}").startswith("250")
        assert c.cmd(f"RCPT TO:{rcpt}").startswith(expected)
        assert c.cmd("DATA").startswith("554 5.5.1")
    finally:
        c.close()
    assert queue_files(smtp_server) == before


def test_submission_needs_auth_and_tls(smtp_server: MailServer) -> None:
    c = Raw(smtp_server.port("submission"))
    try:
        c.reply()
        ehlo = c.cmd("EHLO c")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        assert c.cmd("MAIL FROM:<alice@example.org>").startswith("530 5.7.0")
        token = base64.b64encode(f"\0alice@example.org\0{USERS['alice@example.org']}".encode()).decode()
        # AUTH before TLS: refused without looking at the (correct) password
        assert c.cmd(f"AUTH PLAIN {token}") == \
            "538 5.7.11 Encryption required for requested authentication mechanism"
        assert c.cmd("AUTH LOGIN").startswith("538 5.7.11")
        assert c.cmd("RCPT TO:<victim@elsewhere.test>").startswith("503 5.5.1")
    finally:
        c.close()
    assert "auth failure" not in smtp_server.log_text()


def test_unauthenticated_submission_after_tls_cannot_relay(smtp_server: MailServer) -> None:
    c = Raw(smtp_server.port("submissions"))
    c.sock = client_tls().wrap_socket(c.sock)
    try:
        c.reply()
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<>").startswith("530 5.7.0")
        assert c.cmd("RCPT TO:<victim@elsewhere.test>").startswith("503 5.5.1")
    finally:
        c.close()


def test_starttls_injection_not_executed(smtp_server: MailServer) -> None:
    """Commands sent in the same packet as STARTTLS must never run, before or after the handshake."""
    c = Raw(smtp_server.port("smtp"))
    try:
        c.reply()
        c.cmd("EHLO c")
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.org>\r\n")
        assert c.reply() == "220 2.0.0 Ready to start TLS"
        assert c.buf == b""
        c.sock = client_tls().wrap_socket(c.sock)
        # the first reply over TLS belongs to our EHLO, not to the injected MAIL/RCPT
        ehlo = c.cmd("EHLO c")
        assert ehlo.startswith("250-mail.example.org") and "STARTTLS" not in ehlo
        assert c.cmd("RCPT TO:<alice@example.org>").startswith("503 5.5.1")   # no MAIL survived
        assert c.cmd("NOOP") == "250 2.0.0 Ok"
    finally:
        c.close()


def test_smtp_smuggling_is_one_message(smtp_server: MailServer) -> None:
    mark = uuid.uuid4().hex
    c = Raw(smtp_server.port("smtp"))
    try:
        c.reply()
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<alice@example.org>")
        assert c.cmd("DATA").startswith("354")
        smuggled = (f"Subject: outer {mark}\r\n\r\nhello\n.\r\nMAIL FROM:<admin@example.org>\r\n"
                    f"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: smuggled {mark}\r\n\r\nx\r\n.\n"
                    "tail\r\n.\r\n")
        c.send(smuggled.encode())
        assert c.reply().startswith("250 2.0.0")
        assert c.cmd("QUIT").startswith("221")
    finally:
        c.close()
    for _ in range(100):
        if any(mark.encode() in m for m in smtp_server.messages("alice@example.org")):
            break
        time.sleep(0.05)
    [data] = [m for m in smtp_server.messages("alice@example.org") if mark.encode() in m]
    assert f"Subject: smuggled {mark}".encode() in data       # stayed inside the one message
    assert data.count(b"\r\n") == data.count(b"\n")            # bare LFs normalised to CRLF
    assert not any(mark.encode() in m for m in smtp_server.messages("bob@example.org"))


def test_auth_failures_then_disconnect(smtp_server: MailServer) -> None:
    c = Raw(smtp_server.port("submissions"))
    c.sock = client_tls().wrap_socket(c.sock)
    try:
        c.reply()
        c.cmd("EHLO c")
        bad = base64.b64encode(b"\0alice@example.org\0wrong-password").decode()
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("535 5.7.8")
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("535 5.7.8")
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("535 5.7.8")
        assert c.reply().startswith("421 4.7.0")
        assert c.closed()
    finally:
        c.close()
    assert "mailsuite auth failure: service=submissions ip=127.0.0.1 user=alice@example.org" in smtp_server.log_text()


def test_connection_limit_per_ip(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = MailServer(tmp_path_factory.mktemp("limit"), services=("smtp",),
                     extra_config="[smtp]\nmax_connections_per_ip = 2\n")
    srv.start()
    clients = []
    try:
        for _ in range(2):
            # MailServer.start's readiness probe (connect, close) holds a slot until the server has seen
            # its close, asynchronously: until then a connection may get the 421 this test is about
            for _attempt in range(100):
                clients.append(Raw(srv.port("smtp")))
                greeting = clients[-1].reply()
                if not greeting.startswith("421 "):
                    break
                time.sleep(0.05)
            assert greeting.startswith("220 "), greeting
        extra = Raw(srv.port("smtp"))
        clients.append(extra)
        assert extra.reply().startswith("421 4.7.0")
        assert extra.closed()
        clients[0].cmd("QUIT")
        clients[0].close()
        for _ in range(100):       # the server notices the close asynchronously
            again = Raw(srv.port("smtp"))
            clients.append(again)
            if again.reply().startswith("220 "):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("connection slot was not released")
    finally:
        for c in clients:
            c.close()
        srv.stop()
