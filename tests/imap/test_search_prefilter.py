"""The SEARCH header prefilter never rules out a message that the full (MIME-decoding) match accepts."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mailsuite.imap.message import Message
from mailsuite.imap.search import SearchContext, decode_keys, header_may_match, matches, needle_runs
from mailsuite.store.mailbox import MessageInfo

INFO = MessageInfo(1, "base", frozenset(), frozenset(), 1, 100, 0.0, False, "cur", "base:2,", "/nonexistent")


def full_match(header: bytes, name: str, needle: str) -> bool:
    """The match without the prefilter (the key as the parser gives it, runs=None)."""
    msg = Message(lambda: io.BytesIO(header), len(header), lambda: header)
    ctx = SearchContext(1, INFO, False, 1, 1, lambda: msg)
    return matches(("HEADER", name, needle, None), ctx)


def search(header: bytes, name: str, needle: str) -> bool:
    msg = Message(lambda: io.BytesIO(header), len(header), lambda: header)
    ctx = SearchContext(1, INFO, False, 1, 1, lambda: msg)
    return matches(decode_keys(("HEADER", name, needle.encode()), "UTF-8"), ctx)


@pytest.mark.parametrize("header, name, needle", [
    (b"Subject: Hello\r\n there\r\n\r\n", "SUBJECT", "hello there"),                 # folded
    (b"Subject: =?utf-8?q?Caf=C3=A9_menu?=\r\n\r\n", "SUBJECT", "cafe"),             # encoded-word (NFKD)
    (b"Subject: =?utf-8?b?U3RyYcOfZQ==?=\r\n\r\n", "SUBJECT", "strasse"),             # "Straße" folds to ss
    (b'From: "Smith, John" <js@example.org>\r\n\r\n', "FROM", "smith, john <js@"),   # quotes dropped
    (b'From: "Sm\\ith" <js@example.org>\r\n\r\n', "FROM", "smith"),                  # quoted-pair
    (b"From: js@example.org (John Smith)\r\n\r\n", "FROM", "js@example.org"),       # comment
    (b"To: undisclosed-recipients:;\r\n\r\n", "TO", "undisclosed"),                 # group
    (b"To: nobody\r\n\r\n", "TO", "missing_domain"),                                # filled-in address
    (b"Subject: \xe2\x84\xaaelvin\r\n\r\n", "SUBJECT", "kelvin"),                     # raw UTF-8 KELVIN SIGN
    (b"X-Thing: ABC\r\n\r\n", "X-THING", "abc"),
    (b"Received: from x (y)\r\nSUBJECT \t: one\r\n\ttwo\r\nX: three\r\n\r\n", "SUBJECT", "two"),
    (b"X: a\r\nSubject: first\r\nSubject: second", "SUBJECT", "second"),      # no blank line at the end
    (b"Subject: a\rb\r\n\r\n", "SUBJECT", "ab"),                                # bare CR dropped by unfolding
])
def test_prefilter_keeps_matches(header, name, needle):
    assert full_match(header, name, needle)
    assert search(header, name, needle)


def test_prefilter_rules_out_without_parsing(monkeypatch):
    from mailsuite.imap import mimeview

    header = b"From: Alice <alice@example.org>\r\nSubject: quarterly report\r\n\r\n"
    assert not header_may_match(header, "SUBJECT", needle_runs("invoice"))
    assert header_may_match(header, "SUBJECT", needle_runs("report"))
    assert not header_may_match(header, "TO", needle_runs("alice"))  # no such field
    monkeypatch.setattr(mimeview.mime, "parse_message", lambda data: pytest.fail("parsed"))
    assert not search(header, "SUBJECT", "invoice")
    assert not search(header, "FROM", "bob")


_ALPHABET = st.sampled_from([b"a", b"B", b"c", b" ", b"\t", b"\r\n ", b'"', b"\\", b"(", b")", b"<", b">",
                             b"@", b",", b":", b";", b".", b"=?", b"?=", b"=?utf-8?q?", b"=?utf-8?b?",
                             b"\xc3\x9f", b"\xe2\x84\xaa", b"_", b"=41", b"\x00", b"ss", b"k"])
_NEEDLE = st.text(alphabet=st.sampled_from(list("aBc sSk<@>.,_:\"ß\u212a=")), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["SUBJECT", "FROM", "TO", "X-A"]),
       value=st.lists(_ALPHABET, max_size=25).map(b"".join), needle=_NEEDLE)
def test_prefilter_never_drops_a_match(name, value, needle):
    header = name.encode() + b": " + value + b"\r\nX-Other: c\r\n\r\n"
    runs = needle_runs(needle)
    if full_match(header, name, needle) and runs is not None:
        assert header_may_match(header, name, runs, name in ("FROM", "TO"))
    assert search(header, name, needle) == full_match(header, name, needle)


_LINE = st.tuples(st.sampled_from([b"Subject", b"subject \t", b" Subject", b"From", b"FROM", b"To", b"X-A", b"",
                                   b"\tcont", b"Subj"]),
                  st.sampled_from([b":", b"", b": ", b"\r:"]),
                  st.lists(_ALPHABET, max_size=8).map(b"".join),
                  st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["SUBJECT", "FROM", "TO", "X-A"]), lines=st.lists(_LINE, max_size=6), needle=_NEEDLE)
def test_prefilter_splits_fields_like_the_parser(name, lines, needle):
    header = b"".join(a + b + c + d for a, b, c, d in lines)
    runs = needle_runs(needle)
    if full_match(header, name, needle) and runs is not None:
        assert header_may_match(header, name, runs, name in ("FROM", "TO"))
