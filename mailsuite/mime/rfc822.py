"""RFC 5322 / RFC 2045 structured-field tokenising: addresses, MIME parameters, tokens.

All functions take the unfolded field value as bytes and never raise.  The behaviour
follows RFC 5322 §3.2-§3.4 and RFC 2045 §5.1, with Dovecot's recovery choices where the
RFCs are silent (documented at each place).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Address",
    "parse_addresses",
    "parse_content_type",
    "parse_token_and_params",
    "parse_language",
    "MISSING_MAILBOX",
    "MISSING_DOMAIN",
]

# Dovecot's placeholders for an address without local part / domain (RFC silent: RFC 3501
# reserves a NIL host for group syntax, so a domain-less address needs a non-NIL host).
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

_WSP = frozenset(b" \t\r\n")
# RFC 5322 §3.2.3 atext; 8-bit bytes count as atext (RFC 6532 UTF-8 headers).
_SPECIALS = frozenset(b'()<>[]:;@\\,."')


_ATEXT_RE = re.compile(rb'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+')
_ATEXT_DOT_RE = re.compile(rb'[^\x00-\x20\x7f()<>\[\]:;@\\,"]+')
_TOKEN_RE = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')


def _is_atext(c: int) -> bool:
    return c > 0x20 and c != 0x7F and c not in _SPECIALS


class _Scanner:
    """Cursor over a field value implementing RFC 5322 CFWS, atoms and quoted strings."""

    __slots__ = ("s", "i", "n", "last_comment")

    def __init__(self, s: bytes) -> None:
        self.s = s
        self.i = 0
        self.n = len(s)
        self.last_comment: bytes | None = None

    def peek(self) -> int:
        return self.s[self.i] if self.i < self.n else -1

    def skip_cfws(self) -> None:
        """Skip white space and comments (RFC 5322 §3.2.2); remember the last comment."""
        s, n = self.s, self.n
        while self.i < n:
            c = s[self.i]
            if c in _WSP:
                self.i += 1
            elif c == 0x28:  # "("
                self.last_comment = self._comment()
            else:
                break

    def _comment(self) -> bytes:
        s, n = self.s, self.n
        depth = 0
        out = bytearray()
        while self.i < n:
            c = s[self.i]
            self.i += 1
            if c == 0x5C and self.i < n:  # quoted-pair
                out.append(s[self.i])
                self.i += 1
                continue
            if c == 0x28:
                depth += 1
                if depth == 1:
                    continue
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    return bytes(out)
            if c not in (0x0D, 0x0A):
                out.append(c)
        return bytes(out)

    def quoted_string(self) -> bytes:
        """Parse a quoted string at the cursor (RFC 5322 §3.2.4); unescape, drop CR/LF."""
        s, n = self.s, self.n
        start = self.i + 1
        close = s.find(b'"', start)
        if close >= 0 and s.find(b"\\", start, close) < 0:
            self.i = close + 1
            v = s[start:close]
            return v.replace(b"\r", b"").replace(b"\n", b"") if b"\n" in v or b"\r" in v else v
        self.i = start
        out = bytearray()
        while self.i < n:
            c = s[self.i]
            self.i += 1
            if c == 0x22:
                break
            if c == 0x5C and self.i < n:
                out.append(s[self.i])
                self.i += 1
            elif c not in (0x0D, 0x0A):
                out.append(c)
        return bytes(out)

    def match(self, regex: re.Pattern[bytes]) -> bytes:
        m = regex.match(self.s, self.i)
        if m is None:
            return b""
        self.i = m.end()
        return m.group()


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address (RFC 3501 §7.4.2): name, route (adl), mailbox, host.

    A group start is ``(None, None, b"group name", None)``, a group end all ``None``.
    """

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    host: bytes | None


def _phrase(sc: _Scanner) -> list[bytes]:
    """RFC 5322 §3.2.5 phrase (and obs-phrase with dots): the list of words."""
    words: list[bytes] = []
    while True:
        sc.skip_cfws()
        c = sc.peek()
        if c == 0x22:
            words.append(sc.quoted_string())
        elif c >= 0 and (_is_atext(c) or c == 0x2E):
            words.append(sc.match(_ATEXT_DOT_RE))
        else:
            return words


def _dot_atom(sc: _Scanner) -> bytes:
    sc.skip_cfws()
    parts = []
    while True:
        if sc.peek() == 0x22:
            parts.append(sc.quoted_string())
        else:
            atom = sc.match(_ATEXT_RE)
            if not atom:
                break
            parts.append(atom)
        sc.skip_cfws()
        if sc.peek() != 0x2E:
            break
        sc.i += 1
        sc.skip_cfws()
    return b".".join(parts)


def _domain(sc: _Scanner) -> bytes:
    sc.skip_cfws()
    if sc.peek() == 0x5B:  # domain-literal, kept with its brackets (RFC 5322 §3.4.1)
        end = sc.s.find(b"]", sc.i)
        end = sc.n if end < 0 else end + 1
        lit = sc.s[sc.i : end]
        sc.i = end
        sc.skip_cfws()
        return bytes(b for b in lit if b not in _WSP)
    d = _dot_atom(sc)
    return d


def _addr_spec(sc: _Scanner) -> tuple[bytes, bytes | None]:
    local = _dot_atom(sc)
    domain = None
    if sc.peek() == 0x40:
        sc.i += 1
        domain = _domain(sc)
    return local, domain


def _angle_addr(sc: _Scanner, name: bytes | None) -> Address:
    sc.i += 1  # "<"
    sc.skip_cfws()
    route = None
    if sc.peek() == 0x40:  # obs-route (RFC 5322 §4.4): "@a,@b:"
        start = sc.i
        colon = sc.s.find(b":", sc.i)
        close = sc.s.find(b">", sc.i)
        if colon >= 0 and (close < 0 or colon < close):
            route = bytes(b for b in sc.s[start:colon] if b not in _WSP)
            sc.i = colon + 1
    local, domain = _addr_spec(sc)
    sc.skip_cfws()
    close = sc.s.find(b">", sc.i)
    sc.i = sc.n if close < 0 else close + 1
    return Address(name, route, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)


def _skip_to_comma(sc: _Scanner, stop: bytes = b",") -> None:
    while sc.i < sc.n:
        c = sc.s[sc.i]
        if c == 0x22:
            sc.quoted_string()
        elif c == 0x28:
            sc._comment()
        elif c in stop:
            return
        else:
            sc.i += 1


def _mailbox(sc: _Scanner, out: list[Address]) -> None:
    """One mailbox (RFC 5322 §3.4): name-addr or addr-spec."""
    start = sc.i
    words = _phrase(sc)
    if sc.peek() == 0x3C:  # "<": name-addr
        name = b" ".join(words) if words else None
        out.append(_angle_addr(sc, name or None))
        sc.skip_cfws()
        return
    sc.i = start
    sc.last_comment = None
    local, domain = _addr_spec(sc)
    sc.skip_cfws()
    # Dovecot choice (RFC silent): a comment after a bare addr-spec is its display name.
    name = sc.last_comment if sc.last_comment else None
    if not local and domain is None:
        # Nothing usable: skip the garbage up to the next separator.
        _skip_to_comma(sc, b",;")
        return
    out.append(Address(name, None, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))


def parse_addresses(value: bytes) -> list[Address]:
    """Parse an address-list field (RFC 5322 §3.4) into ENVELOPE addresses, groups included."""
    sc = _Scanner(value)
    out: list[Address] = []
    while sc.i < sc.n:
        sc.skip_cfws()
        if sc.i >= sc.n:
            break
        c = sc.peek()
        if c in (0x2C, 0x3B):  # stray "," or ";"
            sc.i += 1
            continue
        start = sc.i
        words = _phrase(sc)
        if sc.peek() == 0x3A and words:  # group (RFC 5322 §3.4): display-name ":" [list] ";"
            sc.i += 1
            out.append(Address(None, None, b" ".join(words), None))
            while sc.i < sc.n:
                sc.skip_cfws()
                c = sc.peek()
                if c == 0x3B:
                    sc.i += 1
                    break
                if c == 0x2C:
                    sc.i += 1
                    continue
                if c < 0:
                    break
                before = sc.i
                _mailbox(sc, out)
                sc.skip_cfws()
                if sc.i == before:
                    sc.i += 1
            out.append(Address(None, None, None, None))
        else:
            sc.i = start
            before = sc.i
            _mailbox(sc, out)
            if sc.i == before:
                sc.i += 1
        sc.skip_cfws()
        if sc.peek() not in (0x2C, -1):
            _skip_to_comma(sc)
    return out


def _param_value(sc: _Scanner) -> bytes | None:
    sc.skip_cfws()
    if sc.peek() == 0x22:
        return sc.quoted_string()
    v = sc.match(_TOKEN_RE)
    return v if v else None


def _params(sc: _Scanner) -> list[tuple[bytes, bytes]]:
    """RFC 2045 §5.1 "; attribute=value" list; broken parameters are skipped."""
    raw: list[tuple[bytes, bytes]] = []
    while sc.i < sc.n:
        sc.skip_cfws()
        if sc.peek() != 0x3B:
            if sc.i >= sc.n:
                break
            _skip_to_comma(sc, b";")
            continue
        sc.i += 1
        sc.skip_cfws()
        name = sc.match(_TOKEN_RE)
        sc.skip_cfws()
        if not name or sc.peek() != 0x3D:
            _skip_to_comma(sc, b";")
            continue
        sc.i += 1
        value = _param_value(sc)
        if value is None:
            value = b""
        raw.append((name, value))
    return _rfc2231_join(raw)


def _rfc2231_join(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Join RFC 2231 §3 continuations (``name*0*=``, ``name*1=``...) without decoding them.

    Dovecot choice (RFC 3501 asks for no RFC 2231 decoding): plain parameters keep their
    order and come first; the RFC 2231 ones follow, sorted by name, each joined into one
    ``name*`` (extended) or ``name`` value; a sequence with missing indexes is kept as is.
    """
    plain: list[tuple[bytes, bytes]] = []
    ext: list[tuple[bytes, int, bool, bytes, int]] = []
    for order, (name, value) in enumerate(raw):
        star = name.find(b"*")
        if star < 0:
            plain.append((name, value))
            continue
        rest = name[star + 1 :]
        idx = 0
        if not rest:  # "name*=": one extended segment
            extended = True
        else:
            j = 0
            while j < len(rest) and 0x30 <= rest[j] <= 0x39:
                idx = idx * 10 + rest[j] - 0x30
                j += 1
            extended = rest[j:] == b"*"
            if rest[j:] not in (b"", b"*"):
                plain.append((name, value))
                continue
        ext.append((name[:star], idx, extended, value, order))
    if not ext:
        return plain
    ext.sort(key=lambda e: (e[0].lower(), e[1]))
    out = list(plain)
    i = 0
    while i < len(ext):
        j = i
        key = ext[i][0].lower()
        valid = True
        have_ext = False
        nxt = 0
        while j < len(ext) and ext[j][0].lower() == key:
            if ext[j][1] != nxt:
                valid = False
            have_ext = have_ext or ext[j][2]
            nxt += 1
            j += 1
        if not valid:
            for k in range(i, j):
                out.append((ext[k][0] + (b"*" if ext[k][2] else b""), ext[k][3]))
        else:
            value = b"".join(ext[k][3] for k in range(i, j))
            if have_ext and not ext[i][2]:
                value = b"''" + value
            out.append((ext[i][0] + (b"*" if have_ext else b""), value))
        i = j
    return out


def parse_content_type(value: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """``type/subtype; params`` (RFC 2045 §5.1); None when the type is unusable.

    Case is kept as written (Dovecot reports it so); callers compare case-insensitively.
    """
    sc = _Scanner(value)
    sc.skip_cfws()
    mtype = sc.match(_TOKEN_RE)
    sc.skip_cfws()
    if not mtype or sc.peek() != 0x2F:
        return None
    sc.i += 1
    sc.skip_cfws()
    subtype = sc.match(_TOKEN_RE)
    if not subtype:
        return None
    return mtype, subtype, _params(sc)


def parse_token_and_params(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A MIME token and its parameters (Content-Disposition, RFC 2183 §2)."""
    sc = _Scanner(value)
    sc.skip_cfws()
    token = sc.match(_TOKEN_RE)
    return token, _params(sc)


def parse_token(value: bytes) -> bytes:
    """The first MIME token of a field (Content-Transfer-Encoding, RFC 2045 §6.1)."""
    sc = _Scanner(value)
    sc.skip_cfws()
    return sc.match(_TOKEN_RE)


def parse_language(value: bytes) -> list[bytes]:
    """Content-Language (RFC 3282 §2): comma-separated language tags."""
    sc = _Scanner(value)
    out = []
    while sc.i < sc.n:
        sc.skip_cfws()
        tag = sc.match(_ATEXT_RE)
        if tag:
            out.append(tag)
        sc.skip_cfws()
        if sc.peek() == 0x2C:
            sc.i += 1
        elif sc.i < sc.n and not tag:
            sc.i += 1
    return out
