"""Incremental IMAP input framing: command lines and literals (RFC 3501 §4.3, RFC 7888).

The framer is lazy: ``feed()`` only buffers, ``next_event()`` cuts one event off the buffer.  This lets
the engine change mode between events (raw lines during AUTHENTICATE and IDLE) and drop everything
still buffered when STARTTLS begins, so pipelined plaintext can never be read as commands.

Events:

- :class:`RawCommand`   one complete command: its lines (CRLF and literal markers removed) and literals.
- :class:`Continue`     a synchronizing literal ``{n}`` was accepted: the engine must send ``+`` now.
- :class:`Refused`      a literal was refused (too big) before ``+``; the command is dropped.
- :class:`TooLong`      a line passed the length limit; the rest of it is discarded.
- :class:`Line`         one raw line, in line mode (AUTHENTICATE responses, IDLE's ``DONE``).

Bytes inside a literal are never looked at, so they can never be taken for a command.  A big literal
may go to a sink instead of memory (the ``spool`` hook: APPEND messages, :mod:`mailsuite.imap.spool`);
the sink's ``finish()`` result then stands in the command's ``literals`` where the bytes would be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

# RFC 3501 §9 literal = "{" number "}" CRLF; RFC 7888 adds "{" number "+}"; RFC 3516 literal8 "~{".
_LITERAL_AT_END = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}$")
_TAG = re.compile(rb"[\x21-\x7e]+")
_TAG_SPECIALS = set(b'(){%*"\\+')


@dataclass
class RawCommand:
    """A complete command: ``lines[i]`` is followed by ``literals[i]`` (one fewer literal than lines)."""

    lines: list[bytes]
    literals: list[Any] = field(default_factory=list)  # bytes, or a sink's finish() result
    binary: list[bool] = field(default_factory=list)  # literal8 flags, parallel to ``literals``


@dataclass
class Continue:
    tag: str
    size: int


@dataclass
class Refused:
    tag: str
    size: int
    first_line: bytes
    synchronizing: bool


@dataclass
class TooLong:
    tag: str


@dataclass
class Line:
    data: bytes


Event = RawCommand | Continue | Refused | TooLong | Line

# policy(first_line, size, total_so_far) -> True if the literal may be read
LiteralPolicy = Callable[[bytes, int, int], bool]


class Sink(Protocol):
    """Where a spooled literal goes: ``write`` each piece, then ``finish()`` (its result replaces the
    literal's bytes) or ``abort()`` when the command is dropped."""

    def write(self, data: bytes) -> None: ...
    def finish(self) -> Any: ...
    def abort(self) -> None: ...


# spool(first_line, size) -> a Sink for this literal, or None to keep it in memory
SpoolHook = Callable[[bytes, int], "Sink | None"]


def tag_of(line: bytes) -> str:
    """The tag of a (possibly partial) command line, or ``*`` when there is no valid one."""
    head = line.split(b" ", 1)[0]
    if head and _TAG.fullmatch(head) and not (set(head) & _TAG_SPECIALS):
        return head.decode("ascii")
    return "*"


#: what a framer holds between commands: shared empty tuples, replaced by lists when a command has literals
_NONE: tuple = ()


class Framer:
    """Cuts the byte stream into events; see the module docstring.

    Between commands it keeps no containers of its own (one framer per connection: 2000 idle sessions)."""

    __slots__ = ("_policy", "_spool", "_sink", "max_line", "_buf", "_scan", "line_mode", "_lines", "_literals",
                 "_binary", "_total", "_literal_left", "_literal_parts", "_skip", "_skip_line",
                 "_skip_after_literal")

    def __init__(self, policy: LiteralPolicy, max_line: int = 65536, spool: SpoolHook | None = None) -> None:
        self._policy = policy
        self._spool = spool
        self._sink: Sink | None = None
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for LF
        self.line_mode = False
        self._lines: list[bytes] | tuple = _NONE  # the lines of a command with literals, so far
        self._literals: list[Any] | tuple = _NONE
        self._binary: list[bool] | tuple = _NONE
        self._total = 0
        self._literal_left: int | None = None  # reading a literal of this many more bytes
        self._literal_parts: list[bytes] | tuple = _NONE
        self._skip = 0  # bytes of a refused literal still to throw away
        self._skip_line = False  # throw away input up to the next LF
        self._skip_after_literal = False  # after the skipped literal, discard the rest of the command

    def _allowed(self, first_line: bytes, size: int, total: int) -> bool:
        """May this literal be read? (the ``policy`` hook)"""
        return self._policy(first_line, size, total)

    def _open_sink(self, first_line: bytes, size: int) -> "Sink | None":
        """Where this literal goes (the ``spool`` hook); None keeps it in memory."""
        return self._spool(first_line, size) if self._spool is not None else None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Forget everything buffered and any partial command (STARTTLS, RFC 3501 §6.2.1)."""
        self._buf.clear()
        self._scan = 0
        self._abort_command()
        self._skip = 0
        self._skip_line = False
        self._skip_after_literal = False

    def take_buffered(self) -> bytes:
        """Remove and return the unread input (bytes that followed COMPRESS are compressed data,
        RFC 4978 §3)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return data

    def in_command(self) -> bool:
        """True while a command is partly received (between literal lines)."""
        return bool(self._lines) or self._literal_left is not None

    def _abort_command(self) -> None:
        """Drop a partial command, and with it any literal spooled for it."""
        if self._sink is not None:
            self._sink.abort()
        for lit in self._literals:
            if not isinstance(lit, bytes):
                lit.discard()
        self._reset_command()

    def close(self) -> None:
        """The connection is gone: drop what a partial command spooled."""
        self._abort_command()

    def _reset_command(self) -> None:
        self._sink = None
        self._lines = _NONE
        self._literals = _NONE
        self._binary = _NONE
        self._total = 0
        self._literal_left = None
        self._literal_parts = _NONE

    def _add_literal(self, literal: Any) -> None:
        if not self._literals:
            self._literals = []
        self._literals.append(literal)  # type: ignore[union-attr]

    def _take_line(self) -> bytes | None:
        idx = self._buf.find(b"\n", self._scan)
        if idx < 0:
            self._scan = len(self._buf)
            return None
        line = bytes(self._buf[:idx])
        del self._buf[: idx + 1]
        self._scan = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    def next_event(self) -> Event | None:
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return None
                if self._skip_after_literal:
                    self._skip_after_literal = False
                    self._skip_line = True
                continue
            if self._skip_line:
                line = self._take_line()
                if line is None:
                    if len(self._buf) > self.max_line:  # bounded memory while discarding
                        del self._buf[:]
                        self._scan = 0
                    return None
                self._skip_line = False
                # A discarded line may announce another non-synchronizing literal: skip it too.
                m = _LITERAL_AT_END.search(line)
                if m and m.group(3):
                    self._skip = int(m.group(2))
                    self._skip_after_literal = True
                continue
            if self._literal_left is not None:
                if not self._buf:
                    return None
                n = min(self._literal_left, len(self._buf))
                if self._sink is not None:
                    self._sink.write(bytes(self._buf[:n]))
                else:
                    if not self._literal_parts:
                        self._literal_parts = []
                    self._literal_parts.append(bytes(self._buf[:n]))  # type: ignore[union-attr]
                del self._buf[:n]
                self._literal_left -= n
                if self._literal_left:
                    return None
                if self._sink is not None:
                    self._add_literal(self._sink.finish())
                    self._sink = None
                else:
                    self._add_literal(b"".join(self._literal_parts))
                self._literal_parts = _NONE
                self._literal_left = None
                continue
            line = self._take_line()
            if line is None:
                if len(self._buf) > self.max_line:
                    tag = tag_of(self._lines[0] if self._lines else bytes(self._buf[:100]))
                    self._abort_command()
                    self._skip_line = True
                    return TooLong(tag)
                return None
            if len(line) > self.max_line:
                tag = tag_of(self._lines[0] if self._lines else line)
                self._abort_command()
                return TooLong(tag)
            if self.line_mode and not self._lines:
                return Line(line)
            m = _LITERAL_AT_END.search(line)
            if m is None:
                cmd = RawCommand([*self._lines, line], list(self._literals), list(self._binary))
                self._reset_command()
                return cmd
            size = int(m.group(2))
            sync = not m.group(3)
            first = self._lines[0] if self._lines else line
            tag = tag_of(first)
            self._total += len(line)
            if not self._allowed(first, size, self._total):
                self._abort_command()
                if not sync:
                    # RFC 7888 §4: the client sends a non-synchronizing literal anyway; swallow it.
                    self._skip = size
                    self._skip_after_literal = True
                return Refused(tag, size, first, sync)
            self._total += size
            if not self._lines:
                self._lines, self._binary = [], []
            self._lines.append(line[: m.start()])  # type: ignore[union-attr]
            self._binary.append(bool(m.group(1)))  # type: ignore[union-attr]
            self._literal_left = size
            if size:
                self._sink = self._open_sink(first, size)
            if size == 0:
                self._add_literal(b"")
                self._literal_left = None
            if sync:
                return Continue(tag, size)
