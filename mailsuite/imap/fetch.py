"""FETCH data items of one message (RFC 3501 §6.4.5, §7.4.2; RFC 3516 BINARY; RFC 7162 MODSEQ).

The response of one message is produced as a stream of byte chunks: a small message's whole
``* n FETCH (...)`` line is one chunk (one file read, one join), while ``BODY[]`` of a big message goes
out in pieces straight from the file.  What does not depend on the message (the item order, the echoed
labels such as ``BODY[HEADER.FIELDS (FROM TO)]``) is worked out once per command (:func:`_plan`).  MIME
structure (ENVELOPE, BODYSTRUCTURE, numbered parts, BINARY) comes from :mod:`mailsuite.imap.mimeview`,
the one place that talks to mailsuite.mime.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

from . import mimeview
from .backend import MessageInfo
from .message import WHOLE_READ, Message
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


def _section_name(att: FetchAtt) -> bytes:
    spec = att.section.spec() if att.section else ""
    name = att.name[:-2] + "[" + spec + "]"
    if att.partial is not None:
        name += "<%d>" % att.partial[0]
    return name.encode("utf-8")


# -- the per-command plan ------------------------------------------------------------------------------

# Step kinds.  The "range" kinds are literals cut from the message file: RFC822 and BODY[] (whole
# message), RFC822.TEXT and BODY[TEXT] (after the header block).
_UID, _FLAGS, _SIZE, _MODSEQ, _INTERNALDATE = "UID", "FLAGS", "RFC822.SIZE", "MODSEQ", "INTERNALDATE"
_ENVELOPE, _BODYSTRUCTURE, _BODY = "ENVELOPE", "BODYSTRUCTURE", "BODY"
_ALL, _TEXT, _HEADER, _SECTION = "all", "text", "header", "section"
_BINARY, _BINARY_SIZE, _UNSUPPORTED = "BINARY[]", "BINARY.SIZE[]", "?"

_SIMPLE = {k: k for k in (_UID, _FLAGS, _SIZE, _MODSEQ, _INTERNALDATE, _ENVELOPE, _BODYSTRUCTURE, _BODY)}

_Step = tuple[str, FetchAtt, bytes]  # kind, item, label (with the separating space before it)
_PLANS: dict[tuple, tuple[tuple[FetchAtt, ...], tuple[_Step, ...]]] = {}
_PLANS_MAX = 64


def _step(att: FetchAtt) -> tuple[str, bytes]:
    """The kind of ``att`` and the label echoed before its value (RFC 3501 §7.4.2)."""
    n = att.name
    simple = _SIMPLE.get(n)
    if simple is not None:  # the kind constant itself: fetch_items compares kinds by identity
        return simple, simple.encode() + b" "
    if n == "RFC822":
        return _ALL, b"RFC822 "
    if n == "RFC822.TEXT":
        return _TEXT, b"RFC822.TEXT "
    if n == "RFC822.HEADER":
        return _HEADER, b"RFC822.HEADER "
    if n == "BODY[]":
        sec = att.section
        assert sec is not None
        kind = _SECTION
        if not sec.part:  # RFC 3501 §6.4.5: the top-level message, straight from the file
            kind = {None: _ALL, "TEXT": _TEXT, "HEADER": _HEADER}.get(sec.text, _SECTION)
        return kind, _section_name(att) + b" "
    if n == "BINARY[]":
        return _BINARY, _section_name(att) + b" "
    if n == "BINARY.SIZE[]":
        return _BINARY_SIZE, b"BINARY.SIZE[%s] " % att.section.spec().encode()
    return _UNSUPPORTED, b""  # the parser only produces the items above


def _plan(atts: list[FetchAtt], with_uid: bool, with_modseq: bool) -> tuple[_Step, ...]:
    """The steps of one FETCH command, computed on its first message and reused for the others.

    Keyed by the identity of the (immutable) items; the plan holds them, so an id cannot be reused
    by other items while the plan is cached."""
    key = (with_uid, with_modseq, *map(id, atts))
    hit = _PLANS.get(key)
    if hit is not None:
        return hit[1]
    items: list[FetchAtt] = list(atts)
    names = {a.name for a in atts}
    if with_uid and "UID" not in names:  # RFC 3501 §6.4.8: UID FETCH always reports UID
        items.insert(0, FetchAtt("UID"))
    if with_modseq and "MODSEQ" not in names:  # RFC 7162 §3.1.4.1
        items.append(FetchAtt("MODSEQ"))
    steps = []
    for i, att in enumerate(items):
        kind, label = _step(att)
        steps.append((kind, att, label if i == 0 else b" " + label))
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    plan = tuple(steps)
    _PLANS[key] = (tuple(atts), plan)
    return plan


_FLAG_ITEMS: dict[tuple[str, ...], bytes] = {}
_FLAG_ITEMS_MAX = 4096


def _flags(flags: list[str]) -> bytes:
    """``(\\Seen kw)``: sorted and encoded once per distinct flag set."""
    key = tuple(flags)
    out = _FLAG_ITEMS.get(key)
    if out is None:
        out = flag_list(sort_flags(flags))
        if len(_FLAG_ITEMS) >= _FLAG_ITEMS_MAX:
            _FLAG_ITEMS.clear()
        _FLAG_ITEMS[key] = out
    return out


# -- the fast path of a client's header sync or full download ------------------------------------------

_FIELDS_TEXTS = ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
#: Step kinds of :func:`simple_plan`.
UID_STEP, FLAGS_STEP, SIZE_STEP, MODSEQ_STEP, FIELDS_STEP = _UID, _FLAGS, _SIZE, _MODSEQ, "fields"
WHOLE_STEP = _ALL
_SimpleStep = tuple[str, "tuple | None", bytes]


def simple_plan(atts: list[FetchAtt], with_uid: bool, with_modseq: bool) -> list[_SimpleStep] | None:
    """The steps of a FETCH made only of UID, FLAGS, RFC822.SIZE, MODSEQ, top-level
    ``BODY[HEADER.FIELDS (...)]``/``.NOT`` and the whole message (``BODY[]``, ``BODY.PEEK[]``, ``RFC822``),
    none with a partial: a mail client's header sync or full download.  Else None (the general path).

    A fields step carries the key of its literal in the folder's header memo: the literal depends
    only on the message's header block, so it is computed once per message and field list."""
    out: list[_SimpleStep] = []
    for kind, att, label in _plan(atts, with_uid, with_modseq):
        if kind is _UID or kind is _FLAGS or kind is _SIZE or kind is _MODSEQ:
            out.append((kind, None, label))
        elif kind is _ALL and att.partial is None:
            out.append((WHOLE_STEP, None, label))
        elif (kind is _SECTION and att.partial is None and att.section is not None and not att.section.part
              and att.section.text in _FIELDS_TEXTS):
            out.append((FIELDS_STEP, ("imap-fields", att.section.text, att.section.field_keys), label))
        else:
            return None
    return out


def fields_literal(header: bytes, key: tuple) -> bytes:
    """The literal of a fields step (see :func:`simple_plan`) for a header block."""
    _name, text, keys = key
    data = mimeview.header_fields(header, keys, text == "HEADER.FIELDS.NOT")
    return b"{%d}\r\n" % len(data) + data


def flags_item(flags: list[str]) -> bytes:
    """``(\\Seen kw)`` for a FLAGS item (sorted and encoded once per distinct flag list)."""
    return _flags(flags)


# -- one message ---------------------------------------------------------------------------------------


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
    """Chunks of ``* seq FETCH (...)\\r\\n``; ``flags`` are the flags to report (incl. \\Recent).

    Everything up to a literal bigger than ``WHOLE_READ`` is joined into one chunk; such a literal
    follows in file-sized steps (:meth:`Message.iter_range`)."""
    out = [b"* %d FETCH (" % seq]
    for kind, att, label in _plan(atts, with_uid, with_modseq):
        out.append(label)
        if kind is _UID:
            out.append(b"%d" % info.uid)
        elif kind is _FLAGS:
            out.append(_flags(flags))
        elif kind is _SIZE:
            out.append(b"%d" % info.size)
        elif kind is _ALL or kind is _TEXT:
            if kind is _ALL:
                base, total = 0, info.size
            else:
                base = len(msg.header())
                total = max(info.size - base, 0)
            start, length = _partial(total, att.partial)
            out.append(b"{%d}\r\n" % length)
            if length <= WHOLE_READ:
                if length:
                    out.append(msg.read_range(base + start, length))
            else:  # a big literal, streamed from the file (padded if it shrinks)
                yield b"".join(out)
                out = []
                yield from msg.iter_range(base + start, length)
        elif kind is _HEADER:
            out.append(_literal_bytes(msg.header(), att.partial))
        elif kind is _SECTION:
            assert att.section is not None
            out.append(_literal_bytes(mimeview.section(msg, att.section), att.partial))
        elif kind is _MODSEQ:
            out.append(b"(%d)" % info.modseq)  # RFC 7162 §3.1.4.1
        elif kind is _INTERNALDATE:
            when = info.internaldate or msg.internaldate()  # 0: not known yet (learnt from the file)
            out.append(internaldate(datetime.fromtimestamp(when, timezone.utc)))
        elif kind is _ENVELOPE:
            out.append(mimeview.envelope(msg))
        elif kind is _BODYSTRUCTURE:
            out.append(mimeview.bodystructure(msg, extended=True))
        elif kind is _BODY:
            out.append(mimeview.bodystructure(msg, extended=False))
        elif kind is _BINARY:  # RFC 3516 §4.2; BinaryError -> NO [UNKNOWN-CTE] / NO [PARSE]
            part = att.section.part
            data = mimeview.binary(msg, part)
            start, length = _partial(len(data), att.partial)
            chunk = data[start : start + length]
            literal8 = mimeview.binary_literal8(msg, part) or b"\x00" in chunk  # RFC 3516 §4.3
            out.append((b"~" if literal8 else b"") + b"{%d}\r\n" % length + chunk)
        elif kind is _BINARY_SIZE:
            out.append(b"%d" % mimeview.binary_size(msg, att.section.part))
        else:
            raise FetchError("Unsupported fetch item")
    out.append(b")\r\n")
    yield b"".join(out)
