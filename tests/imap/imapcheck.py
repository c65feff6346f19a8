"""A strict reader of IMAP server responses for tests: splits a byte stream into responses and parses
each into nested Python values (RFC 3501 §9 response syntax: atoms, numbers, quoted strings, literals,
parenthesised lists, [response codes]).  Raises AssertionError on anything malformed."""

from __future__ import annotations

import re

_ATOM = re.compile(rb"\\?(?:\*|[^\x00-\x20\x7f(){%*\"\\\]\[]+)")


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def value(self, depth: int = 0):
        assert depth < 100, "nesting too deep"
        c = self._peek()
        assert c is not None, "unexpected end"
        if c == 0x28:  # (
            self.pos += 1
            items = []
            while self._peek() != 0x29:
                # RFC 3501 §9 body-type-mpart: "1*body SP media-subtype" (nested bodies abut)
                if items and not (isinstance(items[-1], list) and self._peek() == 0x28):
                    assert self.data[self.pos] == 0x20, f"expected space at {self.pos}: {self.data[self.pos:self.pos+40]!r}"
                    self.pos += 1
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if c == 0x22:  # "
            self.pos += 1
            out = bytearray()
            while True:
                ch = self.data[self.pos]
                assert ch not in (0x0D, 0x0A), "CR/LF in quoted string"
                self.pos += 1
                if ch == 0x22:
                    return bytes(out)
                if ch == 0x5C:
                    ch = self.data[self.pos]
                    assert ch in (0x22, 0x5C), "bad escape"
                    self.pos += 1
                out.append(ch)
        if c in (0x7B, 0x7E):  # {n} or ~{n}
            m = re.compile(rb"~?\{(\d+)\}\r\n").match(self.data, self.pos)
            assert m, f"bad literal at {self.data[self.pos:self.pos + 20]!r}"
            n = int(m.group(1))
            start = m.end()
            assert start + n <= len(self.data), "literal runs past the end"
            self.pos = start + n
            return self.data[start : start + n]
        if c == 0x5B:  # [ ... ] response code or section: keep raw
            end = self.data.index(b"]", self.pos)
            raw = self.data[self.pos : end + 1]
            self.pos = end + 1
            return raw
        m = _ATOM.match(self.data, self.pos)
        assert m, f"bad token at {self.data[self.pos:self.pos + 30]!r}"
        self.pos = m.end()
        tok = m.group(0)
        # BODY[...]<n> style items: atom followed by a section and optional partial
        if self._peek() == 0x5B:
            end = self.data.index(b"]", self.pos)
            tok += self.data[self.pos : end + 1]
            self.pos = end + 1
            m2 = re.compile(rb"<\d+>").match(self.data, self.pos)
            if m2:
                tok += m2.group(0)
                self.pos = m2.end()
        return tok

    def response(self) -> list:
        """One response line (with its literals) as a list of values."""
        items = []
        if self.data.startswith(b"+", self.pos):
            end = self.data.index(b"\r\n", self.pos)
            line = self.data[self.pos : end]
            self.pos = end + 2
            return [b"+", line[2:]]
        while True:
            items.append(self.value())
            if self.data.startswith(b"\r\n", self.pos):
                self.pos += 2
                return items
            assert self._peek() == 0x20, f"expected space, got {self.data[self.pos:self.pos + 30]!r}"
            self.pos += 1
            # Text after a status word is free-form (resp-text): take the rest of the line.
            if len(items) >= 2 and items[1] in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH") and \
                    not self.data.startswith(b"[", self.pos):
                end = self.data.index(b"\r\n", self.pos)
                items.append(self.data[self.pos : end])
                self.pos = end + 2
                return items


def responses(data: bytes) -> list[list]:
    r = Reader(data)
    out = []
    while r.pos < len(data):
        out.append(r.response())
    return out


def tagged(data: bytes, tag: bytes) -> list:
    """The tagged completion of ``tag`` (asserts there is exactly one)."""
    found = [r for r in responses(data) if r[0] == tag]
    assert len(found) == 1, (tag, data)
    return found[0]


def untagged(data: bytes, kind: bytes) -> list[list]:
    """Untagged responses whose keyword (2nd token, or 3rd after a number) is ``kind``."""
    out = []
    for r in responses(data):
        if r[0] != b"*":
            continue
        if r[1] == kind or (len(r) > 2 and r[2] == kind):
            out.append(r)
    return out


def fetch_items(resp: list) -> dict:
    """``* n FETCH (k v k v)`` -> {k: v}."""
    assert resp[0] == b"*" and resp[2] == b"FETCH", resp
    lst = resp[3]
    assert len(lst) % 2 == 0, lst
    return {lst[i]: lst[i + 1] for i in range(0, len(lst), 2)}
