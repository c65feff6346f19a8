"""Content-Transfer-Encoding decoding (RFC 2045 §6.7 quoted-printable, §6.8 base64).

Strict decoders (for RFC 3516 BINARY, which must refuse data it cannot decode) raise
:class:`BinaryError`; lenient ones (for SEARCH) never raise.
"""

from __future__ import annotations

import binascii
import re

__all__ = [
    "BinaryError",
    "UnknownCTE",
    "InvalidEncoding",
    "decode_base64",
    "decode_qp",
    "decode_cte",
    "decode_cte_lenient",
    "IDENTITY_CTES",
]

IDENTITY_CTES = frozenset((b"7bit", b"8bit", b"binary"))


class BinaryError(Exception):
    """A BINARY fetch cannot be answered: the IMAP engine replies ``NO [<code>] <text>``."""

    code = "UNKNOWN-CTE"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class UnknownCTE(BinaryError):
    """RFC 3516 §4.3: a transfer encoding the server cannot decode -> ``NO [UNKNOWN-CTE]``."""

    code = "UNKNOWN-CTE"


class InvalidEncoding(BinaryError):
    """Data that does not decode under its own encoding.

    RFC 3516 defines only UNKNOWN-CTE; Dovecot answers ``NO [PARSE] Invalid data in MIME
    part`` and so do we (a NO, never a BYE: RFC 3501 §7.1.5).
    """

    code = "PARSE"


_B64_WS = b" \t\r\n"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PAD_SPLIT = re.compile(rb"(?<==)(?=[^=])")


def decode_base64(data: bytes) -> bytes:
    """Strict base64 (RFC 2045 §6.8): white space ignored, anything else outside the
    alphabet or a truncated final quantum is an error."""
    clean = data.translate(None, _B64_WS)
    if clean.translate(None, _B64_ALPHABET + b"="):
        raise InvalidEncoding("Invalid data in MIME part")
    if len(clean) % 4:
        raise InvalidEncoding("Invalid data in MIME part")
    try:
        return binascii.a2b_base64(clean, strict_mode=True)
    except binascii.Error:
        pass
    # Several padded blocks concatenated (some MUAs): decode each one.
    out = []
    for chunk in _PAD_SPLIT.split(clean):
        if len(chunk) % 4:
            raise InvalidEncoding("Invalid data in MIME part")
        try:
            out.append(binascii.a2b_base64(chunk, strict_mode=True))
        except binascii.Error:
            raise InvalidEncoding("Invalid data in MIME part") from None
    return b"".join(out)


def _decode_base64_lenient(data: bytes) -> bytes:
    clean = data.translate(None, _B64_WS)
    clean = bytes(c for c in clean if c in _B64_ALPHABET or c == 0x3D) if clean.translate(None, _B64_ALPHABET + b"=") else clean
    clean = clean[: len(clean) - len(clean) % 4]
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


_HEX = b"0123456789ABCDEFabcdef"


def decode_qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7): ``=XX`` escapes, soft line breaks, trailing white
    space on encoded lines dropped (rule 3).  A malformed ``=`` is kept as is (the
    robustness advice of §6.7 note 1); line ends are kept."""
    out = bytearray()
    for line in data.splitlines(keepends=True):
        if line.endswith(b"\r\n"):
            body, eol = line[:-2], b"\r\n"
        elif line.endswith(b"\n"):
            body, eol = line[:-1], b"\n"
        else:
            body, eol = line, b""
        body = body.rstrip(b" \t")
        if body.endswith(b"="):  # soft line break: "=" ends the encoded line
            body, eol = body[:-1], b""
        out += _unescape(body)
        out += eol
    return bytes(out)


def _unescape(body: bytes) -> bytes:
    if b"=" not in body:
        return body
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == 0x3D and i + 2 < n and body[i + 1] in _HEX and body[i + 2] in _HEX:
            out.append(int(body[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def decode_cte(cte: bytes | None, data: bytes) -> bytes:
    """Decode ``data`` per its Content-Transfer-Encoding; raise :class:`BinaryError`."""
    name = (cte or b"7bit").lower()
    if name in IDENTITY_CTES:
        return data
    if name == b"base64":
        return decode_base64(data)
    if name == b"quoted-printable":
        return decode_qp(data)
    raise UnknownCTE("Unknown Content-Transfer-Encoding")


def decode_cte_lenient(cte: bytes | None, data: bytes) -> bytes:
    """Best-effort decoding for SEARCH: never raises, unknown encodings pass through."""
    name = (cte or b"7bit").lower()
    if name == b"base64":
        return _decode_base64_lenient(data)
    if name == b"quoted-printable":
        return decode_qp(data)
    return data
