"""Big APPEND literals spooled to disk as they arrive, so a session's memory stays bounded.

A literal of at least :data:`SPOOL_THRESHOLD` octets in an APPEND (RFC 3501 §6.3.11) is not collected
in memory: the framer writes each received piece into a :class:`SpoolFile` in the user's Maildir
``tmp/`` (same file system as every folder, so the store can link it in without copying, and a file
left behind by a crash is removed by the store's stale-``tmp/`` cleaning).  Line ends are normalised
to CRLF on the way (the store keeps messages with CRLF, so the file size is RFC822.SIZE).  The framer
puts the resulting :class:`SpooledMessage` where the literal's bytes would have been.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from twisted.logger import Logger

log = Logger()

#: APPEND literals at least this big go to a spool file; smaller ones stay in memory
SPOOL_THRESHOLD = 256 * 1024


class SpooledMessage:
    """A received message literal in a file.  ``failed`` when writing it failed (disk full): the data
    was read and dropped, the command must fail.  Whoever takes it calls :meth:`discard` at the end
    (harmless once the store has linked the file away)."""

    def __init__(self, path: Path, size: int, failed: bool) -> None:
        self.path = path
        self.size = size
        self.failed = failed
        self.taken = False  # handed to the store: the APPEND's completion discards it

    def __len__(self) -> int:
        return self.size

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            log.failure("IMAP: removing the APPEND spool file {path} failed", path=str(self.path))


class SpoolFile:
    """Receives one literal piece by piece (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        name = f"{int(time.time())}.M{secrets.token_hex(8)}P{os.getpid()}.imap-append"
        self.path = directory / name
        self.size = 0
        self._last_cr = False
        self._fd: int | None = None
        self.failed = False
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            log.failure("IMAP: creating the APPEND spool file {path} failed", path=str(self.path))
            self.failed = True

    def write(self, data: bytes) -> None:
        if self.failed or not data:
            return
        data = self._crlf(data)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]  # type: ignore[arg-type]
        except OSError:
            log.failure("IMAP: writing the APPEND spool file {path} failed", path=str(self.path))
            self._fail()
            return
        self.size += len(data)

    def _crlf(self, data: bytes) -> bytes:
        """Bare LF -> CRLF across piece boundaries (a CR ending the previous piece counts)."""
        lead = b""
        if self._last_cr and data[:1] == b"\n":
            lead, data = b"\n", data[1:]
        if b"\n" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._last_cr = data.endswith(b"\r") if data else False
        return lead + data

    def finish(self) -> SpooledMessage:
        self._close()
        return SpooledMessage(self.path, self.size, self.failed)

    def abort(self) -> None:
        """The command was dropped (refused later literal, line too long, connection lost)."""
        self._close()
        SpooledMessage(self.path, self.size, True).discard()

    def _fail(self) -> None:
        self.failed = True
        self._close()
        SpooledMessage(self.path, self.size, True).discard()

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
