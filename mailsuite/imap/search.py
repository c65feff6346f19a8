"""SEARCH key evaluation (RFC 3501 §6.4.4, RFC 7162 §3.1.5 MODSEQ).

Keys answered from the index (flags, UID, size, dates, modseq) never open a message; header keys parse
only the cached header block; BODY/TEXT parse the message once.  Matching is case-insensitive substring
matching on decoded text (mailsuite.mime does the decoding).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Callable

from .backend import MessageInfo
from .message import Message
from .mimeview import SearchView, contains, decode_search_key

_ADDRESS_KEYS = ("FROM", "TO", "CC", "BCC")


def decode_keys(key: tuple, charset: str | None) -> tuple:
    """Decode the byte strings of a parsed key with the SEARCH CHARSET (UnknownCharset propagates)."""
    kind = key[0]
    if kind == "AND":
        return ("AND", tuple(decode_keys(k, charset) for k in key[1]))
    if kind == "NOT":
        return ("NOT", decode_keys(key[1], charset))
    if kind == "OR":
        return ("OR", decode_keys(key[1], charset), decode_keys(key[2], charset))
    if kind == "HEADER":
        return ("HEADER", key[1], decode_search_key(key[2], charset))
    if kind in ("BODY", "TEXT"):
        return (kind, decode_search_key(key[1], charset))
    return key


class SearchContext:
    """What the evaluator needs about one message."""

    def __init__(
        self,
        seq: int,
        info: MessageInfo,
        recent: bool,
        count: int,
        max_uid: int,
        message: Callable[[], Message],
        saved: list[int] | None = None,  # RFC 5182 "$"
    ) -> None:
        self.seq = seq
        self.info = info
        self.recent = recent
        self.count = count
        self.max_uid = max_uid
        self._message_factory = message
        self._view: SearchView | None = None
        self.saved = set(saved or ())
        self.max_modseq = 0  # the highest modseq that made a MODSEQ key match (RFC 7162 §3.1.5)

    @property
    def view(self) -> SearchView:
        if self._view is None:
            self._view = SearchView(self._message_factory())
        return self._view


def _date_cmp(op: str, d: date, ref: date) -> bool:
    return d < ref if op == "<" else d == ref if op == "=" else d >= ref


def matches(key: tuple, ctx: SearchContext) -> bool:
    kind = key[0]
    info = ctx.info
    if kind == "AND":
        return all(matches(k, ctx) for k in key[1])
    if kind == "ALL":
        return True
    if kind == "FLAG":
        flag, present = key[1], key[2]
        has = ctx.recent if flag == "\\Recent" else (flag in info.flags or flag in info.keywords)
        return has == present
    if kind == "NOT":
        return not matches(key[1], ctx)
    if kind == "OR":
        return matches(key[1], ctx) or matches(key[2], ctx)
    if kind == "SEQ":
        if key[1].saved:
            return info.uid in ctx.saved
        return key[1].contains_seq(ctx.seq, ctx.count)
    if kind == "UID":
        if key[1].saved:
            return info.uid in ctx.saved
        return key[1].contains_uid(info.uid, ctx.max_uid)
    if kind == "SIZE":
        return info.size > key[2] if key[1] == ">" else info.size < key[2]
    if kind == "MODSEQ":
        ok = info.modseq >= key[1]
        if ok:
            ctx.max_modseq = max(ctx.max_modseq, info.modseq)
        return ok
    if kind == "DATE":
        # RFC 3501 §6.4.4: dates compare without time and timezone
        _, which, op, ref = key
        if which == "internal":
            return _date_cmp(op, datetime.fromtimestamp(info.internaldate, timezone.utc).date(), ref)
        return _date_cmp(op, ctx.view.sent_date(), ref)
    if kind == "HEADER":
        name, needle = key[1], key[2]
        if name in _ADDRESS_KEYS:
            return ctx.view.has_header(name) and contains(ctx.view.address_text(name), needle)
        if needle == "":  # RFC 3501 §6.4.4 HEADER: an empty string matches any message with the field
            return ctx.view.has_header(name)
        return any(contains(v, needle) for v in ctx.view.header_values(name))
    if kind == "BODY":
        return contains(ctx.view.body_text(), key[1])
    if kind == "TEXT":
        return contains(ctx.view.text(), key[1])
    raise ValueError(f"unknown search key {kind}")


def uses_message(key: tuple) -> bool:
    """True when evaluating ``key`` may need the message (so cheap keys can be tried first)."""
    kind = key[0]
    if kind == "AND":
        return any(uses_message(k) for k in key[1])
    if kind == "NOT":
        return uses_message(key[1])
    if kind == "OR":
        return uses_message(key[1]) or uses_message(key[2])
    if kind == "DATE":
        return key[1] == "sent"
    return kind in ("HEADER", "BODY", "TEXT")


def order_keys(key: tuple) -> tuple:
    """Put index-only keys of an AND first so message files are opened only when needed."""
    if key[0] != "AND":
        return key
    return ("AND", tuple(sorted((order_keys(k) for k in key[1]), key=uses_message)))
