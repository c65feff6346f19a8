"""Hypothesis: parsing never raises on random or mutated input, every part stays inside
the message, sections are slices of it, and serialised structures are well-formed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsuite.mime import (
    BinaryError,
    MessagePart,
    address_search_text,
    binary,
    binary_size,
    body_text,
    bodystructure,
    envelope,
    find_part,
    header_values,
    parse_message,
    section_bytes,
    sent_date,
    text_search_text,
)
from mailsuite.mime.sections import SectionSpec

from .corpus import CORPUS
from .imap_reader import read
from .test_parser import NESTED

SEEDS = [NESTED]
if (CORPUS / "messages").is_dir():
    SEEDS += [p.read_bytes() for p in sorted((CORPUS / "messages").iterdir())]

# Bytes that matter to a MIME parser, to make random input reach interesting states.
ALPHABET = b"\r\n-:;=\"\\()<>@,. \t/abcXYZ\x00\xc3\xa9*?'"
FRAGMENTS = [
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b"--b\r\n",
    b"--b--\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"From: \"a\\\" b\" <x@y>, g: ;, (c)\r\n",
    b"=?utf-8?B?w6k=?=",
    b"; name*0*=utf-8''%41; name*1=b",
]

messy = st.lists(
    st.one_of(st.binary(max_size=40), st.sampled_from(FRAGMENTS), st.sampled_from([bytes([c]) for c in ALPHABET])),
    max_size=40,
).map(b"".join)


def _check_tree(part: MessagePart, size: int, depth: int = 0) -> int:
    assert 0 <= part.header_start <= part.header_end <= part.body_start <= part.body_end <= size
    # RFC 3501 §9: a multipart has >= 1 part, a message/rfc822 an envelope and a body.
    assert part.children or not part.is_multipart
    assert part.message is not None or (part.mtype.lower(), part.subtype.lower()) != (b"message", b"rfc822")
    count = 1
    for c in part.children:
        assert part.body_start <= c.header_start and c.body_end <= part.body_end
        count += _check_tree(c, size, depth + 1)
    if part.message is not None:
        m = part.message
        assert part.body_start == m.header_start and m.body_end <= part.body_end
        count += _check_tree(m, size, depth + 1)
    return count


def _paths(part: MessagePart, prefix: tuple[int, ...] = ()):
    if part.is_multipart:
        for i, c in enumerate(part.children, 1):
            yield prefix + (i,)
            yield from _paths(c.message or c, prefix + (i,))
    elif part.message is not None:
        yield from _paths(part.message, prefix)
    elif not prefix:
        yield (1,)


def _exercise(data: bytes) -> None:
    root = parse_message(data)
    _check_tree(root, len(data))
    read(envelope(root))
    read(bodystructure(root))
    read(bodystructure(root, extensible=False))
    header_values(root, "Subject")
    address_search_text(root, "From")
    body_text(root)
    text_search_text(root)
    sent_date(root)
    paths = list(_paths(root))[:30] + [(), (99,)]
    for path in paths:
        for text in ("", "MIME", "HEADER", "TEXT"):
            if text == "MIME" and not path:
                continue
            value = section_bytes(root, SectionSpec(path, text))
            assert value in data  # a slice, never re-encoded
        for neg in (False, True):
            spec = SectionSpec(path, "HEADER.FIELDS.NOT" if neg else "HEADER.FIELDS", ("From", "Content-Type"))
            assert len(section_bytes(root, spec)) <= len(data) + 2 * len(data.splitlines()) + 2
        part = find_part(root, path) if path else root
        if part is not None:
            try:
                assert binary_size(part) == len(binary(part))
            except BinaryError:
                pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy)
def test_mime_shaped_noise_never_raises(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 40), st.sampled_from(FRAGMENTS + [b""])), min_size=1, max_size=6),
)
def test_mutated_messages_never_raise(seed: bytes, edits: list[tuple[float, int, bytes]]) -> None:
    data = bytearray(seed)
    for where, cut, insert in edits:
        i = int(where * len(data))
        data[i : i + cut] = insert
    _exercise(bytes(data))
