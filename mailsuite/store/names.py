"""Mailbox names: IMAP modified UTF-7 (RFC 3501 §5.1.3) and validation.

Inside the store a mailbox name is a plain Unicode ``str`` with ``.`` as the hierarchy delimiter
(``"INBOX"``, ``"Work.Projects"``, ``"Entwürfe"``).  On the wire IMAP sends it in modified UTF-7 (or in
UTF-8 after ``ENABLE UTF8=ACCEPT``, RFC 6855 §3); on disk the Maildir++ folder directory is ``"."`` plus
the modified UTF-7 form (Dovecot's layout), e.g. ``.Entw&APw-rfe``.

Functions:

- :func:`encode_mutf7` / :func:`decode_mutf7`: the codec.  Decoding is strict: it only accepts the
  canonical encoding (what :func:`encode_mutf7` produces), so one name has exactly one wire/disk form.
- :func:`validate_name`: checks a decoded name is safe and returns its canonical form (``INBOX`` matched
  case-insensitively, RFC 3501 §5.1).  Raises :class:`InvalidMailboxName`.
- :func:`decode_name`: wire (modified UTF-7) -> validated name, for the IMAP engine.
- :func:`folder_dirname` / :func:`name_from_dirname`: name <-> Maildir++ directory name.
"""

from __future__ import annotations

import base64
import re

from .errors import InvalidMailboxName

__all__ = [
    "DELIMITER",
    "INBOX",
    "encode_mutf7",
    "decode_mutf7",
    "validate_name",
    "decode_name",
    "folder_dirname",
    "name_from_dirname",
]

DELIMITER = "."
INBOX = "INBOX"
#: Longest directory name most file systems accept (bytes).
MAX_DIRNAME_BYTES = 255

_B64_RUN = re.compile(r"[A-Za-z0-9+,]+")


def _is_printable_ascii(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def encode_mutf7(name: str) -> str:
    """Encode a Unicode mailbox name to modified UTF-7 (RFC 3501 §5.1.3).

    Printable US-ASCII stands for itself except ``&`` which becomes ``&-``; every other run of
    characters is UTF-16BE, base64 with ``,`` instead of ``/`` and no padding, between ``&`` and ``-``.
    Raises :class:`InvalidMailboxName` for strings that are not valid Unicode (lone surrogates).
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            try:
                raw = "".join(run).encode("utf-16-be")
            except UnicodeEncodeError as e:
                raise InvalidMailboxName("mailbox name is not valid Unicode") from e
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            run.clear()

    for ch in name:
        if _is_printable_ascii(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode modified UTF-7 to Unicode; strict (RFC 3501 §5.1.3).

    Rejected with :class:`InvalidMailboxName`: non-printable or non-ASCII characters, an ``&`` without
    its closing ``-``, bad base64, odd byte counts, lone surrogates, printable ASCII hidden in base64,
    and any non-canonical spelling (e.g. two adjacent encoded runs, non-zero padding bits).
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if not _is_printable_ascii(ch):
            raise InvalidMailboxName(f"invalid character {ch!r} in modified UTF-7 name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise InvalidMailboxName("unterminated '&' shift in modified UTF-7 name")
        if end == i + 1:
            out.append("&")
            i = end + 1
            continue
        run = text[i + 1 : end]
        if not _B64_RUN.fullmatch(run) or len(run) % 4 == 1:
            raise InvalidMailboxName("bad base64 in modified UTF-7 name")
        padded = run.replace(",", "/") + "=" * (-len(run) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            decoded = raw.decode("utf-16-be") if len(raw) % 2 == 0 else None
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidMailboxName("bad UTF-16 in modified UTF-7 name") from e
        if decoded is None:
            raise InvalidMailboxName("odd byte count in modified UTF-7 name")
        if any(_is_printable_ascii(c) for c in decoded):
            # RFC 3501 §5.1.3: printable US-ASCII must represent itself.
            raise InvalidMailboxName("printable ASCII encoded in modified UTF-7 name")
        out.append(decoded)
        i = end + 1
    result = "".join(out)
    if encode_mutf7(result) != text:
        raise InvalidMailboxName("non-canonical modified UTF-7 name")
    return result


def _bad_char(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or ch in "/\\" or 0xD800 <= o <= 0xDFFF


def validate_name(name: str) -> str:
    """Validate a decoded mailbox name; return its canonical form.

    Rules (DESIGN §4, RFC 3501 §5.1): non-empty; no NUL, control characters, ``/`` or ``\\``; no empty
    hierarchy component (so no leading or trailing ``.`` and no ``..``), so a name can never escape the
    user's directory; the Maildir++ directory name fits in 255 bytes.  The first component ``INBOX`` is
    case-insensitive and returned upper-case (``"inbox.x"`` -> ``"INBOX.x"``).
    """
    if not isinstance(name, str) or not name:
        raise InvalidMailboxName("empty mailbox name")
    for ch in name:
        if _bad_char(ch):
            raise InvalidMailboxName(f"mailbox name contains forbidden character {ch!r}")
    parts = name.split(DELIMITER)
    if any(p == "" for p in parts):
        raise InvalidMailboxName("mailbox name has an empty hierarchy component")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    canonical = DELIMITER.join(parts)
    if canonical != INBOX and len(folder_dirname(canonical).encode("utf-8")) > MAX_DIRNAME_BYTES:
        raise InvalidMailboxName("mailbox name too long")
    return canonical


def decode_name(wire: str) -> str:
    """IMAP wire form (modified UTF-7) -> validated canonical name."""
    return validate_name(decode_mutf7(wire))


def folder_dirname(name: str) -> str:
    """Maildir++ directory name of a canonical mailbox name: ``""`` for INBOX, else ``"." + mUTF-7``."""
    if name == INBOX:
        return ""
    return "." + encode_mutf7(name)


def name_from_dirname(dirname: str) -> str:
    """Canonical mailbox name of a Maildir++ folder directory (``".Sent"`` -> ``"Sent"``).

    Raises :class:`InvalidMailboxName` for directories that are not valid folder names.
    """
    if not dirname.startswith(".") or dirname in (".", ".."):
        raise InvalidMailboxName(f"not a Maildir++ folder: {dirname!r}")
    name = validate_name(decode_mutf7(dirname[1:]))
    if name == INBOX or folder_dirname(name) != dirname:
        # ".INBOX" would alias the real INBOX (the Maildir root); ".inbox.x" is not the canonical
        # directory of "INBOX.x".
        raise InvalidMailboxName(f"non-canonical folder directory {dirname!r}")
    return name
