"""Decoded text for IMAP SEARCH (RFC 3501 §6.4.4) with CHARSET UTF-8.

SEARCH compares case-insensitively on decoded text: RFC 2047 encoded-words in headers
(adjacent ones joined without the white space between them, §6.2), raw 8-bit header bytes
as UTF-8, and base64 / quoted-printable bodies of text parts converted from their charset.
Matching uses the RFC 5051 i;unicode-casemap idea (case folding + compatibility
decomposition) through :func:`fold`; :func:`contains` is the substring test.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as _dt
import re
import unicodedata
from email.utils import parsedate_tz

from . import rfc822
from .parser import MessagePart
from .transfer import decode_cte_lenient

__all__ = [
    "UnknownCharset",
    "fold",
    "contains",
    "decode_search_key",
    "decode_header_value",
    "header_values",
    "has_header",
    "address_search_text",
    "body_text",
    "text_search_text",
    "sent_date",
    "EPOCH_DATE",
]

# Dovecot's choice (RFC silent): a message without a usable Date: is "sent" on 1-Jan-1970.
EPOCH_DATE = _dt.date(1970, 1, 1)


class UnknownCharset(Exception):
    """SEARCH CHARSET names a charset we cannot convert: ``NO [BADCHARSET (UTF-8)]``
    (RFC 3501 §6.4.4)."""


def _codec(charset: str | bytes | None) -> str | None:
    if charset is None:
        return None
    if isinstance(charset, bytes):
        charset = charset.decode("ascii", "replace")
    name = charset.strip().strip('"').lower()
    if not name:
        return None
    if name in ("us-ascii", "ascii", "ansi_x3.4-1968", "ansi-x3.4-1968", "iso646-us"):
        return "utf-8"  # 8-bit in "us-ascii" text is nearly always UTF-8 in practice
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _to_str(data: bytes, charset: str | bytes | None) -> str:
    codec = _codec(charset)
    if codec is None or codec == "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace") if codec == "utf-8" else data.decode("cp1252", "replace")
    try:
        return data.decode(codec, "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def fold(text: str) -> str:
    """Normalise for case-insensitive comparison (RFC 5051: case fold, then NFKD)."""
    return unicodedata.normalize("NFKD", text.casefold())


def contains(haystack: str, needle: str) -> bool:
    """SEARCH substring match (RFC 3501 §6.4.4): case-insensitive, on decoded text."""
    return fold(needle) in fold(haystack)


def decode_search_key(raw: bytes, charset: str | None) -> str:
    """Turn a SEARCH string argument into text.  No CHARSET: US-ASCII, but 8-bit input is
    taken as UTF-8 (lenient, like Dovecot).  Raises :class:`UnknownCharset`."""
    if charset is None:
        return raw.decode("utf-8", "replace")
    codec = _codec(charset)
    if codec is None:
        raise UnknownCharset(charset)
    return raw.decode(codec, "replace")


_EW = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_B64_CHARS = re.compile(rb"[^A-Za-z0-9+/]")


def _ew_bytes(enc: bytes, text: bytes) -> bytes:
    if enc in b"Bb":
        clean = _B64_CHARS.sub(b"", text)
        clean += b"=" * (-len(clean) % 4)
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:
            return text
    text = text.replace(b"_", b" ")
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text)


def decode_header_value(value: bytes) -> str:
    """Decode RFC 2047 encoded-words (and raw 8-bit as UTF-8) in an unfolded header value.

    White space between adjacent encoded-words is dropped (RFC 2047 §6.2); adjacent words
    in one charset are decoded together so split multi-byte characters survive.
    """
    out: list[str] = []
    pos = 0
    pending: list[tuple[str, bytes]] = []  # (charset, bytes) of adjacent encoded-words

    def flush() -> None:
        if not pending:
            return
        cur_cs, buf = pending[0][0], bytearray()
        for cs, b in pending:
            if cs != cur_cs:
                out.append(_to_str(bytes(buf), cur_cs))
                cur_cs, buf = cs, bytearray()
            buf += b
        out.append(_to_str(bytes(buf), cur_cs))
        pending.clear()

    for m in _EW.finditer(value):
        gap = value[pos : m.start()]
        if gap.strip(b" \t") or not pending:
            flush()
            if gap:
                out.append(_to_str(gap, None))
        charset = m.group(1).split(b"*", 1)[0].decode("ascii", "replace")  # RFC 2231 §5 language
        pending.append((charset.lower(), _ew_bytes(m.group(2), m.group(3))))
        pos = m.end()
    flush()
    if pos < len(value):
        out.append(_to_str(value[pos:], None))
    return "".join(out)


def header_values(part: MessagePart, name: str | bytes) -> list[str]:
    """Decoded values of every header field ``name`` of ``part`` (HEADER / SUBJECT search)."""
    return [decode_header_value(f.raw_value(part.data)) for f in part.header_fields(name)]


def has_header(part: MessagePart, name: str | bytes) -> bool:
    """Whether the field exists: ``HEADER <name> ""`` matches exactly those messages."""
    return bool(part.header_fields(name))


def address_search_text(part: MessagePart, name: str | bytes) -> str:
    """FROM/TO/CC/BCC search text: each address as ``Display Name <mailbox@host>`` (names
    decoded; a group name stands alone), joined with ", "."""
    items: list[str] = []
    for f in part.header_fields(name):
        for a in rfc822.parse_addresses(f.raw_value(part.data)):
            if a.host is None:
                if a.mailbox is not None:
                    items.append(_to_str(a.mailbox, None) + ":")
                continue
            mbox = _to_str(a.mailbox or b"", None)
            host = _to_str(a.host, None)
            addr = f"{mbox}@{host}"
            if a.name:
                items.append(f"{decode_header_value(a.name)} <{addr}>")
            else:
                items.append(addr)
    return ", ".join(items)


def _body_texts(part: MessagePart, out: list[str]) -> None:
    if part.synthetic:
        return
    if part.children:
        for c in part.children:
            _body_texts(c, out)
        return
    if part.message is not None:
        _body_texts(part.message, out)
        return
    # Dovecot choice (RFC silent): only text parts are searched, decoded and converted.
    if part.mtype.lower() != b"text":
        return
    raw = decode_cte_lenient(part.content_transfer_encoding, part.body)
    out.append(_to_str(raw, part.param(b"charset")))


def body_text(part: MessagePart) -> str:
    """BODY search text: the decoded, charset-converted text of every text/* leaf (nested
    messages included, headers excluded)."""
    out: list[str] = []
    _body_texts(part, out)
    return "\n".join(out)


def _header_texts(part: MessagePart) -> str:
    return "\n".join(
        _to_str(f.name, None) + ": " + decode_header_value(f.raw_value(part.data)) for f in part.fields
    )


def text_search_text(part: MessagePart) -> str:
    """TEXT search text (RFC 3501 §6.4.4: header and body): decoded header fields, then
    :func:`body_text`."""
    return _header_texts(part) + "\n" + body_text(part)


def sent_date(part: MessagePart) -> _dt.date | None:
    """The date of the Date: field as written, time and zone disregarded (RFC 3501 §6.4.4
    SENT*); None if missing or unparsable (Dovecot then uses :data:`EPOCH_DATE`)."""
    value = part.header_value(b"date", last=True)
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    try:
        t = parsedate_tz(text)
    except (TypeError, ValueError, IndexError):
        return None
    if t is None:
        return None
    year, month, day, hour, minute, sec = t[:6]
    try:
        if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= sec <= 60):
            return None
        return _dt.date(year, month, day)
    except (TypeError, ValueError):
        return None
