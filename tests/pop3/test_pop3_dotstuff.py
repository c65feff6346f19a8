"""The incremental dot-stuffer (RFC 1939 §3 multi-line responses, §7 TOP)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from mailsuite.pop3.dotstuff import TERMINATOR, DotStuffer


def reference(message: bytes, body_lines: int | None = None) -> bytes:
    """The whole-message definition the chunked stuffer must match, written line by line."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    lines = data.split(b"\r\n")
    tail = lines.pop()                    # text after the last CRLF (b"" when the message ends with CRLF)
    # a CR-less remainder with a lone CR inside stays as is; it becomes the last line closed by CRLF
    full = [line + b"\r\n" for line in lines] + ([tail + b"\r\n"] if tail else [])
    if body_lines is not None:
        kept: list[bytes] = []
        in_header = True
        sent = 0
        for line in full:
            if not in_header and sent >= body_lines:
                break
            kept.append(line)
            if in_header:
                in_header = line != b"\r\n"
            else:
                sent += 1
        full = kept
    return b"".join(b"." + line if line.startswith(b".") else line for line in full) + TERMINATOR


def run(message: bytes, cuts: list[int], body_lines: int | None = None) -> bytes:
    stuffer = DotStuffer(body_lines)
    out = []
    previous = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(message))) + [len(message)]:
        out.append(stuffer.feed(message[previous:cut]))
        previous = cut
    out.append(stuffer.finish())
    return b"".join(out)


def test_first_line_dot() -> None:
    assert run(b".\r\nbody\r\n", []) == b"..\r\nbody\r\n.\r\n"


def test_dot_line_split_between_chunks() -> None:
    message = b"Subject: x\r\n\r\nline\r\n.hidden\r\n.\r\nend\r\n"
    expected = b"Subject: x\r\n\r\nline\r\n..hidden\r\n..\r\nend\r\n.\r\n"
    for cut in range(len(message) + 1):
        assert run(message, [cut]) == expected, cut


def test_chunk_ends_with_lf_next_starts_with_dot() -> None:
    stuffer = DotStuffer()
    assert stuffer.feed(b"a\r\n") == b"a\r\n"
    assert stuffer.feed(b".b\r\n") == b"..b\r\n"
    assert stuffer.finish() == TERMINATOR


def test_crlf_split_is_not_a_bare_lf() -> None:
    stuffer = DotStuffer()
    assert stuffer.feed(b"a\r") + stuffer.feed(b"\n.b") + stuffer.finish() == b"a\r\n..b\r\n.\r\n"


def test_bare_lf_becomes_crlf() -> None:
    assert run(b"a\n.b\nc", []) == b"a\r\n..b\r\nc\r\n.\r\n"


def test_missing_final_crlf_added() -> None:
    assert run(b"x: y\r\n\r\nno newline", [3]) == b"x: y\r\n\r\nno newline\r\n.\r\n"


def test_empty_message() -> None:
    assert run(b"", []) == TERMINATOR


def test_top_zero_lines() -> None:
    message = b"A: 1\r\nB: 2\r\n\r\nbody1\r\nbody2\r\n"
    assert run(message, [], 0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"


def test_top_some_lines_and_done() -> None:
    stuffer = DotStuffer(1)
    out = stuffer.feed(b"A: 1\r\n\r\n.one\r\ntwo\r\n")
    assert stuffer.done
    assert stuffer.feed(b"more\r\n") == b""
    assert out + stuffer.finish() == b"A: 1\r\n\r\n..one\r\n.\r\n"


def test_top_more_lines_than_message() -> None:
    assert run(b"A: 1\r\n\r\nb", [], 10) == b"A: 1\r\n\r\nb\r\n.\r\n"


def test_top_blank_line_split_across_chunks() -> None:
    message = b"A: 1\r\n\r\nb1\r\nb2\r\n"
    for cut in range(len(message) + 1):
        assert run(message, [cut], 1) == b"A: 1\r\n\r\nb1\r\n.\r\n", cut


def test_negative_lines_rejected() -> None:
    with pytest.raises(ValueError):
        DotStuffer(-1)


def test_feed_after_finish_is_an_error() -> None:
    stuffer = DotStuffer()
    stuffer.finish()
    with pytest.raises(RuntimeError):
        stuffer.feed(b"x")


messages = st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"Header: v", b" ", b"\x00"]),
                    max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_split_matches_reference(message: bytes, cuts: list[int]) -> None:
    assert run(message, cuts) == reference(message)


@settings(max_examples=400, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.integers(0, 5))
def test_top_any_split_matches_reference(message: bytes, cuts: list[int], lines: int) -> None:
    assert run(message, cuts, lines) == reference(message, lines)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_output_has_no_early_terminator(message: bytes) -> None:
    """Unstuffing the output (as a client does) gives back the CRLF-normalised message."""
    out = run(message, [])
    lines = out.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    body = lines[:-2]
    assert b"." not in body               # no line of the body is a lone "." (it would end the response)
    unstuffed = [line[1:] if line.startswith(b".") else line for line in body]
    normalised = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert b"".join(line + b"\r\n" for line in unstuffed) == normalised


def test_large_message_in_chunks_is_fast_enough_and_exact() -> None:
    line = b"x" * 70 + b"\r\n"
    message = (b".dot\r\n" + line * 50) * 2000            # ~14 MB
    stuffer = DotStuffer()
    out = bytearray()
    for i in range(0, len(message), 65536):
        out += stuffer.feed(message[i:i + 65536])
    out += stuffer.finish()
    assert bytes(out) == message.replace(b".dot", b"..dot") + TERMINATOR
