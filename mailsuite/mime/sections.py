"""BODY[<section>] (RFC 3501 §6.4.5) and BINARY[<section>] (RFC 3516 §4.2) contents.

Sections are slices of the original message (never re-encoded); only HEADER.FIELDS(.NOT)
assembles the selected field lines plus the terminating empty line, and BINARY decodes.
A section that does not exist yields ``b""`` (Dovecot's choice, RFC silent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .parser import MessagePart
from .transfer import decode_cte

__all__ = [
    "SectionSpec",
    "parse_section_spec",
    "find_part",
    "section",
    "section_bytes",
    "binary",
    "binary_size",
    "binary_literal8",
    "binary_message",
]

_TEXT_KINDS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A parsed section: part number path, text specifier, header field names."""

    part: tuple[int, ...] = ()
    text: str = ""  # one of "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()


_FIELD = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)')


def parse_section_spec(spec: str | bytes) -> SectionSpec:
    """Parse the text between ``[`` and ``]`` (RFC 3501 §9 ``section-spec``).

    Raises ValueError on a syntax error (the engine answers BAD).  MIME needs a part
    number; HEADER.FIELDS(.NOT) needs a non-empty field list.
    """
    if isinstance(spec, bytes):
        spec = spec.decode("utf-8", "replace")
    s = spec.strip()
    nums: list[int] = []
    i = 0
    while i < len(s) and s[i].isdigit():
        j = i
        while j < len(s) and s[j].isdigit():
            j += 1
        n = int(s[i:j])
        if n == 0:
            raise ValueError("part numbers start at 1")
        nums.append(n)
        i = j
        if i < len(s):
            if s[i] != ".":
                raise ValueError("bad section")
            i += 1
            if i == len(s):
                raise ValueError("bad section")
    rest = s[i:]
    name, paren, tail = rest.partition("(")
    text = name.strip().upper()
    if text not in _TEXT_KINDS:
        raise ValueError("bad section text")
    if text == "MIME" and not nums:
        raise ValueError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        if not paren or not tail.rstrip().endswith(")"):
            raise ValueError("field list expected")
        fields = tuple(
            (q.replace('\\"', '"').replace("\\\\", "\\") if q else a)
            for q, a in _FIELD.findall(tail.rstrip()[:-1])
        )
        if not fields:
            raise ValueError("empty field list")
    elif paren:
        raise ValueError("unexpected field list")
    return SectionSpec(tuple(nums), text, fields)


def find_part(root: MessagePart, nums: tuple[int, ...] | list[int]) -> MessagePart | None:
    """The part a number path designates (RFC 3501 §6.4.5), or None.

    A non-multipart entity is its own part 1; a path continuing below a
    message/rfc822 part continues inside the encapsulated message.
    """
    part: MessagePart | None = root
    for i, n in enumerate(nums):
        more = i + 1 < len(nums)
        if part.is_multipart:
            part = part.children[n - 1] if 0 < n <= len(part.children) else None
        elif n != 1 or (more and part.message is None):
            part = None
        if part is None:
            return None
        if more and part.message is not None:
            part = part.message
    return part


def _field_lines(msg: MessagePart, names: tuple[str, ...], negate: bool) -> bytes:
    wanted = {n.lower().encode("utf-8", "replace") for n in names}
    d = msg.data
    out = []
    for f in msg.fields:
        if (f.name.lower() in wanted) != negate:
            raw = d[f.start : f.end]
            if not raw.endswith(b"\n"):
                raw += b"\r\n"
            out.append(raw)
    out.append(b"\r\n")
    return b"".join(out)


def section_bytes(root: MessagePart, spec: SectionSpec) -> bytes:
    """The bytes of BODY[spec] (before any <partial>); ``b""`` if the section does not exist."""
    d = root.data
    if not spec.part:
        target = root
        if spec.text == "":
            return d[root.header_start : root.body_end]
    else:
        part = find_part(root, spec.part)
        if part is None:
            return b""
        if spec.text == "":
            return d[part.body_start : part.body_end]
        if spec.text == "MIME":
            return d[part.header_start : part.header_end]
        # RFC 3501 §6.4.5: HEADER/TEXT after a part number need a message/rfc822 part.
        if part.message is None:
            return b""
        target = part.message
    if spec.text == "HEADER":
        return d[target.header_start : target.header_end]
    if spec.text == "TEXT":
        return d[target.body_start : target.body_end]
    if spec.text == "HEADER.FIELDS":
        return _field_lines(target, spec.fields, False)
    if spec.text == "HEADER.FIELDS.NOT":
        return _field_lines(target, spec.fields, True)
    return b""


def section(data: bytes, part_tree: MessagePart, spec: str | bytes | SectionSpec) -> bytes:
    """BODY[<spec>] of the message ``data`` whose parsed tree is ``part_tree``."""
    if not isinstance(spec, SectionSpec):
        spec = parse_section_spec(spec)
    if data is not part_tree.data and len(data) != len(part_tree.data):
        raise ValueError("part_tree was not parsed from data")
    return section_bytes(part_tree, spec)


# -- RFC 3516 BINARY -----------------------------------------------------------------------

_DECODED = (b"base64", b"quoted-printable")


def _is_leaf(p: MessagePart) -> bool:
    return not p.children and p.message is None and not p.synthetic


def _cte_name(p: MessagePart) -> bytes:
    cte = p.content_transfer_encoding
    return (cte or b"7bit").lower()


def binary(part: MessagePart) -> bytes:
    """BINARY[...] content of ``part`` (RFC 3516 §4.2): its body with the transfer
    encoding removed.  Raises :class:`~mailsuite.mime.transfer.BinaryError` (``.code`` is
    ``UNKNOWN-CTE`` or ``PARSE``) when that is impossible.

    For a multipart or message/rfc822 part (RFC 3516 leaves this open) the body is
    returned with every base64/quoted-printable leaf inside decoded and its header saying
    ``Content-Transfer-Encoding: binary``, as Dovecot does.
    """
    d = part.data
    if part.synthetic:
        return b""
    if _is_leaf(part):
        return decode_cte(part.content_transfer_encoding, d[part.body_start : part.body_end])
    return _converted(part, part.body_start, part.body_end)


def _converted(part: MessagePart, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``part`` with each base64/QP leaf below it decoded and
    its header rewritten to ``Content-Transfer-Encoding: binary`` (Dovecot's converter)."""
    d = part.data
    out: list[bytes] = []
    pos = start
    for leaf in part.walk():
        if not _is_leaf(leaf) or _cte_name(leaf) not in _DECODED or leaf.header_start < pos:
            continue
        out.append(d[pos : leaf.header_start])
        for f in leaf.fields:
            if f.name.lower() != b"content-transfer-encoding":
                out.append(d[f.start : f.end])
        out.append(b"Content-Transfer-Encoding: binary\r\n")
        last = leaf.fields[-1].end if leaf.fields else leaf.header_start
        out.append(d[last : leaf.header_end])
        out.append(decode_cte(leaf.content_transfer_encoding, d[leaf.body_start : leaf.body_end]))
        pos = leaf.body_end
    out.append(d[pos:end])
    return b"".join(out)


def binary_message(root: MessagePart) -> bytes:
    """BINARY[] (empty section, RFC 3516 §4.2): the whole message, header included, with
    every base64/quoted-printable leaf decoded as in :func:`binary`.  (``binary(root)``
    is BINARY[1] of a single-part message: the decoded body only.)"""
    return _converted(root, root.header_start, root.body_end)


def binary_size(part: MessagePart) -> int:
    """BINARY.SIZE[...] (RFC 3516 §4.2): the length of :func:`binary`; may raise BinaryError."""
    if _is_leaf(part) and _cte_name(part) not in _DECODED:
        decode_cte(part.content_transfer_encoding, b"")  # unknown CTE still raises
        return part.body_size
    return len(binary(part))


def binary_literal8(part: MessagePart) -> bool:
    """Whether BINARY data of ``part`` is sent as ``~{n}`` literal8: Dovecot does so when
    anything was decoded (RFC 3516 §4.3 requires it only for data containing NUL, which
    the caller must check as well)."""
    return any(_is_leaf(p) and _cte_name(p) in _DECODED for p in part.walk())

