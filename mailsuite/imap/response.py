"""Encoding of IMAP response data (RFC 3501 §4, §9): strings, lists, flags, dates."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from .parser import MONTHS

_QUOTABLE_BAD = frozenset(b"\r\n\x00")


def string(value: str | bytes | None, utf8: bool = True) -> bytes:
    """A quoted string when possible, else a literal; None is NIL (RFC 3501 §4.3, §4.5)."""
    if value is None:
        return b"NIL"
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) < 1024 and not (_QUOTABLE_BAD & set(data)) and (utf8 or data.isascii()):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(value: str) -> bytes:
    """An atom when it is one (mailbox names, keywords), else a string."""
    data = value.encode("utf-8")
    if data and all(0x20 < c < 0x7F and c not in b'(){ %*"\\]' for c in data):
        return data
    return string(data)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8") + b")"


def internaldate(when: datetime) -> bytes:
    """RFC 3501 §9 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz"."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    off = when.utcoffset() or (when - when)
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (
        f'"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year:04d} '
        f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode("ascii")


_FLAG_ORDER = {"\\Answered": 0, "\\Flagged": 1, "\\Deleted": 2, "\\Seen": 3, "\\Draft": 4, "\\Recent": 5}


def _flag_key(flag: str) -> tuple[int, str]:
    return _FLAG_ORDER.get(flag, 9), flag


def sort_flags(flags: Iterable[str]) -> list[str]:
    """System flags first in a stable order, then keywords alphabetically."""
    return sorted(flags, key=_flag_key)
