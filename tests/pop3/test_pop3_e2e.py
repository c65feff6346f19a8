"""End-to-end POP3 against the real server (twistd) with poplib, curl, fetchmail and raw sockets."""

from __future__ import annotations

import os
import poplib
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from mailsuite.store import Store
from tests.server import HOST, MailServer, RssSampler, rss_kb

IN_CI = os.environ.get("CI") == "true"
PASSWORD = "Secret pw 1"
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory"]


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = MailServer(tmp_path_factory.mktemp("pop3e2e"), services=("pop3", "pop3s"))
    with ThreadPoolExecutor(4) as pool:      # the users file is locked by each `mailsuite user add`
        list(pool.map(lambda name: server.add_user(f"{name}@example.org", PASSWORD), USERS))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def deliver(srv: MailServer, user: str, *messages: bytes) -> None:
    store = Store(srv.data_dir / "mail")
    try:
        for message in messages:
            store.deliver_sync(user, message)
    finally:
        store.close()


def message(n: int, body: bytes = b"") -> bytes:
    return b"From: a@example.net\r\nSubject: message %d\r\n\r\n" % n + (body or b"body %d\r\n" % n)


def pop(srv: MailServer, user: str) -> poplib.POP3:
    client = poplib.POP3(HOST, srv.port("pop3"), timeout=30)
    client.stls(tls_context())
    client.user(user)
    client.pass_(PASSWORD)
    return client


def retr(client: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            raise AssertionError(f"{name} must be installed under CI")
        pytest.skip(f"{name} not installed")
    return path


# -- poplib -------------------------------------------------------------------------------------------


def test_poplib_stls_stat_list_uidl_retr_top(srv: MailServer) -> None:
    user = "alice@example.org"
    messages = [message(1), message(2), message(3)]
    deliver(srv, user, *messages)
    client = pop(srv, user)
    try:
        assert client.stat() == (3, sum(map(len, messages)))
        _resp, listing, _ = client.list()
        assert listing == [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(messages)]
        _resp, uidls, _ = client.uidl()
        files = sorted(p.name.split(":")[0] for p in srv.message_files(user))
        assert sorted(line.split()[1].decode() for line in uidls) == files
        for i, m in enumerate(messages):
            assert retr(client, i + 1) == m
        _resp, top, _ = client.top(2, 0)
        assert top == [b"From: a@example.net", b"Subject: message 2", b""]
    finally:
        client.quit()
    # a second session sees the same UIDLs
    client = pop(srv, user)
    try:
        assert client.uidl()[1] == uidls
    finally:
        client.quit()
    # RETR set \Seen: the files moved to cur/ with S among their flags
    assert all(p.parent.name == "cur" and "S" in p.name.split(":2,")[1] for p in srv.message_files(user))


def test_pop3s_implicit_tls(srv: MailServer) -> None:
    user = "bob@example.org"
    deliver(srv, user, message(1))
    client = poplib.POP3_SSL(HOST, srv.port("pop3s"), context=tls_context(), timeout=30)
    try:
        assert "STLS" not in client.capa()
        client.user(user)
        client.pass_(PASSWORD)
        assert retr(client, 1) == message(1)
    finally:
        client.quit()


def test_user_pass_before_stls_refused(srv: MailServer) -> None:
    client = poplib.POP3(HOST, srv.port("pop3"), timeout=30)
    try:
        caps = client.capa()
        assert "STLS" in caps and "USER" not in caps
        with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
            client.user("carol@example.org")
        with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
            client.pass_(PASSWORD)
    finally:
        client.quit()


def test_wrong_password_then_dropped(srv: MailServer) -> None:
    client = poplib.POP3(HOST, srv.port("pop3"), timeout=30)
    client.stls(tls_context())
    for attempt in range(3):
        client.user("carol@example.org")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("wrong")
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.noop()
    client.close()
    assert "mailsuite auth failure: service=pop3 ip=127.0.0.1 user=carol@example.org" in srv.log_text()


def test_dele_quit_deletes_and_drop_deletes_nothing(srv: MailServer) -> None:
    user = "dave@example.org"
    deliver(srv, user, message(1), message(2), message(3))
    client = pop(srv, user)
    client.dele(1)
    client.dele(3)
    client.close()                      # dropped without QUIT: nothing removed
    assert len(srv.message_files(user)) == 3
    client = pop(srv, user)             # the lock went with the connection
    assert client.stat()[0] == 3
    deliver(srv, user, message(4))      # arrives during the session: not in this session's view
    assert client.stat()[0] == 3 and len(client.uidl()[1]) == 3
    client.dele(2)
    client.quit()
    assert sorted(srv.messages(user)) == sorted([message(1), message(3), message(4)])


def test_seen_set_when_the_session_ends_even_without_quit(srv: MailServer) -> None:
    """\\Seen for the retrieved messages is set in one batch when the session ends: at QUIT, or when the
    connection drops (deletions only at QUIT, RFC 1939 §6)."""
    import time
    user = "mallory@example.org"
    deliver(srv, user, message(1), message(2), message(3))

    def seen() -> list[bool]:
        return [p.parent.name == "cur" and "S" in p.name.partition(":2,")[2] for p in srv.message_files(user)]

    client = pop(srv, user)
    assert retr(client, 1) == message(1) and retr(client, 3) == message(3)
    client.top(2, 0)
    client.dele(3)
    assert seen() == [False, False, False]          # nothing during the session
    client.close()                                  # dropped without QUIT
    deadline = time.monotonic() + 10
    while seen() != [True, False, True] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen() == [True, False, True]            # retrieved: seen; TOP: not; DELE without QUIT: kept
    client = pop(srv, user)
    assert retr(client, 2) == message(2)
    client.quit()
    assert seen() == [True, True, True]


def test_in_use_second_session(srv: MailServer) -> None:
    user = "erin@example.org"
    deliver(srv, user, message(1))
    first = pop(srv, user)
    second = poplib.POP3(HOST, srv.port("pop3"), timeout=30)
    second.stls(tls_context())
    second.user(user)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_(PASSWORD)
    third = poplib.POP3_SSL(HOST, srv.port("pop3s"), context=tls_context(), timeout=30)
    third.user(user)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        third.pass_(PASSWORD)
    first.quit()
    second.user(user)
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()
    third.quit()


def test_dot_first_line_and_20mb_round_trip(srv: MailServer) -> None:
    user = "frank@example.org"
    dotted = b"Subject: dots\r\n\r\n.\r\n..two\r\n.three\r\nend\r\n"
    line = b"0123456789" * 7 + b"abcdef\r\n"
    big = b"Subject: big\r\n\r\n" + b"".join((b"." if i % 97 == 0 else b"") + line for i in range(20 * 1024 * 1024 // len(line)))
    assert len(big) > 20 * 1000 * 1000
    deliver(srv, user, dotted, big)
    client = pop(srv, user)
    try:
        assert client.list(1).split()[2] == str(len(dotted)).encode()
        assert retr(client, 1) == dotted
        before = rss_kb(srv)
        with RssSampler(srv) as sampler:
            assert retr(client, 2) == big
        # streamed: the server never held the 20 MB message (nor its stuffed copy) in memory
        assert sampler.peak - before < 10 * 1024
        _resp, top, _ = client.top(1, 1)
        assert top == [b"Subject: dots", b"", b"."]            # poplib un-stuffed "..": the line is "."
    finally:
        client.quit()


def test_dot_stuffing_on_the_wire(srv: MailServer) -> None:
    user = "frank@example.org"
    with raw_session(srv, user) as conn:
        conn.sendall(b"RETR 1\r\n")
        data = read_until(conn, b"\r\n.\r\n")
    assert data.endswith(b"\r\n\r\n..\r\n...two\r\n..three\r\nend\r\n.\r\n")


# -- raw sockets: pipelining injection ----------------------------------------------------------------


class raw_session:
    """A logged-in POP3 session over STLS on a plain socket wrapped in TLS."""

    def __init__(self, srv: MailServer, user: str) -> None:
        self.srv, self.user = srv, user

    def __enter__(self) -> ssl.SSLSocket:
        sock = socket.create_connection((HOST, self.srv.port("pop3")), timeout=30)
        read_until(sock, b"\r\n")
        sock.sendall(b"STLS\r\n")
        assert read_until(sock, b"\r\n").startswith(b"+OK")
        self.conn = tls_context().wrap_socket(sock)
        self.conn.sendall(b"USER %s\r\nPASS %s\r\n" % (self.user.encode(), PASSWORD.encode()))
        reply = read_until(self.conn, b"\r\n", count=2)
        assert reply.count(b"+OK") == 2, reply
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.sendall(b"QUIT\r\n")
        read_until(self.conn, b"\r\n")
        self.conn.close()


def read_until(sock: socket.socket, end: bytes, count: int = 1) -> bytes:
    data = b""
    for _ in range(100000):
        if data.count(end) >= count:
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("no end")


def test_stls_pipelining_injection_not_executed(srv: MailServer) -> None:
    user = "grace@example.org"
    deliver(srv, user, message(1))
    sock = socket.create_connection((HOST, srv.port("pop3")), timeout=30)
    read_until(sock, b"\r\n")
    sock.sendall(b"STLS\r\nUSER grace@example.org\r\nPASS " + PASSWORD.encode() + b"\r\nDELE 1\r\nQUIT\r\n")
    assert read_until(sock, b"\r\n") == b"+OK begin TLS negotiation\r\n"
    conn = tls_context().wrap_socket(sock)            # the handshake works: the injected text was dropped
    conn.sendall(b"STAT\r\nPASS " + PASSWORD.encode() + b"\r\nQUIT\r\n")
    replies = read_until(conn, b"\r\n", count=3)
    assert replies == b"-ERR STAT not valid in this state\r\n-ERR PASS must follow USER\r\n+OK bye\r\n"
    conn.close()
    assert len(srv.message_files(user)) == 1


def test_pipelined_commands(srv: MailServer) -> None:
    user = "heidi@example.org"
    deliver(srv, user, message(1), message(2))
    with raw_session(srv, user) as conn:
        conn.sendall(b"STAT\r\nRETR 2\r\nUIDL 1\r\nRETR 1\r\nNOOP\r\n")
        data = read_until(conn, b"+OK\r\n")
    expected_2 = b"+OK %d octets\r\n" % len(message(2)) + message(2) + b".\r\n"
    expected_1 = b"+OK %d octets\r\n" % len(message(1)) + message(1) + b".\r\n"
    assert data.startswith(b"+OK 2 %d\r\n" % (len(message(1)) + len(message(2))) + expected_2)
    assert data.endswith(expected_1 + b"+OK\r\n")


def test_auth_plain_and_login_like_thunderbird(srv: MailServer) -> None:
    import base64
    sock = socket.create_connection((HOST, srv.port("pop3")), timeout=30)
    read_until(sock, b"\r\n")
    sock.sendall(b"STLS\r\n")
    read_until(sock, b"\r\n")
    conn = tls_context().wrap_socket(sock)
    conn.sendall(b"CAPA\r\n")
    assert b"\r\nSASL PLAIN LOGIN\r\n" in read_until(conn, b"\r\n.\r\n")
    conn.sendall(b"AUTH PLAIN\r\n")
    assert read_until(conn, b"\r\n") == b"+ \r\n"
    conn.sendall(base64.b64encode(b"\0carol@example.org\0" + PASSWORD.encode()) + b"\r\n")
    assert read_until(conn, b"\r\n").startswith(b"+OK logged in")
    conn.sendall(b"QUIT\r\n")
    assert read_until(conn, b"\r\n") == b"+OK bye\r\n"
    conn.close()
    with socket.create_connection((HOST, srv.port("pop3s")), timeout=30) as raw:
        conn = tls_context().wrap_socket(raw)
        read_until(conn, b"\r\n")
        conn.sendall(b"AUTH LOGIN\r\n")
        assert read_until(conn, b"\r\n") == b"+ VXNlcm5hbWU6\r\n"
        conn.sendall(base64.b64encode(b"carol@example.org") + b"\r\n")
        assert read_until(conn, b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
        conn.sendall(base64.b64encode(PASSWORD.encode()) + b"\r\nQUIT\r\n")
        assert read_until(conn, b"\r\n", count=2).split(b"\r\n")[:2] == [b"+OK logged in, 0 messages (0 octets)", b"+OK bye"]


# -- curl ---------------------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("curl"), "-sS", "--max-time", "60", *args], capture_output=True, timeout=90)


def test_curl_pop3_ssl_reqd_and_pop3s(srv: MailServer) -> None:
    user = "ivan@example.org"
    messages = [message(1), message(2, b".dot first\r\nx\r\n")]
    deliver(srv, user, *messages)
    auth = f"{user}:{PASSWORD}"
    listing = curl("--ssl-reqd", "-k", "-u", auth, f"pop3://{HOST}:{srv.port('pop3')}/")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(messages))
    for i, m in enumerate(messages):
        got = curl("--ssl-reqd", "-k", "-u", auth, f"pop3://{HOST}:{srv.port('pop3')}/{i + 1}")
        assert got.returncode == 0, got.stderr
        assert got.stdout == m
    got = curl("-k", "-u", auth, f"pop3s://{HOST}:{srv.port('pop3s')}/2")
    assert got.returncode == 0, got.stderr
    assert got.stdout == messages[1]
    # without --ssl-reqd curl does not STLS on its own, and the server refuses the login in clear text
    plain = curl("-u", auth, f"pop3://{HOST}:{srv.port('pop3')}/")
    assert plain.returncode != 0


# -- fetchmail ----------------------------------------------------------------------------------------


def test_fetchmail_stls_keep_uidl(srv: MailServer, tmp_path: Path) -> None:
    fetchmail = tool("fetchmail")
    user = "judy@example.org"
    messages = [message(1), message(2, b".\r\nafter a dot line\r\n")]
    deliver(srv, user, *messages)
    out = tmp_path / "out"
    out.mkdir()
    mda = tmp_path / "mda.py"
    mda.write_text(textwrap.dedent(f"""\
        import os, sys, uuid
        data = sys.stdin.buffer.read()
        with open(os.path.join({str(out)!r}, uuid.uuid4().hex), "wb") as f:
            f.write(data)
        """))
    rc = tmp_path / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no syslog
        poll {HOST} service {srv.port('pop3')} protocol pop3 uidl auth password timeout 60
            user "{user}" there with password "{PASSWORD}" is "judy" here
            keep
            sslproto "TLS1.2+" no sslcertck
            mda "{sys.executable} {mda}"
        """))
    rc.chmod(0o600)
    environment = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([fetchmail, "-f", str(rc), "-i", str(tmp_path / "ids"), "-v", "--nodetach"],
                              capture_output=True, text=True, env=environment, timeout=120)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "STLS" in first.stdout + first.stderr
    fetched = sorted(p.read_bytes() for p in out.iterdir())
    assert len(fetched) == 2
    for original in messages:
        # fetchmail adds a Received: header and hands the MDA LF line ends
        assert any(got.endswith(original.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")) for got in fetched)
    second = run()
    assert second.returncode == 1, second.stdout + second.stderr      # 1: no new mail
    assert len(list(out.iterdir())) == 2
    assert len(srv.message_files(user)) == 2                          # keep: still on the server


# -- with SMTP delivery and IMAP ----------------------------------------------------------------------


def test_smtp_delivered_mail_and_imap_view(tmp_path: Path) -> None:
    import imaplib
    import smtplib
    server = MailServer(tmp_path, services=("smtp", "pop3", "imap"))
    user = "alice@example.org"
    server.add_user(user, PASSWORD)
    server.start()
    try:
        with smtplib.SMTP(HOST, server.port("smtp"), timeout=30) as smtp:
            for n in (1, 2):
                smtp.sendmail("x@example.net", [user], b"Subject: via smtp %d\r\n\r\n.first line dot\r\n" % n)
        stored = server.wait_for_messages(user, 2)
        assert len(stored) == 2
        client = pop(server, user)
        _resp, uidls_before, _ = client.uidl()
        assert sorted(retr(client, n) for n in (1, 2)) == sorted(stored)     # byte-exact, sizes exact
        assert client.list()[1] == [b"%d %d" % (n, len(retr(client, n))) for n in (1, 2)]
        client.quit()
        imap = imaplib.IMAP4(HOST, server.port("imap"), timeout=30)
        imap.starttls(tls_context())
        imap.login(user, PASSWORD)
        assert imap.select("INBOX") == ("OK", [b"2"])
        assert imap.store("1:2", "+FLAGS", "(\\Flagged)")[0] == "OK"      # IMAP touches both messages
        client = pop(server, user)
        assert client.uidl()[1] == uidls_before                             # UIDLs do not change
        client.dele(1)
        client.quit()
        assert imap.noop()[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"1"])                       # IMAP sees the deletion
        imap.logout()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def test_connections_per_ip_are_limited(tmp_path) -> None:
    """DESIGN §4: a flood from one address gets -ERR [SYS/TEMP] beyond [pop3] max_connections_per_ip."""
    import socket as _socket
    from tests.server import MailServer as _Server
    srv = _Server(tmp_path / "flood", services=("pop3",), extra_config="[pop3]\nmax_connections_per_ip = 3\n")
    srv.start()
    held = []
    try:
        for _ in range(3):
            s = _socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=10)
            assert s.recv(512).startswith(b"+OK")
            held.append(s)
        extra = _socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=10)
        assert extra.recv(512).startswith(b"-ERR [SYS/TEMP]")
        extra.close()
        held.pop().close()
        import time as _time
        deadline = _time.monotonic() + 10
        while True:   # the slot frees when the server has seen the close
            again = _socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=10)
            line = again.recv(512)
            again.close()
            if line.startswith(b"+OK") or _time.monotonic() > deadline:
                break
            _time.sleep(0.05)
        assert line.startswith(b"+OK")
    finally:
        for s in held:
            s.close()
        srv.stop()
