"""End-to-end IMAP against the real server (twistd): imaplib, a byte-for-byte Thunderbird session,
IDLE woken by SMTP delivery, curl and mbsync."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.server import HOST, MailServer, RssSampler, rss_kb

from .imapcheck import fetch_items, tagged, untagged

IN_CI = os.environ.get("CI") == "true"
PASSWORD = "Secret pw 1"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry")


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = MailServer(tmp_path_factory.mktemp("imape2e"), services=("smtp", "imap", "imaps"))
    for name in USERS:
        server.add_user(f"{name}@example.org", PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log, log[-5000:]


def message(n: int, subject: str = "message") -> bytes:
    return (b"From: Sender <sender@example.net>\r\nTo: someone@example.org\r\nSubject: %s %d\r\n"
            b"Message-ID: <m%d@example.net>\r\nDate: Mon, 4 Mar 2024 10:00:00 +0000\r\n\r\nbody %d\r\n"
            % (subject.encode(), n, n, n))


def login(srv: MailServer, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, srv.port("imap"))
    m.starttls(tls_context())
    m.login(f"{user}@example.org", PASSWORD)
    return m


def smtp_deliver(srv: MailServer, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP(HOST, srv.port("smtp"), local_hostname="client.example.net", timeout=30) as s:
        s.sendmail("sender@example.net", [rcpt], data)


# -- imaplib


def test_imaplib_plaintext_login_refused(srv):
    m = imaplib.IMAP4(HOST, srv.port("imap"))
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice@example.org", PASSWORD)
    m.shutdown()


def test_imaplib_full_session(srv):
    m = login(srv, "alice")
    try:
        typ, caps = m.capability()
        assert b"IDLE" in caps[0] and b"MOVE" in caps[0] and b"UIDPLUS" in caps[0]
        for i in range(1, 4):
            typ, data = m.append("INBOX", None, None, message(i))
            assert typ == "OK" and b"APPENDUID" in data[0]
        smtp_deliver(srv, "alice@example.org", message(4, "smtp"))
        typ, data = m.select("INBOX")
        assert typ == "OK" and data == [b"4"]  # APPENDed and SMTP-delivered mail both visible
        typ, data = m.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)")
        assert typ == "OK" and len([d for d in data if isinstance(d, tuple) or d.startswith(b"1 (")]) >= 1
        typ, data = m.fetch("4", "(BODY[])")
        assert data[0][1].endswith(message(4, "smtp")) and b"Received:" in data[0][1]
        typ, data = m.fetch("4", "(FLAGS)")
        assert b"\\Seen" in data[0]
        typ, data = m.search(None, "SUBJECT", "smtp")
        assert data == [b"4"]
        typ, data = m.store("1", "+FLAGS", "(\\Flagged $Work)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"$Work" in data[0]
        typ, data = m.uid("SEARCH", None, "FLAGGED")
        assert data == [b"1"]
        typ, data = m.uid("COPY", "1:2", "Archive")
        assert typ == "OK" and m.response("COPYUID")[1][0] is not None  # RFC 4315 code seen by imaplib
        typ, data = m.uid("MOVE", "3", "Trash")
        assert typ == "OK"
        typ, data = m.select("Archive", readonly=True)
        assert data == [b"2"]
        m.select("INBOX")
        m.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = m.expunge()
        assert data == [b"1"]
        typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
        assert b"MESSAGES 2" in data[0]
        typ, data = m.create("Projects.2024")
        assert typ == "OK"
        typ, data = m.list('""', "Projects*")
        assert any(b"Projects.2024" in d for d in data)
        typ, data = m.rename("Projects.2024", "Projects.2025")
        assert typ == "OK"
        assert m.delete("Projects.2025")[0] == "OK"
    finally:
        m.logout()


def test_imaps_implicit_tls(srv):
    m = imaplib.IMAP4_SSL(HOST, srv.port("imaps"), ssl_context=tls_context())
    try:
        assert "STARTTLS" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
        m.login("bob@example.org", PASSWORD)
        typ, data = m.list()
        assert typ == "OK" and any(b"\\Sent" in d for d in data)
    finally:
        m.logout()


# -- raw sessions


class Raw:
    """A raw IMAP client socket (plaintext, STARTTLS-able)."""

    def __init__(self, srv: MailServer, service: str = "imap") -> None:
        self.sock: socket.socket = socket.create_connection((HOST, srv.port(service)), timeout=30)
        if service == "imaps":
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""
        self.read_until(b"\r\n")

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed, got {self.buf!r}"
            self.buf += chunk
        idx = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:idx], self.buf[idx:]
        return out

    def command(self, tag: bytes, line: bytes) -> bytes:
        self.sock.sendall(tag + b" " + line + b"\r\n")
        return self.read_tagged(tag)

    def read_tagged(self, tag: bytes) -> bytes:
        out = b""
        while True:
            out += self.read_until(b"\r\n")
            last = out[: -2].rsplit(b"\r\n", 1)[-1]
            # a literal announced at the end of a line: read its bytes before looking for more lines
            m = re.search(rb"\{(\d+)\}\r\n$", out)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    chunk = self.sock.recv(65536)
                    assert chunk
                    self.buf += chunk
                out += self.buf[:n]
                self.buf = self.buf[n:]
                continue
            if last.startswith(tag + b" "):
                return out

    def starttls(self) -> None:
        out = self.command(b"2", b"STARTTLS")
        assert b"2 OK" in out
        self.sock = tls_context().wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


def test_thunderbird_session_byte_for_byte(srv):
    """DESIGN.md §5: the command shapes Thunderbird sends, each answer well-formed."""
    for i in range(1, 3):
        smtp_deliver(srv, "carol@example.org", message(i, "tb"))
    c = Raw(srv)
    out = c.command(b"1", b"capability")
    assert b"STARTTLS" in out and b"LOGINDISABLED" in out
    c.starttls()
    out = c.command(b"3", b"capability")
    assert b"AUTH=PLAIN" in out
    c.sock.sendall(b"4 authenticate PLAIN\r\n")
    assert c.read_until(b"\r\n") == b"+ \r\n"
    c.sock.sendall(base64.b64encode(b"\0carol@example.org\0" + PASSWORD.encode()) + b"\r\n")
    out = c.read_tagged(b"4")
    assert tagged(out, b"4")[1] == b"OK"
    script = [
        b'5 ID ("name" "Thunderbird" "version" "115.3.1")',
        b"6 namespace",
        b"7 ENABLE UTF8=ACCEPT",
        b'8 list (subscribed) "" "*" return (special-use)',
        b'9 select "INBOX"',
        b"10 UID fetch 1:* (FLAGS)",
        b"11 UID fetch 1:2 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
        b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To Received)])",
        b"12 UID fetch 1 (UID RFC822.SIZE FLAGS BODY.PEEK[])",
        b"13 UID fetch 2 (UID RFC822.SIZE FLAGS BODY.PEEK[]<0.65536>)",
        b'14 STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)',
        b"15 uid store 1 +Flags (\\Seen)",
        b"16 UID fetch 3:* (FLAGS)",
        b'17 UID MOVE 2 "Trash"',
        b"18 uid store 1 +Flags (\\Deleted)",
        b"19 UID EXPUNGE 1",
        b"20 noop",
    ]
    results = {}
    for line in script:
        tag = line.split(b" ", 1)[0]
        out = c.command(tag, line.split(b" ", 1)[1])
        assert tagged(out, tag)[1] == b"OK", out
        results[tag] = out
    assert untagged(results[b"8"], b"LIST")
    assert b"\\Sent" in results[b"8"]
    assert untagged(results[b"9"], b"EXISTS")[0][1] == b"2"
    hdr = fetch_items(untagged(results[b"11"], b"FETCH")[0])
    assert any(k.startswith(b"BODY[HEADER.FIELDS") for k in hdr)
    assert fetch_items(untagged(results[b"12"], b"FETCH")[0])[b"BODY[]"].endswith(message(1, "tb"))
    assert b"BODY[]<0>" in results[b"13"]
    assert untagged(results[b"14"], b"STATUS")
    assert b"[COPYUID" in results[b"17"] and b"* 2 EXPUNGE" in results[b"17"]
    assert b"* 1 EXPUNGE" in results[b"19"]
    sent = message(9, "sent")
    c.sock.sendall(b'21 APPEND "Sent" (\\Seen) {%d+}\r\n' % len(sent) + sent + b"\r\n")
    out = c.read_tagged(b"21")
    assert b"[APPENDUID" in out
    c.command(b"22", b"logout")
    c.close()


def test_bad_sasl_plain_counts_and_is_logged_on_993(srv):
    """A PLAIN response naming another authorization identity, or a malformed one, is a failed login:
    the fail2ban line (service=imap on 993 too), and the third failure ends the session."""
    c = Raw(srv, "imaps")
    proxy = base64.b64encode(b"alice@example.org\0bob@example.org\0" + PASSWORD.encode())
    out = c.command(b"a", b"AUTHENTICATE PLAIN " + proxy)
    assert out.startswith(b"a NO [AUTHORIZATIONFAILED]"), out
    out = c.command(b"b", b"AUTHENTICATE PLAIN " + base64.b64encode(b"\0bob@example.org"))
    assert out.startswith(b"b BAD"), out
    out = c.command(b"c", b"AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.org\0" + PASSWORD.encode()))
    assert out.startswith(b"c OK")  # still allowed: two failures so far
    c.close()
    c = Raw(srv, "imaps")
    for tag in (b"d", b"e"):
        c.command(tag, b"AUTHENTICATE PLAIN " + proxy)
    c.sock.sendall(b"f AUTHENTICATE PLAIN " + proxy + b"\r\n")
    assert b"* BYE" in c.read_until(b"* BYE")
    c.close()
    log = srv.log_text()
    assert log.count("mailsuite auth failure: service=imap ip=127.0.0.1 user=bob@example.org\n") >= 4
    assert "service=imaps" not in log


def test_idle_sees_smtp_delivery(srv):
    c = Raw(srv, "imaps")
    c.command(b"a", b"LOGIN dave@example.org \"" + PASSWORD.encode() + b"\"")
    out = c.command(b"b", b"SELECT INBOX")
    assert b"* 0 EXISTS" in out
    c.sock.sendall(b"c IDLE\r\n")
    assert c.read_until(b"\r\n") == b"+ idling\r\n"
    smtp_deliver(srv, "dave@example.org", message(1, "idle"))
    got = c.read_until(b"EXISTS\r\n")
    assert b"* 1 EXISTS" in got
    c.sock.sendall(b"DONE\r\n")
    assert b"c OK" in c.read_tagged(b"c")
    c.close()


def test_literal_limit_and_injection(srv):
    c = Raw(srv, "imaps")
    c.command(b"a", b"LOGIN erin@example.org \"" + PASSWORD.encode() + b"\"")
    c.sock.sendall(b"b APPEND INBOX {999999999999}\r\n")
    out = c.read_until(b"\r\n")
    assert out.startswith(b"b NO [TOOBIG]")
    c.close()
    c = Raw(srv)
    c.sock.sendall(b"1 STARTTLS\r\n2 LOGIN erin@example.org x\r\n")
    assert c.read_until(b"\r\n").startswith(b"1 OK")
    c.sock = tls_context().wrap_socket(c.sock)
    out = c.command(b"3", b"NOOP")
    assert out == b"3 OK NOOP completed\r\n"  # the pipelined LOGIN was dropped
    c.close()


# -- curl


@pytest.mark.skipif(shutil.which("curl") is None and not IN_CI, reason="curl not installed")
def test_curl_imap_starttls_and_imaps(srv):
    smtp_deliver(srv, "bob@example.org", message(1, "curl"))
    auth = f"bob@example.org:{PASSWORD}"
    out = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", auth, f"imap://{HOST}:{srv.port('imap')}/"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"INBOX" in out.stdout and b"Sent" in out.stdout
    out = subprocess.run(["curl", "-sS", "-k", "-u", auth, f"imaps://{HOST}:{srv.port('imaps')}/INBOX;UID=1"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace(b"\r\n", b"\n").endswith(message(1, "curl").replace(b"\r\n", b"\n"))
    out = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", auth, "-X", "SEARCH SUBJECT curl",
                          f"imap://{HOST}:{srv.port('imap')}/INBOX"], capture_output=True, timeout=60)
    assert out.returncode == 0 and b"SEARCH 1" in out.stdout, out


# -- mbsync


def _snapshot(maildir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for box in sorted(p for p in maildir.iterdir() if p.is_dir()):
        names = []
        for sub in ("cur", "new"):
            d = box / sub
            if d.is_dir():
                names += sorted(p.name for p in d.iterdir())
        out[box.name] = names
    return out


def _server_state(srv: MailServer, user: str, boxes: list[str]) -> dict[str, list[tuple[bytes, bytes]]]:
    m = login(srv, user)
    state = {}
    try:
        for box in boxes:
            m.select(box, readonly=True)
            typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
            items = []
            for d in data:
                if isinstance(d, tuple):
                    flags = re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1)
                    items.append((d[1].strip(), b" ".join(sorted(f for f in flags.split() if f != b"\\Recent"))))
            state[box] = sorted(items)
    finally:
        m.logout()
    return state


@pytest.mark.skipif(shutil.which("mbsync") is None and not IN_CI, reason="mbsync not installed")
def test_mbsync_two_way_sync(srv, tmp_path):
    user = "erin"
    m = login(srv, user)
    m.create("Work")
    for i in range(3):
        m.append("INBOX", None, None, message(i, "inbox"))
    for i in range(2):
        m.append("Work", "(\\Flagged)", None, message(i, "work"))
    m.logout()
    local = tmp_path / "mail"
    local.mkdir()
    cert = srv.data_dir / "tls" / "selfsigned-cert.pem"
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount acc
Host {HOST}
Port {srv.port('imap')}
User {user}@example.org
Pass "{PASSWORD}"
SSLType STARTTLS
CertificateFile {cert}

IMAPStore remote
Account acc

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns INBOX Work Archive
Create Both
Expunge Both
Sync All
SyncState *
""")

    def run() -> subprocess.CompletedProcess:
        r = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout, r.stderr, srv.log_text()[-3000:])
        return r

    run()
    snap = _snapshot(local)
    assert len(snap["INBOX"]) == 3 and len(snap["Work"]) == 2
    assert all(":2,F" in n for n in snap["Work"])
    # local changes: a new message, a flag, a deletion
    new = local / "Work" / "new" / "1700000000.local1.host"
    new.write_bytes(message(7, "local"))
    inbox = local / "INBOX"
    files = sorted(p for sub in ("new", "cur") for p in (inbox / sub).iterdir())
    first = files[0]
    first.rename(inbox / "cur" / (first.name.split(":2,")[0] + ":2,S"))
    files[1].unlink()
    # server-side change: a new message in Archive and a flag in Work
    m = login(srv, user)
    m.append("Archive", None, None, message(8, "archive"))
    m.select("Work")
    m.store("1", "+FLAGS", "(\\Seen)")
    m.logout()
    run()
    state = _server_state(srv, user, ["INBOX", "Work", "Archive"])
    assert len(state["INBOX"]) == 2
    assert sum(1 for _, f in state["INBOX"] if b"\\Seen" in f) == 1
    assert any(b"local 7" in s for s, _ in state["Work"])
    assert len(state["Archive"]) == 1
    snap = _snapshot(local)
    assert len(snap["Archive"]) == 1 and len(snap["Work"]) == 3
    assert any(":2,FS" in n for n in snap["Work"])
    # a second run changes nothing, on either side
    run()
    assert _snapshot(local) == snap
    assert _server_state(srv, user, ["INBOX", "Work", "Archive"]) == state


def test_big_message_streamed_over_tls(srv):
    body = b"".join(b"line %07d of a big message, padded to some length ..................\r\n" % i
                    for i in range(80000))  # about 6 MB
    data = b"From: big@example.net\r\nSubject: big\r\n\r\n" + body
    m = imaplib.IMAP4_SSL(HOST, srv.port("imaps"), ssl_context=tls_context())
    try:
        m.login("bob@example.org", PASSWORD)
        m.create("Big")
        assert m.append("Big", None, None, data)[0] == "OK"
        for i in range(60):
            m.append("Big", "(\\Seen)", None, message(i, "many"))
        m.select("Big")
        typ, got = m.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert got[0][1] == data and b"RFC822.SIZE %d" % len(data) in got[0][0]
        typ, got = m.fetch("1", "(BODY.PEEK[]<1000000.65536>)")
        assert got[0][1] == data[1000000:1065536]
        typ, got = m.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK" and len(got) == 61
    finally:
        m.logout()


def test_20mb_append_streams_to_disk(srv):
    """A big APPEND literal goes to a spool file in the Maildir as it arrives: the server's memory
    grows far less than the message, and the message comes back byte for byte."""
    line = b"0123456789" * 7 + b"abcdef\r\n"
    data = (b"From: big@example.net\r\nSubject: twenty\r\n\r\n"
            + b"".join(line for _ in range(20 * 1024 * 1024 // len(line))))
    assert len(data) > 20 * 1000 * 1000
    m = imaplib.IMAP4_SSL(HOST, srv.port("imaps"), ssl_context=tls_context())
    try:
        m.login("frank@example.org", PASSWORD)
        m.create("Huge")
        before = rss_kb(srv)
        with RssSampler(srv) as sampler:
            typ, resp = m.append("Huge", "(\\Flagged)", None, data)
        assert typ == "OK" and b"APPENDUID" in resp[0], resp
        assert sampler.peak - before < 8 * 1024, (before, sampler.peak)  # KiB; the message is 20 MB
        m.select("Huge")
        typ, got = m.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[])")
        assert got[0][1] == data and b"RFC822.SIZE %d" % len(data) in got[0][0] and b"\\Flagged" in got[0][0]
    finally:
        m.logout()
    assert not list((srv.maildir("frank@example.org") / "tmp").iterdir())  # no spool file left


def test_compress_deflate_over_tls(srv):
    """RFC 4978 as Thunderbird uses it: COMPRESS DEFLATE after login, then everything compressed."""
    import zlib

    smtp_deliver(srv, "erin@example.org", message(1, "compressed"))
    c = Raw(srv, "imaps")
    c.command(b"a", b"LOGIN erin@example.org \"" + PASSWORD.encode() + b"\"")
    assert c.command(b"b", b"COMPRESS DEFLATE") == b"b OK DEFLATE active\r\n"
    out_z = zlib.compressobj(6, zlib.DEFLATED, -15)
    in_z = zlib.decompressobj(-15)
    c.sock.sendall(out_z.compress(b'c SELECT "INBOX"\r\nd UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])\r\n'
                                  b"e LOGOUT\r\n") + out_z.flush(zlib.Z_SYNC_FLUSH))
    got = b""
    while not got.endswith(b"e OK LOGOUT completed\r\n"):
        chunk = c.sock.recv(65536)
        assert chunk, got
        got += in_z.decompress(chunk)
    assert b"c OK [READ-WRITE]" in got and message(1, "compressed") in got and b"d OK" in got
    c.close()


def test_plaintext_loopback_exemption(tmp_path):
    server = MailServer(tmp_path, services=("imap",), allow_plaintext_loopback=True)
    server.add_user("alice@example.org", PASSWORD)
    with server:
        m = imaplib.IMAP4(HOST, server.port("imap"))
        assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
        assert m.login("alice@example.org", PASSWORD)[0] == "OK"
        m.logout()
        m = imaplib.IMAP4(HOST, server.port("imap"))
        for _ in range(2):
            with pytest.raises(imaplib.IMAP4.error):
                m.login("alice@example.org", "wrong")
        with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error)):
            m.login("alice@example.org", "wrong")  # the third failure ends the session (auth.max_failures)
    assert "mailsuite auth failure: service=imap ip=127.0.0.1 user=alice@example.org" in server.log_text()


# -- imapclient (a real client library, when installed)


def test_imapclient_session(srv):
    """imapclient over STARTTLS and 993: login, folders, append, select, fetch, search, flags, move,
    IDLE woken by an SMTP delivery."""
    # a test dependency once pyproject's [test] extra lists it; skipped where it is not installed
    if IN_CI:   # a test dependency ([test] extra): CI must have it
        from imapclient import IMAPClient
    else:
        IMAPClient = pytest.importorskip("imapclient", reason="imapclient not installed").IMAPClient

    user = "grace@example.org"
    c = IMAPClient(HOST, port=srv.port("imap"), ssl=False, timeout=30)
    c.starttls(tls_context())
    c.login(user, PASSWORD)
    assert b"IDLE" in c.capabilities() and b"UIDPLUS" in c.capabilities()
    names = {name for _flags, _delim, name in c.list_folders()}
    assert {"INBOX", "Sent", "Trash"} <= names
    assert c.find_special_folder(b"\\Trash") == "Trash"
    c.create_folder("Projekte/Übersicht".replace("/", "."))  # modified UTF-7 on the wire
    assert "Projekte.Übersicht" in {name for _f, _d, name in c.list_folders()}
    for i in range(3):
        c.append("INBOX", message(i, "client"), flags=[b"\\Flagged"] if i == 1 else [])
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 3 and info[b"UIDVALIDITY"] > 0
    uids = c.search(["SUBJECT", "client 1"])
    assert len(uids) == 1
    assert c.search(["FLAGGED"]) == uids
    data = c.fetch(uids, ["ENVELOPE", "BODY.PEEK[]", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODYSTRUCTURE"])
    item = data[uids[0]]
    assert item[b"BODY[]"] == message(1, "client") and item[b"RFC822.SIZE"] == len(message(1, "client"))
    assert item[b"ENVELOPE"].subject == b"client 1" and item[b"ENVELOPE"].from_[0].mailbox == b"sender"
    assert b"\\Seen" not in item[b"FLAGS"] and item[b"BODYSTRUCTURE"][0].lower() == b"text"
    c.add_flags(uids, [b"\\Seen", b"$Label1"])
    assert set(c.get_flags(uids)[uids[0]]) == {b"\\Flagged", b"\\Seen", b"$Label1", b"\\Recent"}
    c.move(uids, "Projekte.Übersicht")
    assert c.folder_status("Projekte.Übersicht", [b"MESSAGES"])[b"MESSAGES"] == 1
    c.idle()
    smtp_deliver(srv, user, message(9, "pushed"))
    responses = []
    for _ in range(20):  # bounded: up to 20 x 1 s
        responses += c.idle_check(timeout=1)
        if any(r[1] == b"EXISTS" for r in responses):
            break
    c.idle_done()
    assert (3, b"EXISTS") in responses, responses  # 2 left after the MOVE, then the delivery
    assert c.search(["SUBJECT", "pushed"]) != []
    c.logout()
    s = IMAPClient(HOST, port=srv.port("imaps"), ssl=True, ssl_context=tls_context(), timeout=30)
    s.login(user, PASSWORD)
    assert s.select_folder("Projekte.Übersicht", readonly=True)[b"EXISTS"] == 1
    s.logout()


@pytest.mark.skipif(shutil.which("offlineimap") is None and not IN_CI, reason="offlineimap not installed")
def test_offlineimap_two_way_sync(srv, tmp_path):
    """offlineimap over 993 (pinned certificate): download, local flag/new/deleted messages and a
    server-side change go both ways, and a further run changes nothing."""
    user = "henry"
    m = login(srv, user)
    m.create("Work")
    for i in range(3):
        m.append("INBOX", None, None, message(i, "oi"))
    m.append("Work", "(\\Flagged)", None, message(5, "oi work"))
    m.logout()
    der = ssl.PEM_cert_to_DER_cert((srv.data_dir / "tls" / "selfsigned-cert.pem").read_text())
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""[general]
accounts = acc
metadata = {tmp_path}/meta

[Account acc]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = {HOST}
remoteport = {srv.port('imaps')}
remoteuser = {user}@example.org
remotepass = {PASSWORD}
ssl = yes
cert_fingerprint = {hashlib.sha512(der).hexdigest()}
folderfilter = lambda f: f in ["INBOX", "Work"]
""")

    def run() -> None:
        r = subprocess.run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, (r.stdout, r.stderr)

    run()
    snap = _snapshot(local)
    assert len(snap["INBOX"]) == 3 and len(snap["Work"]) == 1 and all(n.endswith(",F") for n in snap["Work"])
    inbox = sorted(p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir())
    inbox[0].rename(local / "INBOX" / "cur" / (inbox[0].name.split(":2,")[0] + ":2,S"))
    inbox[1].unlink()
    (local / "Work" / "new" / "1700000000.oi-local.host").write_bytes(message(6, "oi local"))
    m = login(srv, user)
    m.select("Work")
    m.store("1", "+FLAGS", "(\\Answered)")
    m.logout()
    run()
    state = _server_state(srv, user, ["INBOX", "Work"])
    assert len(state["INBOX"]) == 2 and sum(1 for _, f in state["INBOX"] if b"\\Seen" in f) == 1
    assert len(state["Work"]) == 2
    assert any(n.endswith(",FR") or n.endswith(",RF") for n in _snapshot(local)["Work"])
    run()  # nothing left to do
    assert _server_state(srv, user, ["INBOX", "Work"]) == state
