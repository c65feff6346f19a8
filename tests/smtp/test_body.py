"""MessageBody's line checks against a plain reference, over any chunking (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsuite.smtp.body import MessageBody, _may_hold_long_line, _only_crlf

_LINES = st.lists(st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"x").replace(b"\n", b"y").replace(b"\0", b"z")), max_size=30)


def _reference_longest(content: bytes) -> int:
    return max(map(len, content.split(b"\r\n")))


@settings(max_examples=300, deadline=None)
@given(lines=_LINES, limit=st.integers(min_value=1, max_value=45), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_line_too_long_matches_the_reference(lines: list[bytes], limit: int, cuts: list[int]) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    body = MessageBody(0, limit)
    points = sorted({c % (len(content) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(content)]):
        body.feed(content[a:b])
    too_long = bool(content) and _reference_longest(content) > limit
    assert body.line_too_long == too_long
    assert body.finish() == (b"" if too_long else content)       # a failed body keeps nothing


@settings(max_examples=300, deadline=None)
@given(lines=_LINES, limit=st.integers(min_value=1, max_value=45))
def test_window_check_never_misses_a_long_line(lines: list[bytes], limit: int) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    if content and _reference_longest(content) > limit:
        assert _may_hold_long_line(content, 0, len(content), limit)


def test_a_long_line_in_the_middle_of_a_big_chunk() -> None:
    short = b"a" * 60 + b"\r\n"
    body = MessageBody(0, 998)
    body.feed(short * 100 + b"b" * 999 + b"\r\n" + short * 100)
    assert body.line_too_long
    ok = MessageBody(0, 998)
    ok.feed(short * 100 + b"b" * 998 + b"\r\n" + short * 100)
    assert not ok.line_too_long


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b".", b"\n\r", b"xy"]), max_size=30))
def test_only_crlf_matches_counting(parts: list[bytes]) -> None:
    data = b"".join(parts)
    crlf = data.count(b"\r\n")
    assert _only_crlf(data) == (data.count(b"\r") == crlf and data.count(b"\n") == crlf)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\0", b"z")), st.lists(st.integers(0, 200), max_size=5))
def test_bare_line_ends_become_crlf_over_any_chunking(raw: bytes, cuts: list[int]) -> None:
    """RFC 5321 §2.3.8: bare CR and LF are stored as CRLF, wherever the chunks are cut (NUL aside: it fails
    the message)."""
    body = MessageBody(0, 10_000)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(raw)]):
        body.feed(raw[a:b])
    out = body.finish()
    expected = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    unpaired = raw.replace(b"\r\n", b"")
    assert (out, body.bare_line_ends) == (expected, b"\r" in unpaired or b"\n" in unpaired)
