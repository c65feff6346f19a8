"""Disk full, read-only file system, permission errors: 4xx, never 250, no corrupt file, recovery (issue 8).

The data directory is a tiny tmpfs mounted by the test (root; in CI the tests run as root).  A filler file
takes the space; deleting it must be enough for deliveries to work again, without a restart.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from twisted.python.failure import Failure

from mailsuite.smtp.delivery import failure_reply
from mailsuite.smtp.events import Envelope
from tests.server import MailServer

from .support import IN_CI, LineClient, maildir_files

USER, PASSWORD = "alice@example.org", "alice-disk-pw"
needs_root = pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="mounting a tmpfs needs root")


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def tiny_server(tmp_path: Path) -> Iterator[MailServer]:
    """The server with its data directory on a 4 MB tmpfs (fits TLS files, users, index and WAL)."""
    srv = MailServer(tmp_path, services=("smtp", "imap"), allow_plaintext_loopback=True)
    _mount(srv.data_dir, "4m")
    try:
        srv.add_user(USER, PASSWORD)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()
    finally:
        _umount(srv.data_dir)


def _fill(directory: Path, leave: int = 0) -> Path:
    """Take all free space of the file system of ``directory`` except about ``leave`` bytes."""
    filler = directory / "filler"
    vfs = os.statvfs(directory)
    target = max(0, vfs.f_bavail * vfs.f_frsize - leave)
    with open(filler, "ab") as f:
        chunk = b"\0" * 65536
        while target > 0:
            try:
                target -= f.write(chunk[:min(len(chunk), target)])
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def _send(srv: MailServer, tag: str, size: int) -> str:
    """One SMTP transaction on port 25; returns the reply to the end of data."""
    with LineClient(srv.port("smtp")) as c:
        assert c.smtp_reply().startswith("220")
        c.smtp("EHLO disk.test")
        assert c.smtp("MAIL FROM:<sender@remote.test>").startswith("250")
        assert c.smtp(f"RCPT TO:<{USER}>").startswith("250")
        assert c.smtp("DATA").startswith("354")
        body = b"".join(b"%s %06d %s\r\n" % (tag.encode(), i, b"y" * 60) for i in range(size // 75 + 1))
        c.send(f"Subject: {tag}\r\nX-Test-Id: {tag}\r\n\r\n".encode() + body + b"END\r\n.\r\n")
        reply = c.smtp_reply()
        c.smtp("QUIT")
        return reply


def _check_files(srv: MailServer, accepted: set[str]) -> None:
    """Exactly the accepted messages, each complete; no leftover in tmp/."""
    box = srv.maildir(USER)
    found = []
    for path in maildir_files(box):
        data = path.read_bytes()
        assert data.endswith(b"END\r\n"), f"truncated {path}"
        assert int(re.search(r",S=(\d+)", path.name).group(1)) == len(data)
        found.append(re.search(rb"X-Test-Id: (\S+)", data).group(1).decode())
    assert sorted(found) == sorted(accepted)
    assert list((box / "tmp").iterdir()) == []


@needs_root
def test_disk_full_gets_4xx_then_recovers(tiny_server: MailServer) -> None:
    srv = tiny_server
    accepted = set()
    assert _send(srv, "before", 2000).startswith("250 2.0.0")
    accepted.add("before")
    filler = _fill(srv.data_dir)
    for n, size in enumerate((100, 30_000, 300_000)):
        reply = _send(srv, f"full{n}", size)
        assert reply.startswith(("452 4.3.1", "451 4.3.0")), reply
    # room for the headers but not the body: the write fails half-way, the partial file must go
    filler.unlink()
    filler = _fill(srv.data_dir, leave=64 * 1024)
    reply = _send(srv, "half", 600_000)
    assert reply.startswith(("452 4.3.1", "451 4.3.0")), reply
    _check_files(srv, accepted)
    filler.unlink()
    assert _send(srv, "after", 300_000).startswith("250 2.0.0")
    accepted.add("after")
    _check_files(srv, accepted)
    log = srv.log_text()
    assert "No space left on device" in log
    assert "Traceback" not in log, log[-3000:]
    with LineClient(srv.port("imap")) as c:        # the index is usable afterwards
        c.line()
        assert c.imap("a", f"LOGIN {USER} {PASSWORD}")[1].startswith("a OK")
        untagged, done = c.imap("b", "SELECT INBOX")
        assert done.startswith("b OK") and "* 2 EXISTS" in untagged


@needs_root
def test_disk_full_smtp_reply_is_452_431(tiny_server: MailServer) -> None:
    """RFC 5321 §4.2.2 / RFC 3463 §3.4: a full disk is 452 4.3.1 (insufficient system storage)."""
    filler = _fill(tiny_server.data_dir)
    try:
        assert _send(tiny_server, "full", 30_000).startswith("452 4.3.1")
    finally:
        filler.unlink()


@needs_root
def test_imap_append_on_full_disk_is_a_clean_no(tiny_server: MailServer) -> None:
    srv = tiny_server
    filler = _fill(srv.data_dir)
    message = b"Subject: append\r\n\r\n" + b"z" * 50_000 + b"\r\n"
    with LineClient(srv.port("imap")) as c:
        c.line()
        assert c.imap("a", f"LOGIN {USER} {PASSWORD}")[1].startswith("a OK")
        c.send(b"b APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        _untagged, done = c.imap_tagged("b")
        assert re.match(r"b NO \[(OVERQUOTA|SERVERBUG|UNAVAILABLE|LIMIT)\]", done), done   # RFC 5530 §3
        filler.unlink()
        c.send(b"c APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        assert c.imap_tagged("c")[1].startswith("c OK")
        assert c.imap("d", "NOOP")[1].startswith("d OK")
    assert list((srv.maildir(USER) / "tmp").iterdir()) == []


@needs_root
def test_read_only_file_system_gets_451_and_recovers(tiny_server: MailServer) -> None:
    srv = tiny_server
    assert _send(srv, "rw", 1000).startswith("250 2.0.0")
    # a read-only bind mount over the mail directory: the server's open index stays writable, every new
    # file fails with EROFS (remounting the whole tmpfs read-only is refused while files are open)
    mail = srv.data_dir / "mail"
    imap = LineClient(srv.port("imap"))
    subprocess.run(["mount", "--bind", str(mail), str(mail)], check=True)
    try:
        imap.line()
        assert imap.imap("a", f"LOGIN {USER} {PASSWORD}")[1].startswith("a OK")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mail)], check=True)
        reply = _send(srv, "ro", 1000)
        assert reply.startswith("451 4.3.0"), reply
        message = b"Subject: ro\r\n\r\nX-Test-Id: none\r\n"
        imap.send(b"b APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        assert imap.imap_tagged("b")[1].startswith("b NO"), "APPEND on a read-only file system"
        assert imap.imap("c", "NOOP")[1].startswith("c OK")
    finally:
        imap.close()
        subprocess.run(["umount", str(mail)], check=True)
    assert _send(srv, "rw-again", 1000).startswith("250 2.0.0")
    _check_files(srv, {"rw", "rw-again"})
    log = srv.log_text()
    assert "smtp: delivery failed from=<sender@remote.test> ip=127.0.0.1: Read-only file system" in log
    # the IMAP engine's traceback for the failed APPEND is test_imap_append_read_only_logs_one_line's gap
    assert [r for r in traceback_records(log) if "[mailsuite.imap." not in r] == [], log[-3000:]


def traceback_records(log: str) -> list[str]:
    """The first line of each log record that carries a traceback."""
    lines = log.splitlines()
    return [lines[i - 1] for i, line in enumerate(lines) if i and line.strip().startswith("Traceback")]


@needs_root
def test_imap_append_read_only_logs_one_line(tiny_server: MailServer) -> None:
    srv = tiny_server
    mail = srv.data_dir / "mail"
    imap = LineClient(srv.port("imap"))
    subprocess.run(["mount", "--bind", str(mail), str(mail)], check=True)
    try:
        imap.line()
        assert imap.imap("a", f"LOGIN {USER} {PASSWORD}")[1].startswith("a OK")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mail)], check=True)
        message = b"Subject: ro\r\n\r\nbody\r\n"
        imap.send(b"b APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        assert imap.imap_tagged("b")[1].startswith("b NO")
    finally:
        imap.close()
        subprocess.run(["umount", str(mail)], check=True)
    log = srv.log_text()
    assert "Read-only file system" in log
    assert traceback_records(log) == [], log[-3000:]


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/mail/x/tmp/1"), "452 4.3.1"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "452 4.3.1"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/mail/x/new"), "451 4.3.0"),
    (OSError(errno.EROFS, "Read-only file system"), "451 4.3.0"),
    (ValueError("anything else"), "451 4.3.0"),
])
def test_failure_reply_codes(error: Exception, expected: str) -> None:
    """Permission errors (which root cannot be made to see on a real file system) map like the others."""
    from twisted.internet import defer
    env = Envelope(mail_from="a@remote.test", peer_ip="127.0.0.1")
    wrapped = Failure(defer.FirstError(Failure(error), 0))
    assert failure_reply(wrapped, env).to_bytes().decode().startswith(expected)
    assert failure_reply(Failure(error), env).to_bytes().decode().startswith(expected)
