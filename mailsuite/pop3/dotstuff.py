"""Incremental dot-stuffing of a message sent as a POP3 multi-line response (RETR, TOP).

RFC 1939 §3: each line of a multi-line response ends with CRLF; a line that begins with ``.`` gets one more
``.`` in front, and the response ends with ``.CRLF`` on a line of its own.  The message file is read and sent
in chunks, so the stuffer keeps the little state that crosses a chunk boundary: whether the next byte starts
a line, and whether the previous byte was a CR.  A bare LF (a Maildir written by some other tool) is sent as
CRLF so that no client can mistake a ``\\n.\\n`` inside the message for the end of the response.

For TOP (RFC 1939 §7) the stuffer also stops after the header, the blank line ending it, and ``body_lines``
lines of the body; ``done`` tells the sender it may stop reading the file.
"""

from __future__ import annotations

import re

__all__ = ["DotStuffer", "TERMINATOR"]

#: the line that ends every multi-line response (RFC 1939 §3)
TERMINATOR = b".\r\n"

_BARE_LF = re.compile(rb"(?<!\r)\n")


class DotStuffer:
    """Turns message bytes, fed in chunks of any size, into the dot-stuffed body of a multi-line reply.

    ``feed(chunk)`` returns the bytes to send now; ``finish()`` returns the rest, always ending with the
    terminating ``.CRLF``.  The output does not depend on how the message was split into chunks.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("body_lines must not be negative")
        self._limit = body_lines          # None: the whole message (RETR)
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
        data = self._normalise(chunk)
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
        lf = chunk.count(b"\n")
        # Fast path (the store keeps CRLF files): every LF is preceded by CR, counted at C speed.
        crlf = chunk.count(b"\r\n") + (1 if self._last_cr and chunk[:1] == b"\n" else 0)
        if lf != crlf:
            prefix = b"\r" if self._last_cr else b"x"
            chunk = _BARE_LF.sub(b"\r\n", prefix + chunk)[1:]
        self._last_cr = chunk.endswith(b"\r")
        return chunk

    def _stuff(self, data: bytes) -> bytes:
        """RFC 1939 §3 byte-stuffing of complete or partial lines; tracks the line start across calls."""
        if not data:
            return data
        out = data.replace(b"\n.", b"\n..")
        if self._line_start and out[:1] == b".":
            out = b"." + out
        self._line_start = out.endswith(b"\n")
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
