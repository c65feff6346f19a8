"""SEARCH key evaluation (RFC 3501 §6.4.4, RFC 7162 §3.1.5 MODSEQ).

Keys answered from the index (flags, UID, size, dates, modseq) never open a message; header keys parse
only the cached header block; BODY/TEXT parse the message once.  Matching is case-insensitive substring
matching on decoded text (mailsuite.mime does the decoding).

Header keys first run a cheap byte prefilter (:func:`header_may_match`) on the raw header block and
MIME-parse only the candidates: on a big mailbox almost every message is ruled out without parsing.
"""

from __future__ import annotations

import re
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
        needle = decode_search_key(key[2], charset)
        return ("HEADER", key[1], needle, needle_runs(needle))
    if kind in ("BODY", "TEXT"):
        return (kind, decode_search_key(key[1], charset))
    return key


_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_PLAIN = b"\t\r\n" + bytes(range(0x20, 0x7F))  # bytes that decoding keeps as they are (ASCII text)
_IGNORED = b" \t\r\n\x0b\x0c\""  # what unfolding, unquoting and rebuilding addresses may drop
_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
# what address search texts may add (mailsuite.mime.rfc822: incomplete addresses, as in ENVELOPE)
_ADDRESS_FILLERS = b" missing_mailbox missing_domain"


def needle_runs(needle: str) -> list[bytes] | None:
    """The ASCII letter/digit runs of a SEARCH string (lower case), or None when the prefilter cannot
    be used for it (non-ASCII text folds in ways bytes cannot follow; nothing to look for)."""
    if not needle or not needle.isascii():
        return None
    runs = [r.lower().encode("ascii") for r in _ALNUM_RUN.findall(needle)]
    return runs or None


def field_values(header: bytes, name: str) -> bytes:
    """The raw values (continuation lines included) of every field ``name`` of a header block, as the
    MIME parser splits fields: a line starting with the name, optional blanks, then ``:``
    (RFC 5322 §2.2, §4.5 obs-optional); lines starting with SP/HT continue a field.  Joined by LF."""
    low = b"\n" + header.lower()
    key = b"\n" + name.lower().encode("ascii")
    out: list[bytes] = []
    i = low.find(key)
    while i >= 0:
        j = i + len(key)
        while j < len(low) and low[j] in b" \t":
            j += 1
        if j < len(low) and low[j] == 0x3A:  # ":"
            end = low.find(b"\n", j)
            while end >= 0 and end + 1 < len(low) and low[end + 1] in b" \t":
                end = low.find(b"\n", end + 1)
            end = len(low) if end < 0 else end
            out.append(header[j : end - 1])  # low[k] is header[k - 1]
            i = low.find(key, end)
        else:
            i = low.find(key, j)
    return b"\n".join(out)


def header_may_match(header: bytes, name: str, runs: list[bytes], address: bool = False) -> bool:
    """False only when no field ``name`` of this block can contain the needle after decoding.

    When the fields are plain ASCII without encoded-words (RFC 2047), quoted-pairs or comments,
    decoding (unfolding, dropping quotes, rebuilding addresses) only removes white space and quote
    marks, and the RFC 5051 case-fold of ASCII is ``lower()``: every letter/digit run of a matching
    needle is then in the fields with those removed (``address``: or in the placeholders of
    incomplete addresses).  Anything else is a candidate and gets parsed.
    """
    if not name.isascii():
        return True
    values = field_values(header, name)
    if not values:
        return False  # no such field: HEADER/SUBJECT/FROM... with a non-empty string cannot match
    if b"=?" in values or b"\\" in values or b"(" in values or values.translate(None, _PLAIN):
        return True  # encoded-words, quoted-pairs, comments, 8-bit or control bytes: parse it
    compact = values.translate(_LOWER, _IGNORED)
    if address:
        compact += _ADDRESS_FILLERS
    return all(run in compact for run in runs)


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

    def header(self) -> bytes:
        """The raw header block (the store's cache), without parsing it."""
        return self.view.msg.header()

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
            when = info.internaldate or ctx.view.msg.internaldate()  # 0: not known yet (learnt from the file)
            return _date_cmp(op, datetime.fromtimestamp(when, timezone.utc).date(), ref)
        return _date_cmp(op, ctx.view.sent_date(), ref)
    if kind == "HEADER":
        name, needle = key[1], key[2]
        runs = key[3] if len(key) > 3 else needle_runs(needle)
        if runs is not None and not header_may_match(ctx.header(), name, runs, name in _ADDRESS_KEYS):
            return False  # cheap byte prefilter: no MIME parsing for this message
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
