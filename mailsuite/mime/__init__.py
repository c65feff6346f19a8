"""Message parsing for IMAP FETCH and SEARCH: pure functions over the bytes of one message.

No I/O: give it the message bytes (CRLF line ends, as the store keeps them).  Parsing
never raises; every part records byte offsets into the original, so sections are slices.

API (stable; the IMAP engine calls only these names)::

    root = parse_message(data)            # MessagePart tree, root = the whole message
    envelope(root) -> bytes               # ENVELOPE value, IMAP-serialised  (RFC 3501 §7.4.2)
    bodystructure(root) -> bytes          # BODYSTRUCTURE value
    bodystructure(root, extensible=False) # BODY value
    envelope_list(root) / bodystructure_list(root, extensible)   # nested form (tests, caching)
    to_text(nested)                       # nested form with str values (the corpus "parsed" shape)

    spec = parse_section_spec("1.2.MIME")   # ValueError -> BAD; SectionSpec(part, text, fields)
    section(data, root, "HEADER.FIELDS (From To)") -> bytes
    section_bytes(root, spec) -> bytes    # same, with a parsed spec; b"" if it does not exist
    find_part(root, (1, 2)) -> MessagePart | None
    binary(part) -> bytes                 # BINARY[...] (RFC 3516); raises BinaryError
    binary_size(part) -> int              # BINARY.SIZE[...]; raises BinaryError
    binary_literal8(part) -> bool         # send BINARY data as ~{n} (also needed if it has NUL)
    binary_message(root) -> bytes         # BINARY[] (empty section): whole message, header included
    BinaryError (.code "UNKNOWN-CTE" or "PARSE", .text) -> "NO [<code>] <text>"

    # SEARCH (RFC 3501 §6.4.4), all text decoded; compare with contains(haystack, needle)
    header_values(root, "Subject") -> list[str]     # SUBJECT, HEADER <field> <string>
    has_header(root, "Message-ID") -> bool          # HEADER <field> "" matches iff present
    address_search_text(root, "From") -> str        # FROM / TO / CC / BCC
    body_text(root) -> str                          # BODY
    text_search_text(root) -> str                   # TEXT
    sent_date(root) -> date | None                  # SENT*; None -> EPOCH_DATE (Dovecot)
    decode_search_key(raw, charset) -> str          # raises UnknownCharset -> NO [BADCHARSET]

Partial fetches ``<o.n>`` are sliced by the caller.  Serialised strings follow Dovecot's
quoted-vs-literal choices (see :mod:`mailsuite.mime.imapstr`); where Dovecot departs from
the RFCs we follow the RFCs (docs/mime.md lists each case).
"""

from .imapstr import Human, serialise, to_text
from .parser import HeaderField, MessagePart, parse_message
from .rfc822 import Address, parse_addresses
from .search import (
    EPOCH_DATE,
    UnknownCharset,
    address_search_text,
    body_text,
    contains,
    decode_header_value,
    decode_search_key,
    fold,
    has_header,
    header_values,
    sent_date,
    text_search_text,
)
from .sections import (
    SectionSpec,
    binary,
    binary_literal8,
    binary_message,
    binary_size,
    find_part,
    parse_section_spec,
    section,
    section_bytes,
)
from .structure import bodystructure, bodystructure_list, envelope, envelope_list
from .transfer import BinaryError, InvalidEncoding, UnknownCTE

__all__ = [
    "Address",
    "BinaryError",
    "EPOCH_DATE",
    "HeaderField",
    "Human",
    "InvalidEncoding",
    "MessagePart",
    "SectionSpec",
    "UnknownCTE",
    "UnknownCharset",
    "address_search_text",
    "binary",
    "binary_literal8",
    "binary_message",
    "binary_size",
    "body_text",
    "bodystructure",
    "bodystructure_list",
    "contains",
    "decode_header_value",
    "decode_search_key",
    "envelope",
    "envelope_list",
    "find_part",
    "fold",
    "has_header",
    "header_values",
    "parse_addresses",
    "parse_message",
    "parse_section_spec",
    "section",
    "section_bytes",
    "sent_date",
    "serialise",
    "text_search_text",
    "to_text",
]
