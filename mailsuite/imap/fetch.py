"""FETCH data items of one message (RFC 3501 §6.4.5, §7.4.2; RFC 3516 BINARY; RFC 7162 MODSEQ).

The response of one message is produced as a stream of byte chunks, so ``BODY[]`` of a big message goes
out in pieces straight from the file.  MIME structure (ENVELOPE, BODYSTRUCTURE, numbered parts, BINARY)
comes from :mod:`mailsuite.imap.mimeview`, the one place that talks to mailsuite.mime.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

from . import mimeview
from .backend import MessageInfo
from .message import Message
from .parser import FetchAtt
from .response import flag_list, internaldate, sort_flags

SEEN_SETTING = frozenset(("BODY[]", "BINARY[]", "RFC822", "RFC822.TEXT"))


class FetchError(Exception):
    """A data item that cannot be produced for this message (``NO`` with this text)."""


def sets_seen(att: FetchAtt) -> bool:
    """RFC 3501 §6.4.5: non-PEEK body sections and RFC822/RFC822.TEXT set \\Seen."""
    return att.name in SEEN_SETTING and not att.peek


def _partial(data_len: int, partial: tuple[int, int] | None) -> tuple[int, int]:
    if partial is None:
        return 0, data_len
    start, length = partial
    if start >= data_len:
        return data_len, 0
    return start, min(length, data_len - start)


def _literal_bytes(data: bytes, partial: tuple[int, int] | None) -> bytes:
    start, length = _partial(len(data), partial)
    return b"{%d}\r\n" % length + data[start : start + length]


def _literal_range(msg: Message, base: int, total: int, partial) -> Iterator[bytes]:
    start, length = _partial(total, partial)
    yield b"{%d}\r\n" % length
    if length:
        yield from msg.iter_range(base + start, length)


def _section_name(att: FetchAtt) -> bytes:
    spec = att.section.spec() if att.section else ""
    name = att.name[:-2] + "[" + spec + "]"
    if att.partial is not None:
        name += "<%d>" % att.partial[0]
    return name.encode("utf-8")


def fetch_items(
    seq: int,
    info: MessageInfo,
    flags: list[str],
    atts: list[FetchAtt],
    msg: Message,
    *,
    with_uid: bool,
    with_modseq: bool,
) -> Iterator[bytes]:
    """Chunks of ``* seq FETCH (...)\\r\\n``; ``flags`` are the flags to report (incl. \\Recent)."""
    names = {a.name for a in atts}
    items: list[FetchAtt] = list(atts)
    if with_uid and "UID" not in names:
        items.insert(0, FetchAtt("UID"))
    if with_modseq and "MODSEQ" not in names:
        items.append(FetchAtt("MODSEQ"))
    yield b"* %d FETCH (" % seq
    first = True
    for att in items:
        if not first:
            yield b" "
        first = False
        yield from _item(att, info, flags, msg)
    yield b")\r\n"


def _item(att: FetchAtt, info: MessageInfo, flags: list[str], msg: Message) -> Iterator[bytes]:
    n = att.name
    if n == "UID":
        yield b"UID %d" % info.uid
    elif n == "FLAGS":
        yield b"FLAGS " + flag_list(sort_flags(flags))
    elif n == "INTERNALDATE":
        yield b"INTERNALDATE " + internaldate(datetime.fromtimestamp(info.internaldate, timezone.utc))
    elif n == "RFC822.SIZE":
        yield b"RFC822.SIZE %d" % info.size
    elif n == "MODSEQ":
        yield b"MODSEQ (%d)" % info.modseq  # RFC 7162 §3.1.4.1
    elif n == "ENVELOPE":
        yield b"ENVELOPE " + mimeview.envelope(msg)
    elif n == "BODYSTRUCTURE":
        yield b"BODYSTRUCTURE " + mimeview.bodystructure(msg, extended=True)
    elif n == "BODY":
        yield b"BODY " + mimeview.bodystructure(msg, extended=False)
    elif n == "RFC822":
        yield b"RFC822 "
        yield from _literal_range(msg, 0, info.size, None)
    elif n == "RFC822.HEADER":
        yield b"RFC822.HEADER " + _literal_bytes(msg.header(), None)
    elif n == "RFC822.TEXT":
        hlen = len(msg.header())
        yield b"RFC822.TEXT "
        yield from _literal_range(msg, hlen, max(info.size - hlen, 0), None)
    elif n == "BODY[]":
        yield _section_name(att) + b" "
        yield from _body_section(att, info, msg)
    elif n == "BINARY[]":  # RFC 3516 §4.2; BinaryError -> NO [UNKNOWN-CTE] / NO [PARSE]
        part = att.section.part
        data = mimeview.binary(msg, part)
        start, length = _partial(len(data), att.partial)
        chunk = data[start : start + length]
        literal8 = mimeview.binary_literal8(msg, part) or b"\x00" in chunk  # RFC 3516 §4.3
        yield _section_name(att) + b" " + (b"~" if literal8 else b"") + b"{%d}\r\n" % length + chunk
    elif n == "BINARY.SIZE[]":
        size = mimeview.binary_size(msg, att.section.part)
        yield b"BINARY.SIZE[%s] %d" % (att.section.spec().encode(), size)
    else:  # the parser only produces the items above
        raise FetchError("Unsupported fetch item")


def _body_section(att: FetchAtt, info: MessageInfo, msg: Message) -> Iterator[bytes]:
    sec = att.section
    assert sec is not None
    if not sec.part:
        if sec.text is None:
            yield from _literal_range(msg, 0, info.size, att.partial)
            return
        if sec.text == "TEXT":
            hlen = len(msg.header())
            yield from _literal_range(msg, hlen, max(info.size - hlen, 0), att.partial)
            return
        if sec.text == "HEADER":
            yield _literal_bytes(msg.header(), att.partial)
            return
    data = mimeview.section(msg, sec)
    yield _literal_bytes(data, att.partial)
