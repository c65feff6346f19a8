"""ENVELOPE, BODY and BODYSTRUCTURE (RFC 3501 §7.4.2) built from a parsed message tree.

``*_list`` functions return the nested form (see :mod:`mailsuite.mime.imapstr`); the
others return it serialised as IMAP response data, ready to follow ``ENVELOPE `` /
``BODYSTRUCTURE `` in a FETCH response.
"""

from __future__ import annotations

from . import rfc822
from .imapstr import Human, Nested, part_list, serialise
from .parser import MessagePart

__all__ = ["envelope", "envelope_list", "bodystructure", "bodystructure_list"]

_ADDRESS_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")


def _trimmed(part: MessagePart, name: bytes) -> bytes | None:
    # Duplicate fields: Dovecot's choice (RFC silent) is the last Date/Subject/Message-ID/
    # In-Reply-To.  Leading blanks of a value folded right after the colon are not part
    # of the value (RFC 5322 §2.2.3), so they are trimmed (Dovecot keeps them: a quirk).
    v = part.header_value(name, last=True)
    return None if v is None else v.strip(b" \t")


def _addresses(part: MessagePart, name: bytes) -> list[Nested] | None:
    # Dovecot's choice (RFC silent): the addresses of every field of that name are joined.
    out: list[Nested] = []
    for f in part.header_fields(name):
        for a in rfc822.parse_addresses(f.raw_value(part.data)):
            out.append(part_list([None if a.name is None else Human(a.name), a.route, a.mailbox, a.host]))
    return out or None


def envelope_list(part: MessagePart) -> list[Nested]:
    """The ENVELOPE of the message whose header is ``part``'s header (RFC 3501 §7.4.2)."""
    subjects = part.header_fields(b"subject")
    # The folded value: Dovecot's "for humans" rule sends a folded Subject as a literal.
    subject = subjects[-1].folded_value(part.data) if subjects else None
    addrs = {n: _addresses(part, n) for n in _ADDRESS_FIELDS}
    # RFC 3501 §7.4.2: sender and reply-to default to from.
    sender = addrs[b"sender"] or addrs[b"from"]
    reply_to = addrs[b"reply-to"] or addrs[b"from"]
    return [
        _trimmed(part, b"date"),
        None if subject is None else Human(subject),
        addrs[b"from"],
        sender,
        reply_to,
        addrs[b"to"],
        addrs[b"cc"],
        addrs[b"bcc"],
        _trimmed(part, b"in-reply-to"),
        _trimmed(part, b"message-id"),
    ]


def envelope(part: MessagePart) -> bytes:
    """ENVELOPE as IMAP response data: ``("date" "subject" ((...)) ...)``."""
    return serialise(envelope_list(part))


def _params(params: list[tuple[bytes, bytes]], text: bool) -> list[Nested] | None:
    out: list[Nested] = []
    has_charset = False
    for k, v in params:
        out.append(k)
        out.append(v)
        has_charset = has_charset or k.lower() == b"charset"
    if text and not has_charset:
        # RFC 2045 §5.2 default charset, reported explicitly (as Dovecot does).
        out += [b"charset", b"us-ascii"]
    return out or None


def _value(part: MessagePart, name: bytes) -> bytes | None:
    v = part.header_value(name)
    return None if v is None else v.strip(b" \t")


def _disposition(part: MessagePart) -> list[Nested] | None:
    v = part.header_value(b"content-disposition")
    if v is None:
        return None
    token, params = rfc822.parse_token_and_params(v)
    if not token:
        # RFC 2183 has no empty disposition type; RFC 3501 body-fld-dsp allows NIL, which
        # fits an empty field (Dovecot answers ("" NIL): a quirk).
        return None
    return [token, _params(params, False)]


def _language(part: MessagePart) -> list[Nested] | None:
    v = part.header_value(b"content-language")
    if v is None:
        return None
    tags = rfc822.parse_language(v)
    return list(tags) if tags else None


def _extension(part: MessagePart) -> list[Nested]:
    # RFC 3501 §7.4.2 body-ext-1part / body-ext-mpart after md5 or params.
    return [_disposition(part), _language(part), _value(part, b"content-location")]


def bodystructure_list(part: MessagePart, extensible: bool = True) -> list[Nested]:
    """BODYSTRUCTURE (``extensible``) or BODY of ``part`` in nested form (RFC 3501 §7.4.2)."""
    if part.is_multipart:
        out: list[Nested] = [part_list(bodystructure_list(c, extensible)) for c in part.children]
        out.append(part.subtype)
        if extensible:
            out.append(_params(part.params, False))
            out += _extension(part)
        return out
    text = part.mtype.lower() == b"text"
    cte = part.content_transfer_encoding
    if part.message is not None:
        # Dovecot writes the media type of an encapsulated message in lower case.
        mtype, subtype = b"message", b"rfc822"
    else:
        mtype, subtype = part.mtype, part.subtype
    out = [
        mtype,
        subtype,
        _params(part.params, text),
        _value(part, b"content-id"),
        _value(part, b"content-description"),
        cte if cte is not None else b"7bit",
        part.body_size,
    ]
    if part.message is not None:
        out.append(envelope_list(part.message))
        out.append(bodystructure_list(part.message, extensible))
        out.append(part.body_lines)
    elif text:
        out.append(part.body_lines)
    if extensible:
        out.append(_value(part, b"content-md5"))
        out += _extension(part)
    return out


def bodystructure(part: MessagePart, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (``extensible=True``) or BODY (``False``) as IMAP response data."""
    return serialise(bodystructure_list(part, extensible))
