"""RFC 5321 §4.1.2 path parsing and RFC 3461 xtext."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsuite.smtp.address import (
    _ATEXT,
    AddressError,
    Mailbox,
    _is_dot_string,
    parse_params,
    parse_path,
    quote_local,
    xtext_decode,
)


@pytest.mark.parametrize("text, address, rest", [
    ("<alice@example.org>", "alice@example.org", ""),
    ("<Alice@EXAMPLE.org> SIZE=10", "Alice@example.org", "SIZE=10"),
    ('<"alice"@example.org>', "alice@example.org", ""),
    ('<"a b"@example.org>', '"a b"@example.org', ""),
    ('<"a\\"b"@example.org>', '"a\\"b"@example.org', ""),
    ('<"a>b"@example.org>', '"a>b"@example.org', ""),
    ("<@relay.test,@b.test:user@example.org>", "user@example.org", ""),
    ("<user@[192.0.2.1]>", "user@[192.0.2.1]", ""),
    ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", ""),
    ("<first.last+tag@sub.example.org>", "first.last+tag@sub.example.org", ""),
])
def test_valid_paths(text: str, address: str, rest: str) -> None:
    box, tail = parse_path(text, allow_null=False, utf8=False)
    assert box is not None and box.address == address and tail == rest


@pytest.mark.parametrize("text", [
    "alice@example.org", "<alice@example.org", "<alice>", "<@example.org>", "<a..b@example.org>",
    "<.a@example.org>", "<a@-example.org>", "<a@example.org.>", "<a@exa_mple.org>", "<a@[300.1.1.1]>",
    "<a@[foo:bar]>", '<"unterminated@example.org>', "<a@example.org>junk", "<@a.test user@example.org>",
    "<" + "a" * 65 + "@example.org>", "<a@" + "b" * 64 + ".org>", "<a@" + ("b" * 60 + ".") * 5 + "org>",
    "<j\u00f6rg@example.org>", '<"a\x01"@example.org>',
])
def test_invalid_paths(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text, allow_null=False, utf8=False)


def test_null_and_postmaster() -> None:
    assert parse_path("<>", allow_null=True, utf8=False) == (None, "")
    with pytest.raises(AddressError):
        parse_path("<>", allow_null=False, utf8=False)
    box, _ = parse_path("<postMaster>", allow_null=False, utf8=False, postmaster_domain="example.org")
    assert box == Mailbox("postmaster", "example.org")
    with pytest.raises(AddressError):
        parse_path("<postmaster>", allow_null=False, utf8=False)


def test_utf8_addresses() -> None:
    box, _ = parse_path("<jörg@bücher.example>", allow_null=False, utf8=True)
    assert box == Mailbox("jörg", "bücher.example")


def test_quote_local() -> None:
    assert quote_local("a.b") == "a.b"
    assert quote_local("a b") == '"a b"'
    assert quote_local('a"b\\') == '"a\\"b\\\\"'
    assert quote_local("a..b") == '"a..b"'


def test_params() -> None:
    assert parse_params("SIZE=10 body=8BITMIME SMTPUTF8") == [("SIZE", "10"), ("BODY", "8BITMIME"),
                                                             ("SMTPUTF8", None)]
    for bad in ("=1", "SI_ZE=1", "SIZE=", "A=b=c"):
        with pytest.raises(AddressError):
            parse_params(bad)


def test_xtext() -> None:
    assert xtext_decode("a+2Bb+3D") == "a+b="
    for bad in ("a+2", "a+zz", "a=b", "a b"):
        with pytest.raises(ValueError):
            xtext_decode(bad)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(sorted(_ATEXT) + list('."\\ ()<>@,;:[]\x00\x7f\r\n\té€😀')),
                    max_size=12),
       utf8=st.booleans())
def test_dot_string_regex_matches_the_rfc_definition(text: str, utf8: bool) -> None:
    """RFC 5321 §4.1.2 Dot-string (atext, and with SMTPUTF8 any non-ASCII character, RFC 6531 §3.3)."""
    atoms = text.split(".")
    expected = bool(text) and all(atom and all(c in _ATEXT or (utf8 and ord(c) > 127) for c in atom)
                                  for atom in atoms)
    assert _is_dot_string(text, utf8) == expected
