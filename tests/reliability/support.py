"""Helpers shared by the reliability and abuse tests (and by ``bench/sigkill_loop.py``, ``bench/soak.py``).

Raw line clients on plain sockets (optionally bound to another loopback source address such as 127.0.0.2),
a TLS context for the self-signed test certificate, and small readers of the server's files.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
IN_CI = os.environ.get("CI") == "true"


def client_tls() -> ssl.SSLContext:
    """The test server has a self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(port: int, source: str | None = None, timeout: float = 20.0) -> socket.socket:
    """A TCP connection to the server; ``source`` binds the client end (e.g. 127.0.0.2)."""
    return socket.create_connection((HOST, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


class LineClient:
    """Line-level client: the test controls every byte; ``reply_*`` readers understand SMTP/POP3/IMAP."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 20.0) -> None:
        self.sock: socket.socket = connect(port, source, timeout)
        self.buf = b""

    # -- bytes ---------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line without its CRLF; ConnectionError when the server closed first."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def closed(self) -> bool:
        """True when the server closed the connection (reads and drops anything still sent)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except OSError:
            return True

    def starttls(self) -> None:
        self.sock = client_tls().wrap_socket(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- SMTP ----------------------------------------------------------------------------------------
    def smtp_reply(self) -> str:
        lines = []
        while True:
            line = self.line()
            lines.append(line.decode("ascii", "replace"))
            if line[3:4] != b"-":
                return "\r\n".join(lines)

    def smtp(self, command: str | bytes) -> str:
        self.send((command.encode() if isinstance(command, str) else command) + b"\r\n")
        return self.smtp_reply()

    # -- POP3 ----------------------------------------------------------------------------------------
    def pop(self, command: str | bytes) -> str:
        self.send((command.encode() if isinstance(command, str) else command) + b"\r\n")
        return self.line().decode("ascii", "replace")

    # -- IMAP ----------------------------------------------------------------------------------------
    def imap_tagged(self, tag: str) -> tuple[list[str], str]:
        """Untagged lines and the tagged completion for ``tag``."""
        untagged = []
        while True:
            line = self.line().decode("utf-8", "replace")
            if line.startswith(tag + " "):
                return untagged, line
            untagged.append(line)

    def imap(self, tag: str, command: str | bytes) -> tuple[list[str], str]:
        self.send(tag.encode() + b" " + (command.encode() if isinstance(command, str) else command) + b"\r\n")
        return self.imap_tagged(tag)

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def header_value(message: bytes, name: bytes) -> bytes | None:
    """The first value of header field ``name`` in the header section of ``message`` (unfolded)."""
    head = message.split(b"\r\n\r\n", 1)[0]
    prefix = name.lower() + b":"
    for line in head.split(b"\r\n"):
        if line.lower().startswith(prefix):
            return line[len(prefix):].strip()
    return None


def maildir_files(box: Path, subdirs: tuple[str, ...] = ("new", "cur")) -> list[Path]:
    return sorted(p for sub in subdirs if (box / sub).is_dir() for p in (box / sub).iterdir() if p.is_file())


def proc_status(pid: int) -> dict[str, int]:
    """RSS (kB) and open file descriptors of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_kb": rss, "fds": fds}


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> object:
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` seconds pass (then its
    last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()
