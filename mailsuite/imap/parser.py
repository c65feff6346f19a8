"""IMAP command parser: a framed command (see framing.py) -> a typed :class:`Command` (RFC 3501 §9).

Pure and total: any input either parses or raises :class:`ParseError` (answered with a tagged BAD);
nothing else escapes.  Nesting of parenthesised lists and search keys is limited (``MAX_DEPTH``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime, timedelta, timezone
from typing import Any

from .framing import RawCommand, tag_of
from .seqset import SequenceSet

MAX_DEPTH = 32

# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_LIST_WILDCARDS = frozenset(b"%*")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUM = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}
_DATE_RE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATETIME_RE = re.compile(
    rb"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")
_SYSTEM_FLAG_MAP = {f.upper(): f for f in SYSTEM_FLAGS}


class ParseError(Exception):
    """Syntax error: the engine answers ``<tag> BAD <message>``."""

    def __init__(self, message: str, tag: str = "*") -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Section:
    """``BODY[<part>.<text>]`` (RFC 3501 §6.4.5).

    Derived forms (the echoed spec, the field names to match) are computed once per parsed command
    and kept on the instance (``cached_property`` writes ``__dict__`` directly, so frozen is fine)."""

    part: tuple[int, ...] = ()
    text: str | None = None  # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME or None
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section as echoed in the FETCH response."""
        return self._spec

    @cached_property
    def _spec(self) -> str:
        items = [".".join(str(p) for p in self.part)] if self.part else []
        if self.text:
            items.append(self.text)
        s = ".".join(items)
        if self.fields:
            # echoed upper-case, as Dovecot does (RFC 3501 §7.4.2 leaves the spelling open)
            s += " (" + " ".join(_quote_if_needed(f.upper()) for f in self.fields) + ")"
        return s

    @cached_property
    def field_keys(self) -> frozenset[bytes]:
        """The HEADER.FIELDS(.NOT) names as matched against raw field names: ``str.lower`` then UTF-8,
        compared with ``bytes.lower()`` of the name in the message (RFC 5322 §1.2.2: case-insensitive)."""
        return frozenset(n.lower().encode("utf-8", "replace") for n in self.fields)


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH data item.  ``name`` is FLAGS, UID, ENVELOPE, BODYSTRUCTURE, BODY, INTERNALDATE,
    RFC822, RFC822.HEADER, RFC822.TEXT, RFC822.SIZE, MODSEQ, BODY[] (with section), BINARY[] or
    BINARY.SIZE[]."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper case; for UID commands the name of the inner command
    uid: bool = False
    args: dict[str, Any] = field(default_factory=dict)


# An atom: ASCII above SP without atom-specials (RFC 3501 §9); anything else is echoed quoted.
_ATOM_RE = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){ %*"\\\]]+')


def _quote_if_needed(s: str) -> str:
    if _ATOM_RE.fullmatch(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------- cursor


class _Literal:
    def __init__(self, data: bytes, binary: bool) -> None:
        self.data = data
        self.binary = binary


class Cursor:
    """Walks a framed command: line bytes with literals in between."""

    def __init__(self, raw: RawCommand, tag: str = "*") -> None:
        self.lines = raw.lines
        self.literals = raw.literals
        self.binary = raw.binary
        self.li = 0
        self.pos = 0
        self.tag = tag

    def fail(self, message: str) -> ParseError:
        return ParseError(message, self.tag)

    @property
    def line(self) -> bytes:
        return self.lines[self.li]

    def at_literal(self) -> bool:
        return self.pos >= len(self.line) and self.li < len(self.literals)

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.li >= len(self.literals)

    def peek(self) -> int | None:
        """Next byte, or None at a literal or at the end."""
        if self.pos < len(self.line):
            return self.line[self.pos]
        return None

    def peek_word(self, n: int) -> bytes:
        return self.line[self.pos : self.pos + n]

    def take_literal(self, spooled_ok: bool = False) -> _Literal:
        """The next literal; only an APPEND message (``spooled_ok``) may be a spooled file."""
        if not self.at_literal():
            raise self.fail("Expected a literal")
        if not spooled_ok and not isinstance(self.literals[self.li], bytes):
            raise self.fail("Literal too big here")
        lit = _Literal(self.literals[self.li], self.binary[self.li])
        self.li += 1
        self.pos = 0
        return lit

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.fail("Expected a space")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def expect(self, b: bytes) -> None:
        if self.line[self.pos : self.pos + len(b)] != b:
            raise self.fail(f"Expected {b.decode()!r}")
        self.pos += len(b)

    def accept(self, b: bytes) -> bool:
        if self.line[self.pos : self.pos + len(b)] == b:
            self.pos += len(b)
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("Unexpected extra arguments")

    def list_items(self, opened: bool = False) -> Iterator[int]:
        """The elements of a parenthesised list (RFC 3501 §9: ``"(" x *(SP x) ")"``): expects the ``(``
        (unless ``opened``), yields each element's index for the caller to parse it, and takes the
        spaces between elements and the closing ``)``.  An empty list ``()`` yields nothing."""
        if not opened:
            self.expect(b"(")
        n = 0
        while not self.accept(b")"):
            if n:
                self.sp()
            yield n
            n += 1

    # -- tokens

    def _run(self, allowed) -> bytes:
        start = self.pos
        line = self.line
        n = len(line)
        while self.pos < n and allowed(line[self.pos]):
            self.pos += 1
        return line[start : self.pos]

    def atom(self, extra: frozenset[int] = frozenset()) -> str:
        raw = self._run(lambda c: c not in _ATOM_SPECIALS or c in extra)
        if not raw:
            raise self.fail("Expected an atom")
        return _utf8(raw, self)

    def number(self, nz: bool = False, bits: int = 32) -> int:
        raw = self._run(lambda c: 0x30 <= c <= 0x39)
        if not raw or len(raw) > 20:
            raise self.fail("Expected a number")
        v = int(raw)
        if v >= 1 << bits or (nz and v == 0):
            raise self.fail("Number out of range")
        return v

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        while True:
            if self.pos >= len(line):
                raise self.fail("Unterminated quoted string")
            c = line[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(line) or line[self.pos] not in (0x22, 0x5C):
                    raise self.fail("Bad escape in quoted string")
                c = line[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise self.fail("Bad character in quoted string")
            out.append(c)

    def string_bytes(self) -> bytes:
        if self.at_literal():
            return self.take_literal().data
        if self.peek() == 0x22:
            return self.quoted()
        raise self.fail("Expected a string")

    def string(self) -> str:
        return _utf8(self.string_bytes(), self)

    def astring_bytes(self) -> bytes:
        if self.at_literal() or self.peek() == 0x22:
            return self.string_bytes()
        raw = self._run(lambda c: c not in _ATOM_SPECIALS or c == 0x5D)  # ASTRING-CHAR includes "]"
        if not raw:
            raise self.fail("Expected a string")
        return raw

    def astring(self) -> str:
        return _utf8(self.astring_bytes(), self)

    def nstring(self) -> str | None:
        if self.peek_word(3).upper() == b"NIL" and self._after(3) in (None, 0x20, 0x29):
            self.pos += 3
            return None
        return self.string()

    def _after(self, n: int) -> int | None:
        p = self.pos + n
        return self.line[p] if p < len(self.line) else None

    def mailbox(self) -> str:
        """RFC 3501 §9 mailbox; INBOX is case-insensitive."""
        name = self.astring()
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        """RFC 3501 §9 list-mailbox = 1*list-char / string (wildcards allowed)."""
        if self.at_literal() or self.peek() == 0x22:
            return self.string()
        raw = self._run(lambda c: c not in _ATOM_SPECIALS or c in _LIST_WILDCARDS or c == 0x5D)
        if not raw:
            raise self.fail("Expected a mailbox pattern")
        return _utf8(raw, self)

    def flag(self) -> str:
        """RFC 3501 §9 flag: a system flag, ``\\*`` or a keyword atom."""
        if self.accept(b"\\"):
            if self.accept(b"*"):
                return "\\*"
            name = "\\" + self.atom()
            return _SYSTEM_FLAG_MAP.get(name.upper(), name)
        return self.atom()

    def flag_list(self) -> list[str]:
        return [self.flag() for _ in self.list_items()]

    def seqset(self) -> SequenceSet:
        raw = self._run(lambda c: 0x30 <= c <= 0x39 or c in b":,*$")
        try:
            return SequenceSet.parse(raw)
        except ValueError as exc:
            raise self.fail(str(exc)) from None

    def date(self) -> date:
        quoted = self.accept(b'"')
        m = _DATE_RE.match(self.line, self.pos)
        if not m:
            raise self.fail("Bad date")
        self.pos = m.end()
        if quoted:
            self.expect(b'"')
        return _make_date(m.group(1), m.group(2), m.group(3), self)

    def date_time(self) -> datetime:
        m = _DATETIME_RE.match(self.line, self.pos + 1) if self.peek() == 0x22 else None
        if not m or self.line[m.end() : m.end() + 1] != b'"':
            raise self.fail("Bad date-time")
        self.pos = m.end() + 1
        d = _make_date(m.group(1).strip(), m.group(2), m.group(3), self)
        hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
        oh, om = int(m.group(8)), int(m.group(9))
        if hh > 23 or mm > 59 or ss > 60 or om > 59:
            raise self.fail("Bad date-time")
        off = timedelta(hours=oh, minutes=om) * (-1 if m.group(7) == b"-" else 1)
        return datetime(d.year, d.month, d.day, hh, mm, min(ss, 59), tzinfo=timezone(off))


def _make_date(day: bytes, mon: bytes, year: bytes, cur: Cursor) -> date:
    month = _MONTH_NUM.get(mon.decode("ascii").upper())
    try:
        if month is None:
            raise ValueError
        return date(int(year), month, int(day))
    except ValueError:
        raise cur.fail("Bad date") from None


def _utf8(raw: bytes, cur: Cursor) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise cur.fail("Invalid UTF-8") from None


# ---------------------------------------------------------------------------------------------- commands


def parse_command(raw: RawCommand) -> Command:
    """Parse one framed command (raises ParseError with the tag when it is known)."""
    tag = tag_of(raw.lines[0])
    cur = Cursor(raw, tag)
    if tag == "*":
        raise ParseError("Missing or invalid tag")
    cur.pos = len(tag)
    cur.sp()
    name = cur.atom().upper()
    uid = False
    if name == "UID":
        cur.sp()
        uid = True
        name = cur.atom().upper()
        if name not in _UID_COMMANDS:
            raise cur.fail("Unknown UID command")
    handler = _uid_expunge if uid and name == "EXPUNGE" else _COMMANDS.get(name)
    if handler is None:
        raise cur.fail("Unknown command")
    args: dict[str, Any] = {}
    handler(cur, args)
    cur.end()
    return Command(tag, name, uid, args)


def _no_args(cur: Cursor, args: dict) -> None:
    pass


def _login(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["user"] = cur.astring_bytes()
    cur.sp()
    args["password"] = cur.astring_bytes()


def _authenticate(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["mechanism"] = cur.atom().upper()
    args["initial"] = None
    if cur.maybe_sp():  # RFC 4959 SASL-IR: base64 or "="
        ir = cur._run(lambda c: c not in _ATOM_SPECIALS)
        if not ir:
            raise cur.fail("Bad initial response")
        args["initial"] = ir


def _select(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["mailbox"] = cur.mailbox()
    args["condstore"] = False
    if cur.maybe_sp():  # RFC 4466 select-params; RFC 7162 §3.1.8 CONDSTORE
        for _ in cur.list_items():
            p = cur.atom().upper()
            if p != "CONDSTORE":
                raise cur.fail("Unknown SELECT parameter")
            args["condstore"] = True


def _mailbox_only(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["mailbox"] = cur.mailbox()


def _rename(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["old"] = cur.mailbox()
    cur.sp()
    args["new"] = cur.mailbox()


def _list(cur: Cursor, args: dict) -> None:
    """RFC 3501 §6.3.8 and RFC 5258 LIST-EXTENDED (selection and return options)."""
    cur.sp()
    selection: list[str] = []
    extended = False
    if cur.peek() == 0x28:
        extended = True
        for _ in cur.list_items():
            selection.append(cur.atom().upper())
        cur.sp()
    args["reference"] = cur.astring() if not cur.at_literal() and cur.peek() != 0x22 else cur.string()
    cur.sp()
    patterns: list[str] = []
    if cur.peek() == 0x28:
        extended = True
        for _ in cur.list_items():
            patterns.append(cur.list_mailbox())
        if not patterns:
            raise cur.fail("Empty pattern list")
    else:
        patterns.append(cur.list_mailbox())
    returns: list[str] = []
    status: list[str] = []
    if cur.maybe_sp():
        extended = True
        if cur.atom().upper() != "RETURN":
            raise cur.fail("Expected RETURN")
        cur.sp()
        for _ in cur.list_items():
            opt = cur.atom().upper()
            returns.append(opt)
            if opt == "STATUS":  # RFC 5819
                cur.sp()
                status = _status_items(cur)
    args.update(selection=selection, patterns=patterns, returns=returns, status=status, extended=extended)


def _lsub(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["reference"] = cur.astring()
    cur.sp()
    args["patterns"] = [cur.list_mailbox()]


STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")


def _status_items(cur: Cursor) -> list[str]:
    items: list[str] = []
    for _ in cur.list_items():
        item = cur.atom().upper()
        if item not in STATUS_ITEMS:
            raise cur.fail("Unknown STATUS item")
        items.append(item)
    if not items:
        raise cur.fail("Empty STATUS item list")
    return items


def _status(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["mailbox"] = cur.mailbox()
    cur.sp()
    args["items"] = _status_items(cur)


def _append(cur: Cursor, args: dict) -> None:
    """RFC 3501 §6.3.11; RFC 6855 §4 ``UTF8 (literal8)``; RFC 3516 literal8."""
    cur.sp()
    args["mailbox"] = cur.mailbox()
    cur.sp()
    flags: list[str] = []
    if cur.peek() == 0x28:
        flags = cur.flag_list()
        cur.sp()
    when = None
    if cur.peek() == 0x22:
        when = cur.date_time()
        cur.sp()
    if cur.peek_word(4).upper() == b"UTF8":
        cur.pos += 4
        cur.sp()
        cur.expect(b"(")
        lit = cur.take_literal(spooled_ok=True)
        cur.expect(b")")
    else:
        lit = cur.take_literal(spooled_ok=True)
    args.update(flags=flags, date=when, message=lit.data, binary=lit.binary)


def _seqset_then(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["set"] = cur.seqset()


def _copy(cur: Cursor, args: dict) -> None:
    _seqset_then(cur, args)
    cur.sp()
    args["mailbox"] = cur.mailbox()


def _expunge(cur: Cursor, args: dict) -> None:
    args["set"] = None


def _uid_expunge(cur: Cursor, args: dict) -> None:  # RFC 4315 §2.1
    _seqset_then(cur, args)


def _enable(cur: Cursor, args: dict) -> None:
    caps: list[str] = []
    while cur.maybe_sp():
        caps.append(cur.atom().upper())
    if not caps:
        raise cur.fail("ENABLE needs capabilities")
    args["capabilities"] = caps


def _id(cur: Cursor, args: dict) -> None:
    """RFC 2971: ID ("key" "value" ...) / NIL."""
    cur.sp()
    if cur.peek_word(3).upper() == b"NIL":
        cur.pos += 3
        args["params"] = None
        return
    params: dict[str, str | None] = {}
    for _ in cur.list_items():
        key = cur.string()
        cur.sp()
        params[key] = cur.nstring()
        if len(params) > 30:  # RFC 2971 §3.3
            raise cur.fail("Too many ID fields")
    args["params"] = params


def _compress(cur: Cursor, args: dict) -> None:  # RFC 4978 §3
    cur.sp()
    args["mechanism"] = cur.atom().upper()


def _quota(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["root"] = cur.astring()


def _setquota(cur: Cursor, args: dict) -> None:
    cur.sp()
    args["root"] = cur.astring()
    cur.sp()
    limits: list[tuple[str, int]] = []
    for _ in cur.list_items():
        res = cur.atom().upper()
        cur.sp()
        limits.append((res, cur.number(bits=63)))
    args["limits"] = limits


def _store(cur: Cursor, args: dict) -> None:
    """RFC 3501 §6.4.6; RFC 7162 §3.1.3 (UNCHANGEDSINCE)."""
    _seqset_then(cur, args)
    cur.sp()
    args["unchangedsince"] = None
    if cur.accept(b"("):
        for _ in cur.list_items(opened=True):
            mod = cur.atom().upper()
            if mod != "UNCHANGEDSINCE":
                raise cur.fail("Unknown STORE modifier")
            cur.sp()
            args["unchangedsince"] = cur.number(bits=63)
        cur.sp()
    mode = "="
    if cur.accept(b"+"):
        mode = "+"
    elif cur.accept(b"-"):
        mode = "-"
    item = cur.atom().upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise cur.fail("Expected FLAGS or FLAGS.SILENT")
    cur.sp()
    if cur.peek() == 0x28:
        flags = cur.flag_list()
    else:
        flags = [cur.flag()]
        while cur.maybe_sp():
            flags.append(cur.flag())
    if "\\*" in flags or "\\Recent" in flags:
        raise cur.fail("Invalid flag in STORE")
    args.update(mode=mode, silent=item.endswith(".SILENT"), flags=flags)


# -- FETCH (RFC 3501 §6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ/CHANGEDSINCE)

_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH = frozenset(
    ("FLAGS", "UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "INTERNALDATE", "RFC822", "RFC822.HEADER",
     "RFC822.TEXT", "RFC822.SIZE", "MODSEQ")
)


def _section(cur: Cursor, binary: bool) -> Section:
    cur.expect(b"[")
    part: list[int] = []
    text = None
    fields: tuple[str, ...] = ()
    while cur.peek() is not None and 0x30 <= cur.peek() <= 0x39:
        part.append(cur.number(nz=True))
        if not cur.accept(b"."):
            break
    if cur.peek() != 0x5D:
        if binary:
            raise cur.fail("BINARY takes only part numbers")
        word = cur.atom().upper()
        if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            cur.sp()
            names: list[str] = []
            for _ in cur.list_items():
                names.append(cur.astring())
            if not names:
                raise cur.fail("Empty header field list")
            fields = tuple(names)
        elif word == "MIME":
            if not part:
                raise cur.fail("MIME needs a part number")
        elif word not in ("HEADER", "TEXT"):
            raise cur.fail("Bad section")
        text = word
    elif part and cur.line[cur.pos - 1 : cur.pos] == b".":
        raise cur.fail("Bad section")
    cur.expect(b"]")
    return Section(tuple(part), text, fields)


def _fetch_att(cur: Cursor) -> FetchAtt:
    word = cur._run(lambda c: c not in _ATOM_SPECIALS and c != 0x5B and c != 0x3C).decode("ascii", "replace")
    word = word.upper()
    if cur.peek() == 0x5B:
        peek = word.endswith(".PEEK")
        base = word[:-5] if peek else word
        if base not in ("BODY", "BINARY", "BINARY.SIZE") or (peek and base == "BINARY.SIZE"):
            raise cur.fail("Bad fetch item")
        section = _section(cur, base != "BODY")
        partial = None
        if base != "BINARY.SIZE" and cur.accept(b"<"):
            start = cur.number()
            cur.expect(b".")
            length = cur.number(nz=True)
            cur.expect(b">")
            partial = (start, length)
        return FetchAtt(base + "[]", section, peek, partial)
    if word not in _SIMPLE_FETCH:
        raise cur.fail("Bad fetch item")
    return FetchAtt(word)


def _fetch(cur: Cursor, args: dict) -> None:
    _seqset_then(cur, args)
    cur.sp()
    atts: list[FetchAtt] = []
    if cur.accept(b"("):
        for _ in cur.list_items(opened=True):
            atts.append(_fetch_att(cur))
        if not atts:
            raise cur.fail("Empty fetch list")
    else:
        save = cur.pos
        word = cur.atom(frozenset(b"]")).upper()
        if word in _FETCH_MACROS:
            atts = [FetchAtt(n) for n in _FETCH_MACROS[word]]
        else:
            cur.pos = save
            atts.append(_fetch_att(cur))
    args["atts"] = atts
    args["changedsince"] = None
    if cur.maybe_sp():  # RFC 4466 fetch-modifiers; RFC 7162 §3.1.4 CHANGEDSINCE
        for _ in cur.list_items():
            mod = cur.atom().upper()
            if mod != "CHANGEDSINCE":
                raise cur.fail("Unknown FETCH modifier")
            cur.sp()
            args["changedsince"] = cur.number(bits=63)


# -- SEARCH (RFC 3501 §6.4.4, RFC 4731 ESEARCH RETURN, RFC 7162 §3.1.5 MODSEQ)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "RECENT": ("\\Recent", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False), "OLD": ("\\Recent", False),
}
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_DATE_KEYS = {
    "BEFORE": ("internal", "<"), "ON": ("internal", "="), "SINCE": ("internal", ">="),
    "SENTBEFORE": ("sent", "<"), "SENTON": ("sent", "="), "SENTSINCE": ("sent", ">="),
}
ESEARCH_RETURNS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")  # RFC 4731, RFC 5182 SAVE


def _search_key(cur: Cursor, depth: int) -> tuple:
    if depth > MAX_DEPTH:
        raise cur.fail("Search nested too deeply")
    c = cur.peek()
    if c == 0x28:
        cur.pos += 1
        keys = _search_keys(cur, depth + 1, closing=True)
        return ("AND", tuple(keys))
    if c is not None and (0x30 <= c <= 0x39 or c in (0x2A, 0x24)):
        return ("SEQ", cur.seqset())
    word = cur.atom().upper()
    if word == "ALL":
        return ("ALL",)
    if word in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[word]
        return ("FLAG", flag, present)
    if word == "NEW":
        return ("AND", (("FLAG", "\\Recent", True), ("FLAG", "\\Seen", False)))
    if word in ("KEYWORD", "UNKEYWORD"):
        cur.sp()
        return ("FLAG", cur.flag(), word == "KEYWORD")
    # Search strings stay bytes: their charset is the command's CHARSET (decoded by the engine).
    if word in _HEADER_KEYS:
        cur.sp()
        return ("HEADER", word, cur.astring_bytes())
    if word == "HEADER":
        cur.sp()
        name = cur.astring()
        cur.sp()
        return ("HEADER", name.upper(), cur.astring_bytes())
    if word in ("BODY", "TEXT"):
        cur.sp()
        return (word, cur.astring_bytes())
    if word in _DATE_KEYS:
        cur.sp()
        which, op = _DATE_KEYS[word]
        return ("DATE", which, op, cur.date())
    if word in ("LARGER", "SMALLER"):
        cur.sp()
        return ("SIZE", ">" if word == "LARGER" else "<", cur.number(bits=64))
    if word == "UID":
        cur.sp()
        return ("UID", cur.seqset())
    if word == "NOT":
        cur.sp()
        return ("NOT", _search_key(cur, depth + 1))
    if word == "OR":
        cur.sp()
        a = _search_key(cur, depth + 1)
        cur.sp()
        b = _search_key(cur, depth + 1)
        return ("OR", a, b)
    if word == "MODSEQ":
        cur.sp()
        if cur.peek() == 0x22:  # entry-name entry-type-req (RFC 7162 §3.1.5)
            cur.string()
            cur.sp()
            kind = cur.atom().lower()
            if kind not in ("priv", "shared", "all"):
                raise cur.fail("Bad MODSEQ entry type")
            cur.sp()
        return ("MODSEQ", cur.number(bits=63))
    raise cur.fail("Unknown search key")


def _search_keys(cur: Cursor, depth: int, closing: bool) -> list[tuple]:
    keys = [_search_key(cur, depth)]
    while True:
        if closing and cur.accept(b")"):
            return keys
        if not closing and cur.at_end():
            return keys
        cur.sp()
        keys.append(_search_key(cur, depth))


def _search(cur: Cursor, args: dict) -> None:
    cur.sp()
    returns: list[str] | None = None
    if cur.peek_word(7).upper() == b"RETURN ":  # RFC 4731 §3
        cur.pos += 7
        returns = []
        for _ in cur.list_items():
            opt = cur.atom().upper()
            if opt not in ESEARCH_RETURNS:
                raise cur.fail("Unknown RETURN option")
            returns.append(opt)
        cur.sp()
    charset = None
    if cur.peek_word(8).upper() == b"CHARSET ":
        cur.pos += 8
        charset = cur.astring().upper()
        cur.sp()
    args["returns"] = returns
    args["charset"] = charset
    args["keys"] = ("AND", tuple(_search_keys(cur, 1, closing=False)))


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _mailbox_only, "DELETE": _mailbox_only,
    "RENAME": _rename, "SUBSCRIBE": _mailbox_only, "UNSUBSCRIBE": _mailbox_only, "LIST": _list,
    "LSUB": _lsub, "STATUS": _status, "APPEND": _append, "CHECK": _no_args, "CLOSE": _no_args,
    "EXPUNGE": _expunge, "SEARCH": _search, "FETCH": _fetch, "STORE": _store, "COPY": _copy,
    "MOVE": _copy, "IDLE": _no_args, "NAMESPACE": _no_args, "ID": _id, "ENABLE": _enable,
    "UNSELECT": _no_args, "GETQUOTA": _quota, "GETQUOTAROOT": _quota, "SETQUOTA": _setquota,
    "COMPRESS": _compress,
}
_UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"}
