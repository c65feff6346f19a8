"""Hypothesis properties of the POP3 engine: packet splits do not change replies; random input never crashes."""

from __future__ import annotations

import base64

from hypothesis import given, settings, strategies as st

from mailsuite.pop3.engine import (Authenticate, Close, CommitDeletions, EngineConfig, OpenMaildrop, Pop3Engine,
                                   Reply, SendMessage, StartTLS)

from .pop3_sim import Sim

COMMANDS = [
    b"CAPA", b"STLS", b"USER alice@example.org", b"USER bob@example.org", b"PASS secret", b"PASS pa ss",
    b"PASS wrong", b"AUTH PLAIN", b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.org\0secret"),
    b"AUTH LOGIN", base64.b64encode(b"alice@example.org"), base64.b64encode(b"secret"), b"*", b"=",
    b"STAT", b"LIST", b"LIST 1", b"LIST 9", b"UIDL", b"UIDL 2", b"RETR 1", b"RETR 2", b"RETR 3", b"TOP 2 0",
    b"TOP 3 1", b"DELE 1", b"DELE 2", b"RSET", b"NOOP", b"UTF8", b"QUIT", b"BOGUS", b"", b"X" * 5000,
]
CONFIGS = [EngineConfig(), EngineConfig(tls_active=True), EngineConfig(plaintext_allowed=True),
           EngineConfig(tls_active=True, max_auth_failures=1)]

scripts = st.lists(st.sampled_from(COMMANDS), max_size=25).map(lambda cmds: b"".join(c + b"\r\n" for c in cmds))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def transcript(config: EngineConfig, chunks: list[bytes], in_use: bool) -> tuple[bytes, tuple[str, ...], set[str]]:
    sim = Sim(config=config, in_use=in_use)
    for chunk in chunks:
        sim.feed(chunk)
    return bytes(sim.out), sim.removed, sim.seen


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIGS), scripts, st.lists(st.integers(0, 20000), max_size=15), st.booleans())
def test_any_packet_split_gives_the_same_replies(config: EngineConfig, script: bytes, cuts: list[int],
                                                 in_use: bool) -> None:
    whole = transcript(config, [script], in_use)
    pieces = transcript(config, split(script, cuts), in_use)
    assert pieces == whole
    byte_by_byte = transcript(config, [script[i:i + 1] for i in range(min(len(script), 3000))] +
                              ([script[3000:]] if len(script) > 3000 else []), in_use)
    assert byte_by_byte == whole


def _check(events: list) -> None:
    for event in events:
        assert isinstance(event, (Reply, StartTLS, Close, Authenticate, OpenMaildrop, SendMessage, CommitDeletions))
        if isinstance(event, Reply):
            assert event.data.endswith(b"\r\n")
            assert event.data[:3] in (b"+OK", b"-ER") or event.data.startswith(b"+ ")


def _drive(engine: Pop3Engine, events: list, data: st.DataObject) -> None:
    """Answer actions with results drawn by hypothesis, checking every event list."""
    pending = list(events)
    while pending:
        _check(pending)
        event = pending.pop(0)
        if isinstance(event, Authenticate):
            pending += engine.auth_result(data.draw(st.sampled_from([None, event.user])))
        elif isinstance(event, OpenMaildrop):
            if data.draw(st.booleans()):
                from mailsuite.pop3.engine import DropEntry
                pending += engine.maildrop_opened([DropEntry(f"k{i}", i * 10, f"u{i}") for i in range(3)])
            else:
                pending += engine.maildrop_failed(data.draw(st.booleans()))
        elif isinstance(event, SendMessage):
            pending += engine.message_sent() if data.draw(st.booleans()) else engine.message_failed()
        elif isinstance(event, CommitDeletions):
            pending += engine.update_done(data.draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_random_bytes_never_crash(config: EngineConfig, chunks: list[bytes], data: st.DataObject) -> None:
    engine = Pop3Engine(config)
    _drive(engine, engine.greeting(), data)
    for chunk in chunks:
        _drive(engine, engine.receive_data(chunk), data)
    _drive(engine, engine.timeout(), data)
    assert engine.closed


tokens = st.sampled_from([b"USER", b"PASS", b"AUTH", b"PLAIN", b"LOGIN", b"RETR", b"TOP", b"LIST", b"UIDL",
                          b"DELE", b"STLS", b"CAPA", b"QUIT", b"RSET", b"1", b"0", b"-1", b"99999999999",
                          b" ", b"\r\n", b"\n", b"\r", b"=", b"*", b"AAAA", b"\x00", b"\xff", "é".encode()])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(tokens, max_size=60), st.data())
def test_random_command_soup_never_crashes(config: EngineConfig, parts: list[bytes], data: st.DataObject) -> None:
    engine = Pop3Engine(config)
    _drive(engine, engine.greeting(), data)
    _drive(engine, engine.receive_data(b"".join(parts)), data)
    if not engine.busy:
        _drive(engine, engine.receive_data(b"QUIT\r\n"), data)
