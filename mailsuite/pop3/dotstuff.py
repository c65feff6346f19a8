"""Incremental dot-stuffing of a message sent as a POP3 multi-line response (RETR, TOP).

RFC 1939 §3: each line of a multi-line response ends with CRLF; a line that begins with ``.`` gets one more
``.`` in front, and the response ends with ``.CRLF`` on a line of its own.  The message file is read and sent
in chunks, so the stuffer keeps the little state that crosses a chunk boundary: whether the next byte starts
a line, and whether the previous byte was a CR.  A bare LF (a Maildir written by some other tool) is sent as
CRLF so that no client can mistake a ``\\n.\\n`` inside the message for the end of the response.

For TOP (RFC 1939 §7) the stuffer also stops after the header, the blank line ending it, and ``body_lines``
lines of the body; ``done`` tells the sender it may stop reading the file.

Speed (issue 7, workload 3): the per-byte work runs at C speed and, for the usual message, at ``memchr``
speed.  With ``crlf=True`` (the maildrop measured the file, or its ``,W=`` size says so: no bare LF) the LF
check is skipped; the stuffing itself is :func:`mailsuite.dotstuff.stuff_lines`, shared with the relay.
"""

from __future__ import annotations

import re

from mailsuite.dotstuff import stuff_lines

__all__ = ["DotStuffer", "TERMINATOR", "has_bare_lf", "stuff"]

#: the line that ends every multi-line response (RFC 1939 §3)
TERMINATOR = b".\r\n"

#: a bare LF; scanning for the LF first is 20x faster than the form with the lookbehind in front
_LONE_LF = re.compile(rb"\n(?<!\r\n)")


def has_bare_lf(chunk: bytes, after_cr: bool = False) -> bool:
    """True when ``chunk`` has an LF not preceded by CR; ``after_cr``: the byte before the chunk was CR."""
    return _LONE_LF.search(chunk, 1 if after_cr and chunk[:1] == b"\n" else 0) is not None


#: RFC 1939 §3 byte-stuffing of a chunk (the shared one; see :mod:`mailsuite.dotstuff`)
stuff = stuff_lines


class DotStuffer:
    """Turns message bytes, fed in chunks of any size, into the dot-stuffed body of a multi-line reply.

    ``feed(chunk)`` returns the bytes to send now; ``finish()`` returns the rest, always ending with the
    terminating ``.CRLF``.  The output does not depend on how the message was split into chunks.

    ``crlf=True`` promises that the input has no bare LF (every LF follows a CR), so the LF → CRLF check is
    skipped.  Were the promise wrong, a bare LF would go out as is, still followed by a stuffed ``.``: the
    response can never end early.
    """

    def __init__(self, body_lines: int | None = None, *, crlf: bool = False) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("body_lines must not be negative")
        self._limit = body_lines          # None: the whole message (RETR)
        self._crlf = crlf                 # the input has no bare LF (a measured store file): no LF check
        self._line_start = True           # the next output byte begins a line
        self._last_cr = False             # the previous input byte was CR (CRLF split across chunks)
        self._in_header = True            # TOP only: still inside the header section
        self._body_sent = 0               # TOP only: body lines sent so far
        self._line_head = b""             # TOP only: first bytes of the current input line
        self._done = False
        self._finished = False

    @property
    def done(self) -> bool:
        """True once TOP has everything it needs (the rest of the message is ignored)."""
        return self._done

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            raise RuntimeError("DotStuffer.feed() after finish()")
        if not chunk or self._done:
            return b""
        data = chunk if self._crlf else self._normalise(chunk)
        if self._limit is None:
            return self._stuff(data)
        return self._feed_limited(data)

    def finish(self) -> bytes:
        """The last bytes: an unfinished last line closed with CRLF, then the terminator."""
        if self._finished:
            raise RuntimeError("DotStuffer.finish() called twice")
        self._finished = True
        return (b"" if self._line_start else b"\r\n") + TERMINATOR

    # -- internals --------------------------------------------------------------------------------

    def _normalise(self, chunk: bytes) -> bytes:
        """Bare LF → CRLF, looking one byte back across the chunk boundary."""
        if has_bare_lf(chunk, self._last_cr):
            prefix = b"\r" if self._last_cr else b"x"
            chunk = _LONE_LF.sub(b"\r\n", prefix + chunk)[1:]
        self._last_cr = chunk.endswith(b"\r")
        return chunk

    def _stuff(self, data: bytes) -> bytes:
        """RFC 1939 §3 byte-stuffing of complete or partial lines; tracks the line start across calls."""
        if not data:
            return data
        out = stuff(data, self._line_start)
        self._line_start = data[-1] == 10          # ends with LF: the next byte begins a line
        return out

    def _feed_limited(self, data: bytes) -> bytes:
        """TOP: pass the header, the blank line and at most ``limit`` body lines, then stop.

        Every line seen before the limit is reached is sent, so partial lines go out at once; only the first
        bytes of the current line are kept, to recognise the blank line that ends the header.
        """
        cut = len(data)
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                self._line_head = (self._line_head + data[pos:pos + 3])[:3]
                break
            head = (self._line_head + data[pos:end + 1])[:3]
            self._line_head = b""
            pos = end + 1
            if self._in_header:
                if head == b"\r\n":            # RFC 5322 §2.1: an empty line ends the header section
                    self._in_header = False
                    self._done = self._limit == 0
            else:
                self._body_sent += 1
                self._done = self._body_sent >= (self._limit or 0)
            if self._done:
                cut = pos
                break
        return self._stuff(data[:cut])
