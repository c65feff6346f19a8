"""Incremental SMTP dot-stuffing for outbound DATA (RFC 5321 §4.5.2).

`DotStuffer` turns message bytes, fed in chunks split anywhere, into the exact DATA stream: every line end
becomes CRLF (a bare CR or bare LF is never sent on the wire, so no hop can read a different end of data,
RFC 5321 §2.3.8) and every line that starts with "." gets one more "." in front.  `finish()` closes the last
line and appends the terminator `.CRLF`.  The result does not depend on how the input was chunked.
"""

from __future__ import annotations

import re

from mailsuite.dotstuff import stuff_lines

_LINE_END = re.compile(rb"\r\n|\r|\n")


class DotStuffer:
    """Pure, incremental dot-stuffer: `feed(chunk) -> bytes`, then `finish() -> bytes`."""

    def __init__(self) -> None:
        self._at_line_start = True   # the next output byte starts a line
        self._pending_cr = False     # input ended in CR: wait for the next byte (CRLF split across chunks)
        self._finished = False

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            raise ValueError("DotStuffer.feed() after finish()")
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # A CR at the end may be the first half of a CRLF split across chunks.
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        # RFC 5321 §2.3.8: lines end with CRLF only; normalise bare CR and bare LF.
        lines = _LINE_END.sub(b"\r\n", chunk)
        # RFC 5321 §4.5.2: a line starting with "." is sent with one more "." (every LF is now after a CR)
        out = stuff_lines(lines, self._at_line_start)
        self._at_line_start = lines.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """Close the last line (if needed) and return the rest plus the end-of-data `.CRLF`."""
        if self._finished:
            raise ValueError("DotStuffer.finish() called twice")
        self._finished = True
        out = b""
        if self._pending_cr:
            out = b"\r\n"
            self._pending_cr = False
            self._at_line_start = True
        if not self._at_line_start:
            out += b"\r\n"
        return out + b".\r\n"


def stuff(data: bytes) -> bytes:
    """Whole-message convenience: the complete DATA stream (stuffed body plus `.CRLF`)."""
    s = DotStuffer()
    return s.feed(data) + s.finish()


def unstuff(stream: bytes) -> bytes:
    """Inverse of `stuff` for CRLF input: strip the terminator and one leading dot per line (tests, bounces)."""
    if not stream.endswith(b".\r\n"):
        raise ValueError("DATA stream without terminator")
    body = stream[:-3]
    if not body:
        return b""
    lines = body.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
        trailing = True
    else:
        trailing = False
    out = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return out + (b"\r\n" if trailing else b"")
