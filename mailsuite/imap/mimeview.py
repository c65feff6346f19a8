"""The one bridge from IMAP FETCH and SEARCH to :mod:`mailsuite.mime`.

ENVELOPE and header searches parse only the (cached) header block; ``BODY[HEADER.FIELDS (...)]`` of the
message (a mail client's header sync) is a plain scan of that block, no parse; BODYSTRUCTURE, numbered
parts, BINARY and BODY/TEXT searches parse the whole message once per message and command.
"""

from __future__ import annotations

import re
from datetime import date

from .. import mime
from ..mime import BinaryError, UnknownCharset
from .message import Message
from .parser import Section

__all__ = ["BinaryError", "UnknownCharset", "envelope", "bodystructure", "section", "header_fields", "binary",
           "binary_size", "binary_literal8", "decode_search_key", "SearchView"]


def _root(msg: Message) -> mime.MessagePart:
    root = getattr(msg, "_mime_root", None)
    if root is None:
        root = mime.parse_message(msg.raw())
        msg._mime_root = root  # type: ignore[attr-defined]
    return root


def _header_root(msg: Message) -> mime.MessagePart:
    root = getattr(msg, "_mime_root", None) or getattr(msg, "_mime_header_root", None)
    if root is None:
        root = mime.parse_message(msg.header())
        msg._mime_header_root = root  # type: ignore[attr-defined]
    return root


def envelope(msg: Message) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE (from the header block only)."""
    return mime.envelope(_header_root(msg))


def bodystructure(msg: Message, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY."""
    return mime.bodystructure(_root(msg), extensible=extended)


def section(msg: Message, sec: Section) -> bytes:
    """BODY[<part>...] bytes; b"" when the part does not exist (RFC 3501 §6.4.5).

    Sections of the top-level header need only the header block; HEADER.FIELDS(.NOT) of it is a
    plain scan of that block (:func:`header_fields`) unless the message was parsed already."""
    if not sec.part and sec.text and sec.text.startswith("HEADER"):
        if sec.text in _FIELDS_TEXTS and getattr(msg, "_mime_root", None) is None \
                and getattr(msg, "_mime_header_root", None) is None:
            return header_fields(msg.header(), sec.field_keys, sec.text == "HEADER.FIELDS.NOT")
        return mime.section_bytes(_header_root(msg), mime.SectionSpec(sec.part, sec.text, sec.fields))
    return mime.section_bytes(_root(msg), mime.SectionSpec(sec.part, sec.text or "", sec.fields))


_FIELDS_TEXTS = ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
# A field starts at each line start not beginning with SP or HTAB (RFC 5322 §2.2.3 folding).
_FIELD_START = re.compile(rb"(?<=\n)(?![ \t])")
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _fields_end(block: bytes) -> int:
    """Where the header's fields end: at the first empty line (LF, CRLF, or a final CR),
    else at the end of ``block`` (RFC 5322 §2.1; the same lines mailsuite.mime's parser ends at)."""
    if block[:1] == b"\n" or block[:2] == b"\r\n" or block == b"\r":
        return 0
    m = _BLANK_LINE.search(block)
    if m is not None:
        return m.start() + 1
    return len(block) - 1 if block.endswith(b"\n\r") else len(block)


# Field names a regular expression can select exactly: no SP/CTL/colon, so "name before the first colon
# less trailing SP/HTAB" and "the whole line less its CR" (no colon) both reduce to "starts with it".
_PLAIN_NAME = re.compile(rb"[!-9;-~\x80-\xff]+")
_SELECTORS: dict[frozenset[bytes], re.Pattern[bytes] | None | bool] = {}


def _caseless(name: bytes) -> bytes:
    """``name`` as a pattern matching it in any ASCII case (explicit classes: faster than re.I)."""
    return b"".join(b"[%c%c]" % (c, c - 32) if 0x61 <= c <= 0x7A else re.escape(bytes((c,))) for c in name)


def _selector(keys: frozenset[bytes]) -> re.Pattern[bytes] | None:
    """A pattern finding, behind its LF, each whole field (first line and continuations, without
    the last line break) named by ``keys``, ASCII case-insensitively as ``bytes.lower()`` compares
    (the keys are lower case); None when a name needs the general scan."""
    pattern = _SELECTORS.get(keys, False)
    if pattern is not False:
        return pattern
    pattern = None
    if keys and all(_PLAIN_NAME.fullmatch(k) for k in keys):
        names = b"|".join(_caseless(k) for k in sorted(keys, key=len, reverse=True))
        pattern = re.compile(rb"\n((?:" + names + rb")(?:[ \t]*:[^\n]*|\r?(?=\n))(?:\n[ \t][^\n]*)*)")
    if len(_SELECTORS) >= 256:
        _SELECTORS.clear()
    _SELECTORS[keys] = pattern
    return pattern


def header_fields(block: bytes, keys: frozenset[bytes], negate: bool) -> bytes:
    """RFC 3501 §6.4.5 HEADER.FIELDS (``negate``: .NOT) of a top-level header block, without a MIME
    parse: the raw field lines (continuations included, message order kept) whose name, lowered, is
    (not) in ``keys``, then the empty line.

    Byte for byte what mailsuite.mime's ``section_bytes`` gives for the parsed block: a field's name is
    the text before the first colon of its first line less trailing SP/HTAB, or that whole line (less
    its CR) when it has no colon; a first line starting with SP/HTAB is a field of its own; a last line
    without line break gets CRLF."""
    end = _fields_end(block)
    selector = _selector(keys)
    if selector is not None and block[end - 1 : end] == b"\n":  # every field line ends with its LF
        fields = b"\n" + block[:end]  # "\n" before each field, so a match is "\n" + one whole field
        if negate:  # the other fields are what the matches leave
            return selector.sub(b"", fields)[1:] + b"\r\n"
        found = selector.findall(fields)
        return b"\n".join(found) + b"\n\r\n" if found else b"\r\n"
    out = []
    for raw in _FIELD_START.split(block[:end]) if end else ():
        if not raw:
            continue
        colon = raw.find(b":")
        nl = raw.find(b"\n")
        if colon >= 0 and (nl < 0 or colon < nl):
            name = raw[:colon].rstrip(b" \t")
        else:
            name = raw[:nl] if nl >= 0 else raw
            if name.endswith(b"\r"):
                name = name[:-1]
        if (name.lower() in keys) != negate:
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _part(msg: Message, part: tuple[int, ...]) -> mime.MessagePart | None:
    root = _root(msg)
    return root if not part else mime.find_part(root, part)


def binary(msg: Message, part: tuple[int, ...]) -> bytes:
    """RFC 3516 BINARY[part]; raises BinaryError (NO [UNKNOWN-CTE] / NO [PARSE])."""
    p = _part(msg, part)
    return b"" if p is None else mime.binary(p)


def binary_size(msg: Message, part: tuple[int, ...]) -> int:
    p = _part(msg, part)
    return 0 if p is None else mime.binary_size(p)


def binary_literal8(msg: Message, part: tuple[int, ...]) -> bool:
    p = _part(msg, part)
    return p is not None and mime.binary_literal8(p)


def decode_search_key(raw: bytes, charset: str | None) -> str:
    """SEARCH string argument -> text; raises UnknownCharset (NO [BADCHARSET])."""
    return mime.decode_search_key(raw, charset)


class SearchView:
    """Decoded texts of one message for SEARCH (RFC 3501 §6.4.4)."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg

    def header_values(self, name: str) -> list[str]:
        return mime.header_values(_header_root(self.msg), name)

    def has_header(self, name: str) -> bool:
        return mime.has_header(_header_root(self.msg), name)

    def address_text(self, name: str) -> str:
        return mime.address_search_text(_header_root(self.msg), name)

    def body_text(self) -> str:
        return mime.body_text(_root(self.msg))

    def text(self) -> str:
        return mime.text_search_text(_root(self.msg))

    def sent_date(self) -> date:
        d = mime.sent_date(_header_root(self.msg))
        return mime.EPOCH_DATE if d is None else d  # no or bad Date: as Dovecot does


def contains(haystack: str, needle: str) -> bool:
    return mime.contains(haystack, needle)
