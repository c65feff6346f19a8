"""A minimal reader of IMAP response data (RFC 3501 §9: lists, NIL, numbers, quoted
strings, literals), used to check that serialised ENVELOPE/BODYSTRUCTURE are well-formed."""

from __future__ import annotations


class Malformed(ValueError):
    pass


def read(data: bytes) -> object:
    """Parse one value; the whole input must be consumed."""
    value, pos = _value(data, 0)
    if pos != len(data):
        raise Malformed(f"trailing data at {pos}")
    return value


def _value(d: bytes, i: int) -> tuple[object, int]:
    if i >= len(d):
        raise Malformed("unexpected end")
    c = d[i : i + 1]
    if c == b"(":
        items: list[object] = []
        i += 1
        while True:
            if i >= len(d):
                raise Malformed("unterminated list")
            if d[i : i + 1] == b")":
                return items, i + 1
            if items and d[i : i + 1] == b" ":
                i += 1
            v, i = _value(d, i)
            items.append(v)
    if c == b'"':
        out = bytearray()
        i += 1
        while True:
            if i >= len(d):
                raise Malformed("unterminated string")
            ch = d[i]
            if ch == 0x22:
                return bytes(out), i + 1
            if ch == 0x5C:
                i += 1
                if i >= len(d) or d[i] not in b'"\\':
                    raise Malformed("bad escape")
            elif ch in b"\r\n" or ch >= 0x80:
                raise Malformed("bad char in quoted string")
            out.append(d[i])
            i += 1
    if c == b"{":
        close = d.find(b"}\r\n", i)
        if close < 0:
            raise Malformed("bad literal")
        n = int(d[i + 1 : close])
        start = close + 3
        if start + n > len(d):
            raise Malformed("short literal")
        return d[start : start + n], start + n
    if d.startswith(b"NIL", i):
        return None, i + 3
    j = i
    while j < len(d) and d[j : j + 1].isdigit():
        j += 1
    if j == i:
        raise Malformed(f"unexpected {c!r} at {i}")
    return int(d[i:j]), j
