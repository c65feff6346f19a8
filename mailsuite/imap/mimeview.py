"""The one bridge from IMAP FETCH and SEARCH to :mod:`mailsuite.mime`.

ENVELOPE and header searches parse only the (cached) header block; BODYSTRUCTURE, numbered parts,
BINARY and BODY/TEXT searches parse the whole message once per message and command.
"""

from __future__ import annotations

from datetime import date

from .. import mime
from ..mime import BinaryError, UnknownCharset
from .message import Message
from .parser import Section

__all__ = ["BinaryError", "UnknownCharset", "envelope", "bodystructure", "section", "binary", "binary_size",
           "binary_literal8", "decode_search_key", "SearchView"]


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

    Sections of the top-level header need only the header block."""
    spec = mime.SectionSpec(sec.part, sec.text or "", sec.fields)
    if not sec.part and sec.text and sec.text.startswith("HEADER"):
        return mime.section_bytes(_header_root(msg), spec)
    return mime.section_bytes(_root(msg), spec)


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
