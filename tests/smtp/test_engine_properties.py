"""Hypothesis: packet splits never change the replies; random bytes never crash or stall the engine."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsuite.smtp.engine import MAX_COMMAND_LINE, EngineConfig

from .smtp_sim import Session, b64, plain

CONFIG = EngineConfig(hostname="mail.example.org", postmaster_domain="example.org", max_message_size=4000,
                      max_line_length=200, max_recipients=3, max_received_headers=2, max_errors=12)

# STARTTLS is left out on purpose: after it the rest of the packet is discarded *by design* (RFC 3207 §4.2),
# so its outcome depends on the split; tests/smtp/test_engine_auth_tls.py covers it.
LINES = [
    b"EHLO client.example.com\r\n", b"HELO c\r\n", b"MAIL FROM:<a@example.com>\r\n", b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME\r\n", b"RCPT TO:<alice@example.org>\r\n",
    b"RCPT TO:<bob@example.org> NOTIFY=NEVER\r\n", b"RCPT TO:<nobody@example.org>\r\n",
    b"RCPT TO:<x@elsewhere.test>\r\n", b"RCPT TO:<a%b@example.org>\r\n", b"DATA\r\n", b"RSET\r\n",
    b"NOOP\r\n", b"VRFY alice\r\n", b"HELP\r\n", b"FOO\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n",
    ("AUTH PLAIN " + plain("alice@example.org", "alice-pw") + "\r\n").encode(),
    (b64("alice@example.org") + "\r\n").encode(), (b64("alice-pw") + "\r\n").encode(), b"*\r\n",
    b"BDAT 5\r\nab\r\nc", b"BDAT 3 LAST\r\n.\r\n", b"BDAT 0 LAST\r\n",
    b"Subject: x\r\n\r\nbody\r\n", b"..dot\r\n", b".\r\n", b"bare\nlf\r\n", b"\r\n.\n", b"x" * 250 + b"\r\n",
    b"Received: a\r\n", b"a\0b\r\n", b"QUIT\r\n", b"\r\n", b"\r", b"\n",
]


BODY_LINES = [b"Subject: x\r\n", b"\r\n", b"..dot\r\n", b"x" * 250 + b"\r\n", b"bare\nlf\r\n", b"cr\rx\r\n",
              b"\r\n.\n", b".\r", b"Received: a\r\n", b"a\0b\r\n", b"QUIT\r\n", b"line\r\n"]
AUTH = ("AUTH PLAIN " + plain("alice@example.org", "alice-pw") + "\r\n").encode()


@st.composite
def transaction(draw: st.DrawFn) -> bytes:
    """A mostly valid transaction (so DATA/BDAT content is really reached), with random content."""
    rcpts = draw(st.lists(st.sampled_from(LINES[5:10]), min_size=1, max_size=4))
    body = b"".join(draw(st.lists(st.sampled_from(BODY_LINES), max_size=8)))
    if draw(st.booleans()):
        content = b"DATA\r\n" + body + b".\r\n"
    else:
        half = len(body) // 2
        content = b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (half, body[:half], len(body) - half, body[half:])
    return b"MAIL FROM:<alice@example.org>\r\n" + b"".join(rcpts) + content


SCRIPTS = st.lists(st.sampled_from(LINES) | transaction(), max_size=12).map(
    lambda parts: b"EHLO c\r\n" + AUTH + b"".join(parts))


def run(mode: str, tls: bool, pieces: list[bytes], hold: bool = False) -> tuple[bytes, list[bytes], bool]:
    s = Session(mode=mode, tls=tls, config=CONFIG, hold=hold)
    for piece in pieces:
        s.send(piece)
        s.release()
    return bytes(s.out), [d.data for d in s.delivered], s.closed


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=SCRIPTS,
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
       mode=st.sampled_from(["mx", "submission", "submissions"]),
       hold=st.booleans())
def test_any_split_gives_same_replies(data: bytes, cuts: list[int], mode: str, hold: bool) -> None:
    tls = mode != "mx"
    whole = run(mode, tls, [data])
    assert run(mode, tls, split(data, cuts), hold=hold) == whole


@settings(max_examples=60, deadline=None)
@given(data=SCRIPTS, mode=st.sampled_from(["mx", "submission"]))
def test_byte_by_byte_gives_same_replies(data: bytes, mode: str) -> None:
    whole = run(mode, True, [data])
    assert run(mode, True, [data[i:i + 1] for i in range(len(data))]) == whole


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300) | st.sampled_from(LINES), max_size=40),
       mode=st.sampled_from(["mx", "submission", "submissions"]))
def test_random_bytes_never_crash_or_stall(chunks: list[bytes], mode: str) -> None:
    s = Session(mode=mode, tls=mode == "submissions", config=CONFIG)
    for chunk in chunks:
        s.send(chunk)
        engine = s.engine
        if engine.closed:
            break
        assert engine.pending is None
        # everything that could be processed was: bounded buffer, and no complete command line left waiting
        assert len(engine._buf) <= MAX_COMMAND_LINE + 3
        if not engine.in_data:
            assert b"\n" not in engine._buf
    # whatever state it is in, the session can always be ended
    events = s.engine.timeout()
    assert s.engine.closed and (events == [] or events[-1].__class__.__name__ == "Close")


def test_huge_data_stream_is_bounded() -> None:
    s = Session(config=CONFIG)
    s.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
    for _ in range(200):
        s.send(b"y" * 10_000)
        assert len(s.engine._buf) <= 1
    assert s.send(b"\r\n.\r\n") == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
