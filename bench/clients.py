"""Small asyncio clients for the benchmarks: SMTP/LMTP, POP3 and IMAP, speaking the protocols on raw
streams (no per-line overhead beyond what the protocol needs) so that the client side costs the same
against every server.  They check every reply and raise :class:`ProtocolError` on anything unexpected.
"""

from __future__ import annotations

import asyncio
import re

HOST = "127.0.0.1"
LIMIT = 1 << 22  # stream buffer: a FETCH/RETR line plus literal header stays well inside this


class ProtocolError(Exception):
    pass


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, limit=LIMIT)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, and the final ``.`` line."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# -- SMTP / LMTP ----------------------------------------------------------------------------------------
class SMTPClient:
    """One SMTP (or LMTP, RFC 2033) session; one command at a time, as smtp-source does by default."""

    def __init__(self, port: int, lmtp: bool = False) -> None:
        self.port, self.lmtp = port, lmtp

    async def connect(self) -> None:
        self.reader, self.writer = await _open(self.port)
        await self.expect(220)
        await self.command(b"LHLO bench.client" if self.lmtp else b"EHLO bench.client", 250)

    async def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ProtocolError("connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def expect(self, code: int) -> bytes:
        got, text = await self.reply()
        if got != code:
            raise ProtocolError(f"expected {code}, got {text[:200]!r}")
        return text

    async def command(self, line: bytes, code: int) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.expect(code)

    async def send(self, sender: str, recipients: list[str], stuffed: bytes) -> None:
        """One transaction; ``stuffed`` is the message already dot-stuffed with its final ``.`` line."""
        await self.command(b"MAIL FROM:<" + sender.encode() + b">", 250)
        for rcpt in recipients:
            await self.command(b"RCPT TO:<" + rcpt.encode() + b">", 250)
        await self.command(b"DATA", 354)
        self.writer.write(stuffed)
        for _ in (recipients if self.lmtp else [None]):  # RFC 2033 §4.2: one reply per recipient
            await self.expect(250)

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT", 221)
        finally:
            self.writer.close()


# -- POP3 ---------------------------------------------------------------------------------------------
class POP3Client:
    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self, user: str, password: str) -> None:
        self.reader, self.writer = await _open(self.port)
        await self.status()
        await self.command(b"USER " + user.encode())
        await self.command(b"PASS " + password.encode())

    async def status(self) -> bytes:
        line = await self.reader.readline()
        if not line.startswith(b"+OK"):
            raise ProtocolError(f"POP3: {line[:200]!r}")
        return line

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.status()

    async def multiline(self, line: bytes) -> bytes:
        """Send a command with a multi-line answer; return the body (still dot-stuffed) without ``.``."""
        self.writer.write(line + b"\r\n")
        await self.status()
        buf = bytearray()
        scan = 0
        while True:
            if buf.startswith(b".\r\n"):
                return b""
            end = buf.find(b"\r\n.\r\n", max(scan - 4, 0))
            if end >= 0:
                if end + 5 != len(buf):
                    raise ProtocolError("POP3: data after the end of a multi-line answer")
                return bytes(buf[:end + 2])
            scan = len(buf)
            chunk = await self.reader.read(1 << 18)
            if not chunk:
                raise ProtocolError("POP3: connection closed in a multi-line answer")
            buf += chunk

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT")
        finally:
            self.writer.close()


# -- IMAP ---------------------------------------------------------------------------------------------
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class IMAPClient:
    """IMAP4rev1 client: tagged commands, literal-aware response reading (RFC 3501 §4.3)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.n = 0

    async def connect(self, user: str | None = None, password: str | None = None) -> None:
        self.reader, self.writer = await _open(self.port)
        greeting = await self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ProtocolError(f"IMAP greeting: {greeting[:200]!r}")
        if user is not None:
            await self.command(b"LOGIN " + user.encode() + b" " + (password or "").encode())

    async def response(self) -> tuple[bytes, int]:
        """One response (a line and any literals it carries); returns (first line, literal bytes)."""
        line = await self.reader.readline()
        if not line:
            raise ProtocolError("IMAP: connection closed")
        literal = 0
        first = line
        while (m := _LITERAL.search(line)) is not None:
            size = int(m.group(1))
            await self.reader.readexactly(size)
            literal += size
            line = await self.reader.readline()
            if not line:
                raise ProtocolError("IMAP: connection closed in a response")
        return first, literal

    async def command(self, text: bytes, literal: bytes | None = None) -> tuple[list[bytes], int]:
        """Run one command to its tagged OK; returns the untagged first lines and literal octets seen.
        ``literal`` is sent as a synchronising literal after ``text`` (APPEND)."""
        self.n += 1
        tag = b"a%d" % self.n
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b" {%d}\r\n" % len(literal))
            line, _ = await self.response()
            if not line.startswith(b"+"):
                raise ProtocolError(f"IMAP: no continuation for a literal: {line[:200]!r}")
            self.writer.write(literal + b"\r\n")
        untagged: list[bytes] = []
        octets = 0
        while True:
            line, size = await self.response()
            octets += size
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ProtocolError(f"IMAP {text[:60]!r}: {line[:200]!r}")
                return untagged, octets
            untagged.append(line)

    async def idle_start(self) -> None:
        self.n += 1
        self.idle_tag = b"a%d" % self.n
        self.writer.write(self.idle_tag + b" IDLE\r\n")
        while True:
            line, _ = await self.response()
            if line.startswith(b"+"):
                return
            if line.startswith(self.idle_tag):
                raise ProtocolError(f"IMAP IDLE refused: {line[:200]!r}")

    async def wait_exists(self) -> None:
        while True:
            line, _ = await self.response()
            if line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
                return

    async def idle_done(self) -> None:
        self.writer.write(b"DONE\r\n")
        while True:
            line, _ = await self.response()
            if line.startswith(self.idle_tag + b" "):
                return

    async def logout(self) -> None:
        self.n += 1
        tag = b"a%d" % self.n
        self.writer.write(tag + b" LOGOUT\r\n")
        try:
            while True:
                line, _ = await self.response()
                if line.startswith(tag + b" "):
                    break
        except (ProtocolError, ConnectionError):
            pass
        self.writer.close()

    def close(self) -> None:
        self.writer.close()
