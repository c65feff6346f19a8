"""Modified UTF-7 (RFC 3501 §5.1.3) and mailbox/user name validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from .store_helpers import USER

from mailsuite.store import InvalidMailboxName, InvalidUser, MailboxNotFound
from mailsuite.store.names import (
    decode_mutf7,
    decode_name,
    encode_mutf7,
    folder_dirname,
    name_from_dirname,
    validate_name,
)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("Entwürfe", "Entw&APw-rfe"),
        # The example of RFC 3501 §5.1.3.
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("😀", "&2D3eAA-"),
        ("", ""),
    ],
)
def test_known_encodings(text: str, wire: str) -> None:
    assert encode_mutf7(text) == wire
    assert decode_mutf7(wire) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated shift
        "&U,BTFw",  # unterminated shift
        "&AGE-",  # encodes "a": printable ASCII must stand for itself
        "&U,BTFw-&ZeVnLIqe-",  # two adjacent shifts: not the canonical form
        "&U,BTFx-",  # non-zero padding bits
        "&2D3-",  # lone surrogate (3 bytes, odd)
        "&2D0-",  # lone high surrogate
        "&A-",  # bad base64 length
        "&!!-",  # not base64
        "a\x00b",
        "caf\u00e9",  # raw 8-bit is not modified UTF-7
        "tab\there",
    ],
)
def test_malformed_wire_rejected(wire: str) -> None:
    with pytest.raises(InvalidMailboxName):
        decode_mutf7(wire)


@given(st.text())
def test_round_trip_property(text: str) -> None:
    wire = encode_mutf7(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode_mutf7(wire) == text


@given(st.one_of(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
                 st.text(alphabet="&-AZaz09+,/ ", max_size=30), st.text(max_size=10)))
def test_decode_never_crashes(wire: str) -> None:
    try:
        text = decode_mutf7(wire)
    except InvalidMailboxName:
        return
    assert encode_mutf7(text) == wire


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a..b", ".hidden", "trailing.", "a/b", "../etc", "a\\b", "a\x00b", "a\tb", "bell\x07",
     "del\x7f", "c1\x85", "x" * 300, "\ud800"],
)
def test_invalid_names_rejected(name: str) -> None:
    with pytest.raises(InvalidMailboxName):
        validate_name(name)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("inbox", "INBOX"), ("InBoX", "INBOX"), ("inbox.Sub", "INBOX.Sub"), ("Work.Projects", "Work.Projects"),
     ("Entwürfe", "Entwürfe"), ("a&b", "a&b")],
)
def test_valid_names(name: str, canonical: str) -> None:
    assert validate_name(name) == canonical


def test_decode_name_validates_after_decoding() -> None:
    assert decode_name("Entw&APw-rfe") == "Entwürfe"
    with pytest.raises(InvalidMailboxName):
        decode_name("a&AC8-b")  # "/" hidden in base64 is not canonical
    with pytest.raises(InvalidMailboxName):
        decode_name("..&AOk-")  # decodes fine, but an empty component


def test_dirnames() -> None:
    assert folder_dirname("INBOX") == ""
    assert folder_dirname("Work.Projects") == ".Work.Projects"
    assert folder_dirname("Entwürfe") == ".Entw&APw-rfe"
    assert name_from_dirname(".Entw&APw-rfe") == "Entwürfe"
    for bad in (".", "..", ".INBOX", ".inbox.x", "Sent", ".a..b", ".&AGE-"):
        with pytest.raises(InvalidMailboxName):
            name_from_dirname(bad)


def test_store_rejects_bad_names(store) -> None:
    for bad in ("../escape", "a/b", "a..b", ".x", "x\x00"):
        with pytest.raises(InvalidMailboxName):
            store.mailbox(USER, bad)
        with pytest.raises(InvalidMailboxName):
            store.create_mailbox(USER, bad)
    for bad in ("wild*", "per%cent"):
        with pytest.raises(InvalidMailboxName):
            store.create_mailbox(USER, bad)
    with pytest.raises(MailboxNotFound):
        store.mailbox(USER, "Nope")
    # Nothing escaped the user's directory.
    assert sorted(p.name for p in store.root.iterdir()) == ["example.org"]


@pytest.mark.parametrize(
    "user",
    ["nodomain", "@example.org", "alice@", "../x@example.org", "alice@..", "a/b@example.org", "alice@ex/ample",
     "al\x00ice@example.org", ".alice@example.org", "alice@.example.org", "a@b@example.org"],
)
def test_invalid_users_rejected(store, user: str) -> None:
    with pytest.raises(InvalidUser):
        store.user_dir(user)


def test_user_dir(store) -> None:
    assert store.user_dir("Alice@Example.ORG") == store.root / "example.org" / "Alice"
