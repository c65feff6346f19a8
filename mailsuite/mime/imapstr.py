"""IMAP string serialisation for ENVELOPE and BODYSTRUCTURE values (RFC 3501 §4.3, §9).

Values are built as nested lists of ``None`` (NIL), ``int`` (number), ``bytes`` (nstring,
Dovecot's "nstring" rule) and :class:`Human` (display text, Dovecot's "string for humans"
rule), then written by :func:`serialise`.  The choice between quoted string and literal
follows Dovecot 2.3 so responses match byte for byte:

- plain strings: quoted, with ``"``/``\\`` escaped, unless they contain CR, LF, NUL, an
  8-bit byte or more than four quoted-specials; then a ``{n}`` literal (CR/LF removed
  first, as Dovecot's ``nstring_nolf`` does);
- :class:`Human` (Subject, address display names): written verbatim as a quoted string
  when it has no TAB/CR/LF, no double or edge white space, no ``"``/``\\`` and no 8-bit
  byte; otherwise as a literal with white-space runs collapsed to one space and trimmed.
"""

from __future__ import annotations

import re
from typing import Union

__all__ = ["Human", "Nested", "serialise", "quote_nstring", "human_text", "part_list", "to_text"]


class Human(bytes):
    """Display text (Subject, address display name): serialised with the "for humans" rule."""

    __slots__ = ()


Nested = Union[None, int, bytes, list["Nested"]]

def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


# Printable ASCII except quoted-specials and TAB: a Human value needing no change.
_HUMAN_PLAIN = re.compile(rb'[\x01-\x08\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*')
_PLAIN = re.compile(rb'[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*')


def quote_nstring(value: bytes | None) -> bytes:
    """Write ``value`` as NIL, a quoted string or a literal (RFC 3501 §4.3, §4.5)."""
    if value is None:
        return b"NIL"
    if _PLAIN.fullmatch(value):
        return b'"' + value + b'"'
    if b"\r" in value or b"\n" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    specials = value.count(b'"') + value.count(b"\\")
    if specials > 4 or b"\x00" in value or not value.isascii():
        return _literal(value)
    if specials:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def _humanise(value: bytes) -> bytes | None:
    """Dovecot's "string for humans": None if ``value`` can be sent verbatim as a quoted
    string, else the text to send as a literal: CR/LF removed, TAB and space runs
    collapsed to one space, leading/trailing blanks dropped, NUL shown as 0x80."""
    if _HUMAN_PLAIN.fullmatch(value) and value[:1] != b" " and value[-1:] != b" " and b"  " not in value:
        return None
    out = bytearray()
    last_lwsp = True
    for c in value:
        if c in (0x20, 0x09):
            if not last_lwsp:
                out.append(0x20)
            last_lwsp = True
        elif c in (0x0D, 0x0A):
            continue
        else:
            out.append(0x80 if c == 0 else c)
            last_lwsp = False
    if last_lwsp and out:
        del out[-1]
    return bytes(out)


def human_text(value: bytes) -> bytes:
    """The text a :class:`Human` value stands for (see :func:`_humanise`)."""
    h = _humanise(value)
    return value if h is None else h


def _quote_human(value: bytes) -> bytes:
    text = _humanise(value)
    if text is None:
        return b'"' + value + b'"'
    if not text:
        return b'""'
    return _literal(text)


def serialise(value: Nested) -> bytes:
    """Serialise a nested value as IMAP response data (parenthesised lists, no outer space)."""
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


def _write(value: Nested, out: list[bytes]) -> None:
    t = type(value)
    if t is bytes:
        out.append(quote_nstring(value))
    elif value is None:
        out.append(b"NIL")
    elif t is Human:
        out.append(_quote_human(bytes(value)))
    elif t is int:
        out.append(b"%d" % value)
    else:
        out.append(b"(")
        _write_items(value, out)
        out.append(b")")


def _write_items(items: list[Nested], out: list[bytes]) -> None:
    # Dovecot writes consecutive body parts of a multipart without a separating space
    # ("(...)(...) "mixed""); RFC 3501 §9 body-type-mpart = 1*body SP media-subtype.
    prev_body = False
    first = True
    for item in items:
        is_body = type(item) is _PartList
        if not first and not (is_body and prev_body):
            out.append(b" ")
        first = False
        _write(item, out)
        prev_body = is_body


class _PartList(list):
    """A body part of a multipart, or an address of an address list: Dovecot writes such
    siblings without a separating space ("(...)(...)")."""


def part_list(items: list[Nested]) -> list[Nested]:
    """Mark ``items`` as one body part of a multipart (see :func:`_write_items`)."""
    return _PartList(items)


def to_text(value: Nested) -> object:
    """The nested form with strings decoded as UTF-8 (the shape of the corpus ``parsed``)."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, Human):
        return human_text(bytes(value)).decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.replace(b"\r", b"").replace(b"\n", b"").decode("utf-8", "replace")
    return [to_text(v) for v in value]
