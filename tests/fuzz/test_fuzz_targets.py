"""Every fuzz target with a small fixed budget (the long runs: ``python -m tests.fuzz --seconds N``)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .targets import TARGETS

SEEDS = {
    "smtp_engine": [b"\x01\x00EHLO a\r\nSTARTTLS\r\nEHLO a\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n"
                    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
                    b"\x00\x01EHLO a\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@example.org>\r\nBDAT 3 LAST\r\nabc"],
    "smtp_address": [b"\x00<alice@example.org>", b"\x01<\"a b\"@[127.0.0.1]> SIZE=10 BODY=8BITMIME", b"\x00<>"],
    "pop3_engine": [b"\x03\x01USER alice\r\nPASS x\r\nLIST\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n"],
    "pop3_dotstuff": [b"\x01.a\r\n..b\n.\r\n", b"\x04Subject: x\r\n\r\n.1\r\n2\r\n.3\r\n"],
    "imap_parser": [b"\x10\x00a LOGIN {5}\r\nalice {3+}\r\npwd\r\nb FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n",
                    b"\x01\x00c SEARCH ((((OR FROM a TO b))))\r\nd APPEND INBOX (\\Seen) {100}\r\n"],
    "mime_parser": [b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n"
                    b"Subject: in\r\n\r\nbody\r\n--x--\r\n"],
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seed_inputs(name: str) -> None:
    for seed in SEEDS[name]:
        TARGETS[name](seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_inputs(name: str) -> None:
    target = TARGETS[name]
    # protocol-shaped input finds more than uniform bytes: mix seed fragments with noise
    fragments = st.sampled_from([s[i:i + 24] for seeds in SEEDS.values() for s in seeds for i in range(0, len(s), 12)])
    data = st.lists(fragments | st.binary(max_size=40), max_size=40).map(b"".join)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data)
    def run(data: bytes) -> None:
        target(data)

    run()


def test_entry_point_runs_for_a_fixed_time() -> None:
    from .__main__ import main
    assert main(["pop3_dotstuff", "--seconds", "1", "--engine", "hypothesis"]) == 0
