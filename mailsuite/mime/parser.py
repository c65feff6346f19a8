"""MIME message parser: a tree of parts with byte offsets into the original message.

RFC 5322 §2.1-§2.2 (header / body split, unfolding), RFC 2045 §5-§6 (Content-Type,
Content-Transfer-Encoding), RFC 2046 §5.1 (multipart boundaries), §5.2.1 (message/rfc822).
Nothing is copied or re-encoded: every part records where its header and body lie in
``data``; sections are slices.  Parsing never raises, whatever the input.

Recovery rules where the RFCs are silent follow Dovecot 2.3 (the reference the IMAP tests
compare against): lines up to the first empty line are the header even without a colon;
a boundary line is any line that starts with ``--boundary`` (the longest, innermost
matching boundary wins); a multipart without a usable boundary gets one empty text/plain
part; Content-* fields: the first occurrence counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import rfc822

__all__ = ["HeaderField", "MessagePart", "parse_message", "MAX_DEPTH", "MAX_PARTS"]

MAX_DEPTH = 100  # nesting limit for multipart / message/rfc822 (DESIGN.md §4 limits)
MAX_PARTS = 10000  # total MIME parts per message; further boundaries are ignored


@dataclass(slots=True)
class HeaderField:
    """One header field: ``name`` as written, ``start``/``end`` of its raw lines in ``data``."""

    name: bytes
    start: int
    end: int
    value_start: int  # first byte after the colon (or ``end`` for a line without colon)

    def folded_value(self, data: bytes) -> bytes:
        """The value with its line breaks kept (leading blanks of the first line skipped,
        the final line break dropped): Dovecot's "full value", used for the Subject."""
        v = data[self.value_start : self.end]
        i = 0
        while i < len(v) and v[i] in b" \t":
            i += 1
        if v.endswith(b"\n"):
            v = v[:-2] if v.endswith(b"\r\n") else v[:-1]
        return v[i:]

    def raw_value(self, data: bytes) -> bytes:
        """The value with CR and LF removed (RFC 5322 §2.2.3 unfolding) and leading blanks
        of the first line skipped; continuation lines keep their leading white space."""
        v = data[self.value_start : self.end]
        i = 0
        while i < len(v) and v[i] in b" \t":
            i += 1
        v = v[i:]
        if b"\n" in v:
            v = v.replace(b"\r", b"").replace(b"\n", b"")
        elif v.endswith(b"\r"):
            v = v[:-1]
        return v


@dataclass(slots=True, eq=False)
class MessagePart:
    """A MIME entity: header bytes ``[header_start, header_end)`` (the empty line included),
    body bytes ``[body_start, body_end)``.

    ``children`` holds the parts of a multipart; ``message`` the embedded message of a
    message/rfc822 part (its header starts at this part's ``body_start``).  ``mtype`` /
    ``subtype`` / ``params`` are the effective media type (defaults applied, case kept as
    written); ``synthetic`` marks the empty stand-in part of a multipart without parts.
    """

    data: bytes
    header_start: int
    header_end: int
    body_start: int
    body_end: int
    fields: list[HeaderField] = field(default_factory=list)
    mtype: bytes = b"text"
    subtype: bytes = b"plain"
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type_valid: bool = False  # a parsable Content-Type field was present
    children: list["MessagePart"] = field(default_factory=list)
    message: "MessagePart | None" = None
    synthetic: bool = False
    _index: "dict[bytes, list[HeaderField]] | None" = None

    # -- header access -------------------------------------------------------------
    def header_fields(self, name: str | bytes) -> list[HeaderField]:
        """Every field called ``name`` (case-insensitive), in message order."""
        index = self._index
        if index is None:
            index = {}
            for f in self.fields:
                index.setdefault(f.name.lower(), []).append(f)
            self._index = index
        key = (name.encode() if isinstance(name, str) else name).lower()
        return index.get(key, [])

    def header_value(self, name: str | bytes, last: bool = False) -> bytes | None:
        """The unfolded value of the first (or last) field called ``name``, or None."""
        found = self.header_fields(name)
        if not found:
            return None
        return (found[-1] if last else found[0]).raw_value(self.data)

    # -- media type ------------------------------------------------------------------
    @property
    def is_multipart(self) -> bool:
        return self.mtype.lower() == b"multipart"

    @property
    def is_message(self) -> bool:
        """An encapsulated message (message/rfc822 parsed as one, RFC 2046 §5.2.1)."""
        return self.message is not None

    def param(self, name: bytes) -> bytes | None:
        key = name.lower()
        for k, v in self.params:
            if k.lower() == key:
                return v
        return None

    @property
    def content_transfer_encoding(self) -> bytes | None:
        v = self.header_value(b"content-transfer-encoding")
        if v is None:
            return None
        tok = rfc822.parse_token(v)
        return tok if tok else None

    @property
    def header(self) -> bytes:
        return self.data[self.header_start : self.header_end]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start : self.body_end]

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_start

    @property
    def body_lines(self) -> int:
        """Number of lines of the body (RFC 3501 §7.4.2 body-fld-lines: LF count)."""
        return self.data.count(b"\n", self.body_start, self.body_end)

    def walk(self):
        """This part and every part below it, depth first (embedded messages included)."""
        yield self
        if self.message is not None:
            yield from self.message.walk()
        for c in self.children:
            yield from c.walk()


class _Term:
    """A boundary line found while scanning: which boundary, and where."""

    __slots__ = ("level", "close", "line_start", "after", "before")

    def __init__(self, level: int, close: bool, line_start: int, after: int, before: int):
        self.level = level  # index into the boundary stack
        self.close = close  # "--boundary--"
        self.line_start = line_start
        self.after = after  # first byte after the boundary line
        self.before = before  # end of the preceding content (its line break excluded)


class _Parser:
    __slots__ = ("data", "parts")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0

    # -- boundaries (RFC 2046 §5.1.1) --------------------------------------------------
    def _match_line(self, pos: int, end: int, stack: list[bytes]) -> _Term | None:
        d = self.data
        if not stack or self.parts >= MAX_PARTS or d[pos : pos + 2] != b"--":
            return None
        lf = d.find(b"\n", pos, end)
        line_end = end if lf < 0 else lf
        after = end if lf < 0 else lf + 1
        content_end = line_end - 1 if line_end > pos and d[line_end - 1] == 0x0D else line_end
        best = -1
        best_len = -1
        # Innermost first; a longer matching boundary beats a shorter one (Dovecot).
        for level in range(len(stack) - 1, -1, -1):
            b = stack[level]
            if len(b) > best_len and d.startswith(b, pos + 2) and pos + 2 + len(b) <= content_end:
                best, best_len = level, len(b)
        if best < 0:
            return None
        tail = pos + 2 + best_len
        close = d[tail : tail + 2] == b"--" and tail + 2 <= content_end
        before = pos
        if before > 0 and d[before - 1] == 0x0A:
            before -= 1
            if before > 0 and d[before - 1] == 0x0D:
                before -= 1
        return _Term(best, close, pos, after, before)

    def _find_boundary(self, pos: int, end: int, stack: list[bytes], floor: int) -> _Term | None:
        """First boundary line at or after ``pos`` (a line start) before ``end``."""
        if not stack:
            return None
        d = self.data
        t = self._match_line(pos, end, stack)
        if t is not None:
            return self._clamp(t, floor)
        while True:
            hit = d.find(b"\n--", pos, end)
            if hit < 0:
                return None
            t = self._match_line(hit + 1, end, stack)
            if t is not None:
                return self._clamp(t, floor)
            pos = hit + 1

    @staticmethod
    def _clamp(t: _Term, floor: int) -> _Term:
        if t.before < floor:
            t.before = floor
        return t

    # -- header (RFC 5322 §2.2) ---------------------------------------------------------
    def _header(self, start: int, end: int, stack: list[bytes]) -> tuple[list[HeaderField], int, _Term | None]:
        """Header fields from ``start``; returns (fields, header_end, boundary-if-hit)."""
        d = self.data
        fields: list[HeaderField] = []
        pos = start
        while pos < end:
            lf = d.find(b"\n", pos, end)
            nxt = end if lf < 0 else lf + 1
            line_end = nxt if lf < 0 else lf
            if line_end > pos and d[line_end - 1] == 0x0D:
                line_end -= 1
            if line_end == pos:  # the empty line ends the header
                return fields, nxt, None
            c = d[pos]
            if c in (0x20, 0x09) and fields:
                fields[-1].end = nxt  # continuation line
                pos = nxt
                continue
            if stack and c == 0x2D:
                t = self._match_line(pos, end, stack)
                if t is not None:
                    # A boundary line inside the header ends this part (Dovecot): the
                    # header stops before the line break preceding it, while the
                    # enclosing parts keep that line break (it was read as header text).
                    hend = max(t.before, start)
                    t.before = pos
                    return fields, hend, t
            colon = d.find(b":", pos, line_end)
            if colon < 0:  # Dovecot: a line without colon is still a header line
                fields.append(HeaderField(d[pos:line_end], pos, nxt, line_end))
            else:
                fields.append(HeaderField(d[pos:colon].rstrip(b" \t"), pos, nxt, colon + 1))
            pos = nxt
        return fields, end, None

    # -- entities -----------------------------------------------------------------------
    def entity(self, start: int, end: int, stack: list[bytes], digest: bool, depth: int) -> tuple[MessagePart, _Term | None]:
        self.parts += 1
        d = self.data
        fields, hend, term = self._header(start, end, stack)
        part = MessagePart(d, start, hend, hend, hend, fields)
        _apply_content_type(part, digest)
        if term is not None:  # boundary right inside the header: empty body
            return _complete(part), term
        body_start = hend
        depth_ok = depth < MAX_DEPTH
        if part.is_multipart and depth_ok:
            return part, self._multipart(part, body_start, end, stack, depth)
        if _is_rfc822(part) and depth_ok:
            inner, term = self.entity(body_start, end, stack, False, depth + 1)
            part.message = inner
            part.body_end = end if term is None else max(term.before, body_start)
            return part, term
        term = self._find_boundary(body_start, end, stack, start)
        part.body_end = end if term is None else term.before
        _empty_body(part)
        return _complete(part), term

    def _multipart(self, part: MessagePart, body_start: int, end: int, stack: list[bytes], depth: int) -> _Term | None:
        boundary = part.param(b"boundary")
        if not boundary:
            # Dovecot (lenient, RFC 3501 needs >= 1 part): no usable boundary, so the body
            # is one opaque block and the part list is one empty text/plain stand-in.
            term = self._find_boundary(body_start, end, stack, part.header_start)
            part.body_end = end if term is None else term.before
            _empty_body(part)
            part.children.append(_synthetic(part))
            return term
        inner = stack + [boundary]
        own = len(inner) - 1
        term = self._find_boundary(body_start, end, inner, body_start)
        while term is not None and term.level == own and not term.close:
            child, term = self.entity(term.after, end, inner, part.subtype.lower() == b"digest", depth + 1)
            part.children.append(child)
        if term is not None and term.level == own and term.close:
            # Epilogue (RFC 2046 §5.1.1): runs to the next boundary of an enclosing part.
            term = self._find_boundary(term.after, end, stack, body_start)
        part.body_end = end if term is None else max(term.before, body_start)
        if not part.children:
            part.children.append(_synthetic(part))
        return term


def _empty_body(part: MessagePart) -> None:
    """A boundary right after the header's empty line: the line break before a boundary
    belongs to the boundary (RFC 2046 §5.1.1), so here it is the empty line itself and
    the header ends without it (as Dovecot reports)."""
    if part.body_end < part.body_start:
        pos = max(part.body_end, part.header_start)
        part.header_end = part.body_start = part.body_end = pos


def _complete(part: MessagePart) -> MessagePart:
    """Keep RFC 3501 §9 grammar for parts not parsed further (nesting limit, empty body):
    a multipart gets its one empty stand-in part, a message/rfc822 an empty message."""
    if part.is_multipart and not part.children:
        part.children.append(_synthetic(part))
    elif _is_rfc822(part) and part.message is None:
        pos = part.body_end
        part.message = MessagePart(part.data, pos, pos, pos, pos, params=[(b"charset", b"us-ascii")])
    return part


def _synthetic(parent: MessagePart) -> MessagePart:
    pos = parent.body_end
    p = MessagePart(parent.data, pos, pos, pos, pos)
    p.params = [(b"charset", b"us-ascii")]
    p.synthetic = True
    return p


def _is_rfc822(part: MessagePart) -> bool:
    # RFC 2046 §5.2.1.  Parsed as a message whatever its (illegal) transfer encoding, so
    # BODYSTRUCTURE always has the envelope and body RFC 3501 §9 body-type-msg requires.
    return part.mtype.lower() == b"message" and part.subtype.lower() == b"rfc822"


def _apply_content_type(part: MessagePart, digest: bool) -> None:
    """Effective media type (RFC 2045 §5.2 defaults; RFC 2046 §5.1.5 digest default)."""
    value = part.header_value(b"content-type")
    parsed = rfc822.parse_content_type(value) if value is not None else None
    if parsed is None:
        if digest and value is None:
            part.mtype, part.subtype, part.params = b"message", b"rfc822", []
        else:
            # RFC 2045 §5.2: missing or syntactically invalid -> text/plain; us-ascii.
            part.mtype, part.subtype, part.params = b"text", b"plain", [(b"charset", b"us-ascii")]
        return
    part.mtype, part.subtype, part.params = parsed
    part.content_type_valid = True


def parse_message(data: bytes) -> MessagePart:
    """Parse a whole message (RFC 5322) into its MIME tree; never raises."""
    if not isinstance(data, bytes):
        data = bytes(data)
    p = _Parser(data)
    root, _ = p.entity(0, len(data), [], False, 0)
    return root
