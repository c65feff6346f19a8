"""Dot-stuffing of outbound DATA: any chunking gives the same, correct stream (RFC 5321 §4.5.2)."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from mailsuite.relay.dotstuff import DotStuffer, stuff, unstuff


def _feed_split(data: bytes, cuts: list[int]) -> bytes:
    s = DotStuffer()
    out = b""
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        out += s.feed(data[last:cut])
        last = cut
    out += s.feed(data[last:])
    return out + s.finish()


def test_leading_dots_are_doubled():
    assert stuff(b".hidden\r\nok\r\n..two\r\n") == b"..hidden\r\nok\r\n...two\r\n.\r\n"


def test_lone_dot_line_cannot_end_the_message():
    assert stuff(b"a\r\n.\r\nb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"


def test_missing_final_crlf_is_added():
    assert stuff(b"no newline") == b"no newline\r\n.\r\n"
    assert stuff(b"") == b".\r\n"


def test_bare_lf_and_cr_become_crlf_and_still_stuff():
    assert stuff(b"a\n.b\r.c\r\n") == b"a\r\n..b\r\n..c\r\n.\r\n"


def test_dot_at_every_chunk_boundary():
    data = b"".join(b".line %d\r\n" % i for i in range(50))
    want = stuff(data)
    for size in range(1, 40):
        s = DotStuffer()
        out = b"".join(s.feed(data[i:i + size]) for i in range(0, len(data), size)) + s.finish()
        assert out == want, size


def test_crlf_split_between_chunks_then_dot():
    s = DotStuffer()
    out = s.feed(b"a\r") + s.feed(b"\n") + s.feed(b".") + s.feed(b"b\r\n") + s.finish()
    assert out == b"a\r\n..b\r\n.\r\n"


def test_cr_at_end_of_message():
    s = DotStuffer()
    assert s.feed(b"x\r") + s.finish() == b"x\r\n.\r\n"


_bytes = st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"."))
_crlf_text = st.lists(st.sampled_from([b".", b"..", b"a", b"\r\n", b".\r\n", b"x.y", b"\r", b"\n"]),
                      max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(_bytes, _crlf_text), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_any_split_gives_the_same_stream(data, cuts):
    assert _feed_split(data, cuts) == stuff(data)


@settings(max_examples=300, deadline=None)
@given(data=_crlf_text, cuts=st.lists(st.integers(0, 200), max_size=12))
def test_stream_is_well_formed_and_round_trips(data, cuts):
    out = _feed_split(data, cuts)
    assert out.endswith(b".\r\n")
    body = out[:-3]
    # only CRLF line ends, and the terminator appears nowhere earlier
    assert b"\r" not in body.replace(b"\r\n", b"")
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert b"\r\n.\r\n" not in b"\r\n" + body
    canonical = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if canonical and not canonical.endswith(b"\r\n"):
        canonical += b"\r\n"
    assert unstuff(out) == canonical
