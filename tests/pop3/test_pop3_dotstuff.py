"""The incremental dot-stuffer (RFC 1939 §3 multi-line responses, §7 TOP)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from mailsuite.pop3.dotstuff import TERMINATOR, DotStuffer, has_bare_lf, stuff


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


# -- the fast paths (issue 7): crlf=True skips the LF check, stuff() probes dots with memchr ----------------


def simple_stuff(data: bytes, line_start: bool) -> bytes:
    """The obvious definition: a '.' at the start of a line (after any LF, or first when line_start) doubled."""
    out = bytearray()
    at_start = line_start
    for byte in data:
        if at_start and byte == 0x2E:
            out.append(0x2E)
        out.append(byte)
        at_start = byte == 0x0A
    return bytes(out)


def run_crlf(message: bytes, cuts: list[int], body_lines: int | None = None) -> bytes:
    stuffer = DotStuffer(body_lines, crlf=True)
    out = []
    previous = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(message))) + [len(message)]:
        out.append(stuffer.feed(message[previous:cut]))
        previous = cut
    out.append(stuffer.finish())
    return b"".join(out)


def test_stuff_returns_the_chunk_itself_when_nothing_needs_a_dot() -> None:
    data = b"Subject: x\r\n\r\nno dot starts a line. Not even this one.\r\n" * 100
    assert stuff(data, True) is data
    assert stuff(b".first", False) == b".first" and stuff(b".first", True) == b"..first"


def test_stuff_dense_and_sparse_dots() -> None:
    prose = b"One. Two. Three. Four.\r\n" * 500                    # dense dots: the replace fallback
    assert stuff(prose, True) is prose
    assert stuff(prose + b".x\r\n", True) == prose + b"..x\r\n"
    sparse = (b"x" * 1000 + b".\r\n") * 50                         # sparse dots: memchr probes only
    assert stuff(sparse, True) is sparse
    assert stuff(sparse + b".", True) == sparse + b".."
    late = b"a." * 20 + b"\r\n" + b"b" * 5000 + b"\r\n.late\r\n"   # a line-start dot after many others
    assert stuff(late, False) == late.replace(b"\n.", b"\n..")


def test_crlf_first_line_dot_and_dot_after_chunk_boundaries() -> None:
    message = b".first\r\nline\r\n.second\r\n..third\r\n.\r\n"
    expected = b"..first\r\nline\r\n..second\r\n...third\r\n..\r\n" + TERMINATOR
    for a in range(len(message) + 1):
        for b in range(a, len(message) + 1):
            assert run_crlf(message, [a, b]) == expected, (a, b)


def test_crlf_cut_between_cr_lf_and_dot() -> None:
    stuffer = DotStuffer(crlf=True)
    assert stuffer.feed(b"a\r") == b"a\r"
    assert stuffer.feed(b"\n") == b"\n"
    assert stuffer.feed(b".b\r") == b"..b\r"
    assert stuffer.feed(b"\n.") == b"\n.."
    assert stuffer.feed(b"c") == b"c"
    assert stuffer.finish() == b"\r\n" + TERMINATOR          # no final CRLF: one is added


def test_crlf_message_without_final_crlf() -> None:
    assert run_crlf(b"A: 1\r\n\r\nlast", [5]) == b"A: 1\r\n\r\nlast\r\n" + TERMINATOR
    assert run_crlf(b"A: 1\r\n\r\nlast\r", [13]) == b"A: 1\r\n\r\nlast\r\r\n" + TERMINATOR
    assert run_crlf(b"", []) == TERMINATOR
    assert run_crlf(b".", []) == b"..\r\n" + TERMINATOR


def test_crlf_promise_broken_still_cannot_end_the_response_early() -> None:
    out = run_crlf(b"a\n.\nb\n", [2])
    assert out == b"a\n..\nb\n" + TERMINATOR and b"\r\n.\r\n" not in out[:-3]


def test_bare_lf_split_from_its_cr_by_a_chunk_boundary() -> None:
    """The LF check looks one byte back: CR | LF across a boundary is CRLF, LF | LF is not."""
    assert run(b"a\r\nb\n\nc\r\n", [2, 5, 6]) == b"a\r\nb\r\n\r\nc\r\n" + TERMINATOR
    assert has_bare_lf(b"\nx", after_cr=True) is False and has_bare_lf(b"\nx") is True
    assert has_bare_lf(b"\n\n", after_cr=True) is True and has_bare_lf(b"a\r\nb\r\n") is False


any_bytes = st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"a", b"xyz. ", b"\x00",
                                      b"\xff"]), max_size=80).map(b"".join)
crlf_messages = st.lists(st.sampled_from([b".", b"..", b"\r\n", b"\r\n.", b"a", b"b. c. ", b"\r", b" "]),
                         max_size=80).map(b"".join).map(lambda m: m.replace(b"\n", b"").replace(b"\r", b"\r\n"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | any_bytes, st.booleans())
def test_stuff_matches_simple_reference(data: bytes, line_start: bool) -> None:
    assert stuff(data, line_start) == simple_stuff(data, line_start)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | any_bytes, st.booleans())
def test_has_bare_lf_matches_reference(data: bytes, after_cr: bool) -> None:
    expected = re.search(rb"(?<!\r)\n", (b"\r" if after_cr else b"x") + data) is not None
    assert has_bare_lf(data, after_cr) is expected


@settings(max_examples=400, deadline=None)
@given(any_bytes, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_fast_stuffer_matches_simple_reference_for_any_bytes_and_chunking(message: bytes, cuts: list[int]) -> None:
    """The chunked stuffer == LF→CRLF of the whole message, a final CRLF, then the simple line-start rule."""
    normalised = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    if normalised and not normalised.endswith(b"\n"):
        normalised += b"\r\n"
    assert run(message, cuts) == simple_stuff(normalised, True) + TERMINATOR


@settings(max_examples=400, deadline=None)
@given(crlf_messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_crlf_stuffer_matches_the_normalising_one(message: bytes, cuts: list[int]) -> None:
    assert run_crlf(message, cuts) == run(message, cuts) == reference(message)


@settings(max_examples=300, deadline=None)
@given(crlf_messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12), st.integers(0, 5))
def test_crlf_top_matches_reference(message: bytes, cuts: list[int], lines: int) -> None:
    assert run_crlf(message, cuts, lines) == reference(message, lines)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.integers(0, 600), st.lists(st.integers(0, 5000), max_size=6), st.booleans())
def test_long_chunks_with_many_dots_match_reference(dots: int, gap: int, cuts: list[int], crlf: bool) -> None:
    """Chunks long enough to leave the memchr probing for the replace fallback, and back."""
    line = b"x" * gap + b"." * dots + b"\r\n"
    message = (line + b".dot\r\n" + line * 3) * 5
    got = (run_crlf if crlf else run)(message, cuts)
    assert got == reference(message)
