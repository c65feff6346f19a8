"""RFC 5321 §4.1.2 paths and ESMTP parameters, parsed strictly.

``parse_path`` reads ``<...>`` at the start of a MAIL/RCPT argument and returns the mailbox and the rest of
the line (the parameters).  Source routes (``<@a,@b:user@c>``) are accepted and dropped, as RFC 5321 §4.1.1.3
and Appendix C require; the route never decides where mail goes.  Quoted local parts are unquoted into
``Mailbox.local``; ``Mailbox.address`` re-quotes them only when needed (RFC 5321 §4.1.2 says a quoted form is
equivalent to the unquoted one).  With SMTPUTF8 (RFC 6531 §3.3) non-ASCII characters are allowed in atoms,
quoted strings and domain labels.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AddressError", "Mailbox", "parse_path", "parse_params", "xtext_decode", "is_xtext",
           "quote_local"]

# RFC 5321 §4.5.3.1.1-3: size limits, in octets
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


class AddressError(ValueError):
    """The path does not follow RFC 5321 §4.1.2 (or RFC 6531 when SMTPUTF8 is on)."""


@dataclass(frozen=True)
class Mailbox:
    local: str      # unquoted local part (RFC 5321 §4.1.2 Local-part, quotes and escapes removed)
    domain: str     # lowercased ASCII domain, U-label, or "[address literal]"

    @property
    def address(self) -> str:
        """Canonical ``local@domain`` text, quoting the local part only when it must be quoted."""
        return f"{quote_local(self.local)}@{self.domain}"

    def __str__(self) -> str:
        return self.address


# RFC 5321 §4.1.2: Dot-string = Atom *("." Atom), Atom = 1*atext; with SMTPUTF8 (RFC 6531 §3.3) atext also
# takes any non-ASCII character.  One regex match per address (a generator per character cost 2% of the
# reactor thread in bench 1).
_ATEXT_CLASS = "A-Za-z0-9" + re.escape("!#$%&'*+-/=?^_`{|}~")
_DOT_STRING = re.compile(rf"[{_ATEXT_CLASS}]+(?:\.[{_ATEXT_CLASS}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT_CLASS}\u0080-\U0010ffff]+(?:\.[{_ATEXT_CLASS}\u0080-\U0010ffff]+)*")


def _is_dot_string(text: str, utf8: bool) -> bool:
    return (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).fullmatch(text) is not None


def quote_local(local: str) -> str:
    """Return ``local`` as a Dot-string when possible, else as a Quoted-string (RFC 5321 §4.1.2)."""
    if _is_dot_string(local, True):
        return local
    escaped = "".join("\\" + c if c in '"\\' else c for c in local)
    return f'"{escaped}"'


def _check_domain(domain: str, utf8: bool) -> str:
    """Validate an RFC 5321 Domain or address-literal and return it in canonical form."""
    if len(domain.encode("utf-8")) > MAX_DOMAIN or not domain:
        raise AddressError("bad domain length")
    if domain.startswith("["):
        # RFC 5321 §4.1.3: only IPv4 and IPv6 literals are accepted (General-address-literal is not)
        if not domain.endswith("]"):
            raise AddressError("bad address literal")
        inner = domain[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            raise AddressError("bad address literal") from None
    for label in domain.split("."):
        # sub-domain = Let-dig [Ldh-str]; U-labels allowed under SMTPUTF8 (RFC 6531 §3.3)
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            raise AddressError("bad domain label")
        if not all(c in _LDH or (utf8 and ord(c) > 127) for c in label):
            raise AddressError("bad character in domain")
    return domain.lower()


def _parse_quoted(text: str, utf8: bool) -> str:
    """Decode an RFC 5321 Quoted-string (with its quotes) into its content."""
    out: list[str] = []
    i = 1
    while i < len(text) - 1:
        ch = text[i]
        if ch == "\\":
            # quoted-pairSMTP = %d92 %d32-126
            if i + 1 >= len(text) - 1:
                raise AddressError("bad quoted pair")
            nxt = text[i + 1]
            if not (32 <= ord(nxt) <= 126):
                raise AddressError("bad quoted pair")
            out.append(nxt)
            i += 2
            continue
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126 (and UTF8-non-ascii under RFC 6531)
        code = ord(ch)
        if not (32 <= code <= 126 and ch not in '"\\') and not (utf8 and code > 127):
            raise AddressError("bad character in quoted string")
        out.append(ch)
        i += 1
    return "".join(out)


def _parse_mailbox(text: str, utf8: bool) -> Mailbox:
    if text.startswith('"'):
        # find the closing quote, honouring backslash escapes
        i, end = 1, -1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                end = i
                break
            i += 1
        if end < 0 or end + 1 >= len(text) or text[end + 1] != "@":
            raise AddressError("bad quoted local part")
        local = _parse_quoted(text[:end + 1], utf8)
        domain = text[end + 2:]
    else:
        local, sep, domain = text.rpartition("@")
        if not sep or not _is_dot_string(local, utf8):
            raise AddressError("bad local part")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError("local part too long")
    return Mailbox(local, _check_domain(domain, utf8))


def _find_close(text: str) -> int:
    """Index of the '>' that closes the path opened at text[0], skipping quoted strings."""
    quoted = False
    i = 1
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ">":
            return i
        i += 1
    return -1


def parse_path(text: str, *, allow_null: bool, utf8: bool, postmaster_domain: str | None = None
               ) -> tuple[Mailbox | None, str]:
    """Parse ``<path>`` at the start of ``text``; return (mailbox or None for ``<>``, rest after '>').

    ``allow_null`` admits the null reverse-path ``<>`` (MAIL FROM only, RFC 5321 §4.5.5).  When
    ``postmaster_domain`` is given, the bare ``<Postmaster>`` recipient (RFC 5321 §4.1.1.3) is accepted and
    mapped to postmaster@that domain.
    """
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    close = _find_close(text)
    if close < 0:
        raise AddressError("missing >")
    inner, rest = text[1:close], text[close + 1:]
    if len(inner.encode("utf-8")) + 2 > MAX_PATH:
        raise AddressError("path too long")
    if rest and not rest.startswith(" "):
        raise AddressError("junk after path")
    if not utf8 and any(ord(c) > 127 for c in inner):
        raise AddressError("non-ASCII address without SMTPUTF8")
    if inner == "":
        if not allow_null:
            raise AddressError("null path not allowed here")
        return None, rest.lstrip(" ")
    if postmaster_domain is not None and inner.lower() == "postmaster":
        return Mailbox("postmaster", postmaster_domain), rest.lstrip(" ")
    if inner.startswith("@"):
        # RFC 5321 §4.1.2 A-d-l ":" Mailbox; the route is checked for syntax, then ignored (§C)
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("bad source route")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise AddressError("bad source route")
            _check_domain(hop[1:], utf8)
    return _parse_mailbox(inner, utf8), rest.lstrip(" ")


def parse_params(text: str) -> list[tuple[str, str | None]]:
    """Split ``KEY[=VALUE] KEY[=VALUE]`` (RFC 5321 §4.1.2 Mail-parameters) into (upper KEY, value)."""
    out: list[tuple[str, str | None]] = []
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        # esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if not key or not (key[0].isascii() and key[0].isalnum()) or \
                not all(c.isascii() and (c.isalnum() or c == "-") for c in key):
            raise AddressError("bad parameter keyword")
        if eq and (not value or any(ord(c) < 33 or c == "=" for c in value)):
            raise AddressError("bad parameter value")
        out.append((key.upper(), value if eq else None))
    return out


def is_xtext(text: str) -> bool:
    """RFC 3461 §4: xtext = *( xchar / hexchar ), xchar is '!'..'~' except '+' and '=';
    and what it encodes is printable US-ASCII (graphic characters and space; RFC 3461 §4.2 for ORCPT,
    §4.4 for ENVID, RFC 4954 §5 AUTH= carries an addr-spec), so a decoded value can never carry CR, LF or
    other controls into a DSN or trace field (header injection)."""
    try:
        decoded = xtext_decode(text)
    except ValueError:
        return False
    return all(32 <= ord(c) <= 126 for c in decoded)


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes); raise ValueError when malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "+":
            hexpart = text[i + 1:i + 3]
            if len(hexpart) != 2 or any(c not in "0123456789ABCDEF" for c in hexpart):
                raise ValueError("bad xtext escape")
            out.append(chr(int(hexpart, 16)))
            i += 3
            continue
        if not (33 <= ord(ch) <= 126) or ch == "=":
            raise ValueError("bad xtext character")
        out.append(ch)
        i += 1
    return "".join(out)
