"""Unit tests of mailsuite.mime on small hand-made messages (no corpus needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from mailsuite.mime import (
    BinaryError,
    Human,
    address_search_text,
    binary,
    binary_literal8,
    binary_size,
    body_text,
    bodystructure,
    contains,
    decode_header_value,
    decode_search_key,
    envelope,
    find_part,
    header_values,
    parse_addresses,
    parse_message,
    parse_section_spec,
    section,
    sent_date,
    serialise,
    UnknownCharset,
)
from mailsuite.mime.rfc822 import parse_content_type
from mailsuite.mime.transfer import decode_base64, decode_qp

from .imap_reader import read

NESTED = (
    b"From: Alice <alice@example.net>\r\n"
    b"Subject: outer\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9 soft=\r\nbreak\r\n"
    b"--b1\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: Bob <bob@example.org>\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--b1--\r\n"
    b"epilogue\r\n"
)


def test_offsets_are_slices_of_the_original() -> None:
    root = parse_message(NESTED)
    assert root.data is NESTED
    assert root.header.endswith(b"\r\n\r\n") and root.header.startswith(b"From:")
    one, two = root.children
    assert one.header == b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert one.body == b"caf=C3=A9 soft=\r\nbreak"  # the CRLF before "--b1" belongs to the boundary
    assert two.message is not None
    assert two.body == b"From: Bob <bob@example.org>\r\nSubject: inner\r\n\r\ninner body"
    assert two.message.body == b"inner body"
    assert root.body.endswith(b"epilogue\r\n")


def test_sections() -> None:
    root = parse_message(NESTED)
    s = lambda spec: section(NESTED, root, spec)  # noqa: E731
    assert s("") == NESTED
    assert s("2.HEADER") == b"From: Bob <bob@example.org>\r\nSubject: inner\r\n\r\n"
    assert s("2.TEXT") == b"inner body"
    assert s("2.1") == b"inner body"  # a non-multipart message is its own part 1
    assert s("2.1.MIME") == s("2.HEADER")
    assert s("2.MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert s("1.HEADER") == b""  # HEADER needs a message/rfc822 part (RFC 3501 §6.4.5)
    assert s("3") == b"" and s("2.2") == b"" and s("1.2") == b""
    assert s("1.1") == s("1")  # Dovecot: a leaf is its own part 1 (RFC 3501 silent)
    assert s("HEADER.FIELDS (subject FROM)") == b"From: Alice <alice@example.net>\r\nSubject: outer\r\n\r\n"
    assert s("HEADER.FIELDS.NOT (Content-Type From)") == b"Subject: outer\r\n\r\n"
    assert s("2.HEADER.FIELDS (Subject)") == b"Subject: inner\r\n\r\n"


def test_single_part_numbering() -> None:
    msg = b"Subject: x\r\n\r\nbody\r\n"
    root = parse_message(msg)
    assert section(msg, root, "1") == b"body\r\n"
    assert section(msg, root, "1.MIME") == b"Subject: x\r\n\r\n"
    assert section(msg, root, "TEXT") == b"body\r\n"
    assert find_part(root, (1, 1)) is None


@pytest.mark.parametrize(
    "spec,parsed",
    [
        ("", ((), "", ())),
        ("1.2.MIME", ((1, 2), "MIME", ())),
        ("header.fields (From \"To\")", ((), "HEADER.FIELDS", ("From", "To"))),
        ("3.HEADER.FIELDS.NOT (X-A)", ((3,), "HEADER.FIELDS.NOT", ("X-A",))),
        ("4.TEXT", ((4,), "TEXT", ())),
    ],
)
def test_parse_section_spec(spec: str, parsed: tuple) -> None:
    s = parse_section_spec(spec)
    assert (s.part, s.text, s.fields) == parsed


@pytest.mark.parametrize("bad", ["MIME", "0", "1.", "1..2", "FOO", "HEADER.FIELDS", "HEADER.FIELDS ()", "TEXT (x)", "1MIME"])
def test_parse_section_spec_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_section_spec(bad)


def test_bodystructure_and_envelope() -> None:
    root = parse_message(NESTED)
    bs = bodystructure(root)
    assert bs == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 22 1 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 57 (NIL "inner" (("Bob" NIL "bob" "example.org")) '
        b'(("Bob" NIL "bob" "example.org")) (("Bob" NIL "bob" "example.org")) NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL) '
        b'"mixed" ("boundary" "b1") NIL NIL NIL)'
    )
    read(bs)
    assert bodystructure(root, extensible=False).endswith(b' 3) "mixed")')
    assert envelope(root) == (
        b'(NIL "outer" (("Alice" NIL "alice" "example.net")) (("Alice" NIL "alice" "example.net")) '
        b'(("Alice" NIL "alice" "example.net")) NIL NIL NIL NIL NIL)'
    )


def test_missing_boundary_gets_one_empty_part() -> None:
    msg = b"Content-Type: multipart/mixed\r\n\r\nno parts here\r\n"
    root = parse_message(msg)
    assert bodystructure(root, False) == b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
    assert section(msg, root, "TEXT") == b"no parts here\r\n"
    assert section(msg, root, "1") == b""


def test_same_boundary_nested_and_prefix_match() -> None:
    msg = (
        b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
        b"--X\r\nContent-Type: multipart/alternative; boundary=X\r\n\r\n"
        b"--X\r\n\r\na\r\n--X--\r\n"
        b"--X trailing text\r\n\r\nb\r\n--X--\r\n"
    )
    root = parse_message(msg)
    assert len(root.children) == 2 and root.children[0].is_multipart
    assert root.children[1].body == b"b"


def test_invalid_content_type_is_text_plain() -> None:
    root = parse_message(b"Content-Type: text\r\n\r\nx\r\n")
    assert bodystructure(root) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)'
    assert parse_content_type(b"text") is None


def test_rfc2231_parameters_joined_not_decoded() -> None:
    _, _, params = parse_content_type(
        b"text/plain; z*1*=%20b; charset=us-ascii; z*0*=utf-8''a; t*0=x; t*1=y; name*=utf-8''%C3%A9"
    )
    assert params == [
        (b"charset", b"us-ascii"),
        (b"name*", b"utf-8''%C3%A9"),
        (b"t", b"xy"),
        (b"z*", b"utf-8''a%20b"),
    ]


def test_addresses() -> None:
    got = parse_addresses(
        b'"Doe, J" <j@x.org> (c), g: a@b.c, <d@e.f>;, bare (Name Here), loc, <@r1,@r2:u@h>, Q <>'
    )
    assert [(a.name, a.route, a.mailbox, a.host) for a in got] == [
        (b"Doe, J", None, b"j", b"x.org"),
        (None, None, b"g", None),
        (None, None, b"a", b"b.c"),
        (None, None, b"d", b"e.f"),
        (None, None, None, None),
        (b"Name Here", None, b"bare", b"MISSING_DOMAIN"),
        (None, None, b"loc", b"MISSING_DOMAIN"),
        (None, b"@r1,@r2", b"u", b"h"),
        (b"Q", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
    ]


def test_string_quoting() -> None:
    assert serialise([b'a"b', None, 7]) == b'("a\\"b" NIL 7)'
    assert serialise(b'""""""') == b'{6}\r\n""""""'
    assert serialise("é".encode()) == b"{2}\r\n\xc3\xa9"
    assert serialise(Human(b"plain text")) == b'"plain text"'
    assert serialise(Human(b"a\tb  c ")) == b"{5}\r\na b c"
    assert serialise(Human(b'say "hi"')) == b'{8}\r\nsay "hi"'
    assert serialise(Human(b"  ")) == b'""'
    # CR/LF are dropped (not turned into blanks): a folded value is always a literal.
    assert serialise(Human(b"a\r\n b")) == b"{3}\r\na b"
    assert serialise(Human(b"a\r\nb")) == b"{2}\r\nab"
    assert serialise(Human(b"x\x00")) == b"{2}\r\nx\x80"
    folded = parse_message(b"Subject: one\r\n two\r\n\r\n")
    assert envelope(folded).startswith(b'(NIL {7}\r\none two NIL')


def test_transfer_decoding() -> None:
    assert decode_qp(b"a=3Db=\r\nc  \r\nd=ZZ") == b"a=bc\r\nd=ZZ"
    assert decode_base64(b"aGVs\r\nbG8=\r\n") == b"hello"
    for bad in (b"aGVsbG8", b"aGV.bG8=", b"XXX"):
        with pytest.raises(BinaryError) as exc:
            decode_base64(bad)
        assert exc.value.code == "PARSE"


def test_binary() -> None:
    root = parse_message(NESTED)
    one = root.children[0]
    assert binary(one) == "café softbreak\r\n".encode()[:-2] and binary_literal8(one)
    assert binary_size(one) == len("café softbreak".encode())
    converted = binary(root)
    assert b"Content-Transfer-Encoding: binary\r\n\r\ncaf\xc3\xa9 softbreak\r\n--b1" in converted
    assert b"quoted-printable" not in converted
    odd = parse_message(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n")
    with pytest.raises(BinaryError) as exc:
        binary_size(odd)
    assert exc.value.code == "UNKNOWN-CTE"
    assert binary(parse_message(b"Subject: x\r\n\r\nraw\r\n")) == b"raw\r\n"


def test_search_helpers() -> None:
    assert decode_header_value(b"=?UTF-8?Q?a?= =?UTF-8?Q?b?= c") == "ab c"
    # one UTF-8 character split across two encoded-words
    assert decode_header_value(b"=?utf-8?B?w4==?= =?utf-8?B?pA==?=") in ("ä", "\ufffd\ufffd")
    assert decode_header_value(b"=?utf-8?Q?=C3?= =?utf-8?Q?=A4?=") == "ä"
    root = parse_message(NESTED)
    assert header_values(root, "SUBJECT") == ["outer"]
    assert contains(body_text(root), "CAFÉ SOFTBREAK")
    assert contains(body_text(root), "inner body")
    assert "Alice <alice@example.net>" == address_search_text(root, "from")
    assert decode_search_key("café".encode("latin-1"), "ISO-8859-1") == "café"
    with pytest.raises(UnknownCharset):
        decode_search_key(b"x", "X-UNKNOWN")


def test_sent_date() -> None:
    assert sent_date(parse_message(b"Date: Fri, 20 Apr 2001 23:35:02 -0400\r\n\r\n")) == dt.date(2001, 4, 20)
    assert sent_date(parse_message(b"Date: Tue, 06 Jun 2017 27:39:33 +0600\r\n\r\n")) is None
    assert sent_date(parse_message(b"Subject: no date\r\n\r\n")) is None


def test_lf_only_and_headerless_input() -> None:
    msg = b"Subject: lf\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\nA\n--q--\n"
    root = parse_message(msg)
    assert root.children[0].body == b"A"
    assert section(msg, root, "HEADER") == b"Subject: lf\nContent-Type: multipart/mixed; boundary=q\n\n"
    headerless = parse_message(b"just text, no header at all")
    assert headerless.body == b"" and headerless.header == b"just text, no header at all"


def test_deep_nesting_is_bounded() -> None:
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(3000))
    deep += b"\r\nleaf\r\n"
    root = parse_message(deep)
    read(bodystructure(root))
    read(envelope(root))
    chain = b"Content-Type: message/rfc822\r\n\r\n" * 3000 + b"Subject: end\r\n\r\nx"
    root = parse_message(chain)
    read(bodystructure(root))
    assert section(chain, root, "") == chain


def test_many_parts_are_bounded() -> None:
    msg = b"Content-Type: multipart/mixed; boundary=z\r\n\r\n" + b"--z\r\n\r\nx\r\n" * 20000 + b"--z--\r\n"
    root = parse_message(msg)
    assert len(root.children) < 10001
    read(bodystructure(root))


def test_binary_message_is_the_whole_message() -> None:
    from mailsuite.mime import binary_message

    msg = b"Subject: b\r\nContent-Transfer-Encoding: base64\r\nX-A: 1\r\n\r\naGk=\r\n"
    root = parse_message(msg)
    assert binary(root) == b"hi"  # BINARY[1]
    assert binary_message(root) == b"Subject: b\r\nX-A: 1\r\nContent-Transfer-Encoding: binary\r\n\r\nhi"
    nested = parse_message(NESTED)
    assert binary_message(nested).startswith(b"From: Alice") and binary_message(nested).endswith(binary(nested))
