"""DATA and BDAT at the byte level: end of data, dot-unstuffing, bare CR/LF, limits (RFC 5321, 3030, 1870)."""

from __future__ import annotations

import pytest

from mailsuite.smtp.engine import EngineConfig

from .smtp_sim import Session


def in_data(config: EngineConfig | None = None) -> Session:
    s = Session(config=config) if config else Session()
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<sender@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    assert s.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>\r\n"
    return s


def test_simple_message() -> None:
    s = in_data()
    assert s.send(b"Subject: hi\r\n\r\nHello\r\n.\r\n") == b"250 2.0.0 Ok: delivered\r\n"
    assert s.delivered[0].data == b"Subject: hi\r\n\r\nHello\r\n"
    env = s.delivered[0].envelope
    assert env.mail_from == "sender@example.com" and [r.address for r in env.recipients] == ["alice@example.org"]
    assert env.helo == "c" and env.esmtp and env.peer_ip == "192.0.2.10" and not env.tls


def test_empty_message() -> None:
    s = in_data()
    assert s.send(b".\r\n") == b"250 2.0.0 Ok: delivered\r\n"
    assert s.delivered[0].data == b""


def test_dot_unstuffing() -> None:
    s = in_data()
    s.send(b"a\r\n..\r\n..b\r\n...\r\n.c\r\n.\r\n")
    assert s.delivered[0].data == b"a\r\n.\r\n.b\r\n..\r\nc\r\n"


@pytest.mark.parametrize("trick", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r\r\n", b"\r.\r\n"])
def test_only_crlf_dot_crlf_ends_data(trick: bytes) -> None:
    """SMTP smuggling: none of these sequences may end the message or run the commands after them."""
    s = in_data()
    reply = s.send(b"Subject: x\r\n\r\nbody" + trick + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<bob@example.org>\r\n")
    assert reply == b""
    assert s.send(b"tail\r\n.\r\n") == b"250 2.0.0 Ok: delivered\r\n"
    data = s.delivered[0].data
    assert b"MAIL FROM:<evil@example.com>\r\n" in data
    # bare CR / LF were normalised to CRLF: every line end in the stored copy is CRLF
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    assert len(s.delivered) == 1


def test_bare_lf_normalised() -> None:
    s = in_data()
    s.send(b"Subject: x\n\nline1\nline2\rline3\r\n.\r\n")
    assert s.delivered[0].data == b"Subject: x\r\n\r\nline1\r\nline2\r\nline3\r\n"


def test_eight_bit_accepted_without_body_param() -> None:
    s = in_data()
    assert s.send("Subject: é\r\n\r\nGrüße\r\n.\r\n".encode()) == b"250 2.0.0 Ok: delivered\r\n"


def test_nul_refused_after_real_end() -> None:
    s = in_data()
    assert s.send(b"Subject: x\r\n\r\na\0b\r\n") == b""
    assert s.send(b".\r\n") == b"554 5.6.0 Message contains NUL characters\r\n"
    assert s.delivered == []
    assert s.cmd("NOOP") == "250 2.0.0 Ok\r\n"


def test_long_line_rejected_only_at_real_end() -> None:
    s = in_data(EngineConfig(max_line_length=100))
    long = b"x" * 150
    # the long line contains what looks like commands; they must stay message content
    assert s.send(b"Subject: x\r\n\r\n" + long + b"\r\nQUIT\r\nMAIL FROM:<a@b.c>\r\n") == b""
    assert not s.closed
    assert s.send(b".\r\n") == b"500 5.5.6 Message line too long\r\n"
    assert s.delivered == []
    assert s.cmd("NOOP") == "250 2.0.0 Ok\r\n"


def test_line_length_limit_counts_without_crlf() -> None:
    s = in_data(EngineConfig(max_line_length=12))
    assert s.send(b"x" * 10 + b"\r\n.\r\n") == b"250 2.0.0 Ok: delivered\r\n"
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    s.cmd("DATA")
    assert s.send(b"x" * 11 + b"\r\n.\r\n") == b"500 5.5.6 Message line too long\r\n"


def test_size_limit_after_data() -> None:
    s = in_data(EngineConfig(max_message_size=1000))
    assert s.send(b"x" * 900 + b"\r\n" + b"y" * 200 + b"\r\n") == b""
    assert s.send(b".\r\n") == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert s.delivered == []


def test_size_declared_at_mail() -> None:
    s = Session(config=EngineConfig(max_message_size=1000))
    s.cmd("EHLO c")
    assert "SIZE 1000" in s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=1001").startswith("552 5.3.4")
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=1000") == "250 2.1.0 Ok\r\n"


def test_too_many_recipients() -> None:
    s = Session(config=EngineConfig(max_recipients=2))
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    assert s.cmd("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok\r\n"
    assert s.cmd("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok\r\n"
    assert s.cmd("RCPT TO:<sales@example.org>") == "452 4.5.3 Too many recipients\r\n"
    s.send(b"DATA\r\nx\r\n.\r\n")
    assert len(s.delivered[0].envelope.recipients) == 2


def test_received_loop_detection() -> None:
    s = in_data(EngineConfig(max_received_headers=3))
    headers = b"".join(b"Received: from h%d by x; Sat, 1 Jan 2000 00:00:00 +0000\r\n" % i for i in range(4))
    assert s.send(headers + b"\r\nbody\r\nReceived: in body\r\n.\r\n") == \
        b"554 5.4.6 Too many Received headers: mail loop\r\n"
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    s.cmd("DATA")
    three = headers.split(b"\r\n", 1)[1]
    assert s.send(three + b"\r\nbody\r\nReceived: in body\r\nreceived: again\r\n.\r\n") == \
        b"250 2.0.0 Ok: delivered\r\n"


def test_data_arguments_and_after_transaction_reset() -> None:
    s = in_data()
    s.send(b"x\r\n.\r\n")
    assert s.cmd("RCPT TO:<alice@example.org>") == "503 5.5.1 Need MAIL command\r\n"
    s.cmd("MAIL FROM:<a@example.com>")
    assert s.cmd("DATA now") == "501 5.5.4 Syntax: DATA\r\n"


def test_delivery_failure_reply_passed_through() -> None:
    s = in_data()
    s.hold = True
    s.send(b"x\r\n.\r\n")
    action = s.held.pop()
    from mailsuite.smtp.events import Reply
    s._handle(s.engine.action_result(Reply(451, "4.3.0", "Disk full")))
    assert bytes(s.out).endswith(b"451 4.3.0 Disk full\r\n")
    assert action.data == b"x\r\n"
    assert s.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok\r\n"


# ----------------------------------------------------------------------- BDAT (RFC 3030)

def bdat_ready() -> Session:
    s = Session()
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    return s


def test_bdat_chunks() -> None:
    s = bdat_ready()
    assert s.send(b"BDAT 14\r\nSubject: x\r\n\r\n") == b"250 2.0.0 14 octets received\r\n"
    assert s.send(b"BDAT 8 LAST\r\n.\r\nhello") == b"250 2.0.0 Ok: delivered\r\n"
    # no dot-unstuffing in BDAT; a final line without CRLF gets one
    assert s.delivered[0].data == b"Subject: x\r\n\r\n.\r\nhello\r\n"


def test_bdat_pipelined_in_one_packet() -> None:
    s = bdat_ready()
    reply = s.send(b"BDAT 5\r\nab\r\ncBDAT 0 LAST\r\nQUIT\r\n")
    assert reply == (b"250 2.0.0 5 octets received\r\n250 2.0.0 Ok: delivered\r\n"
                     b"221 2.0.0 mail.example.org closing connection\r\n")
    assert s.delivered[0].data == b"ab\r\nc\r\n"


def test_bdat_cr_lf_split_across_chunks_is_one_line_end() -> None:
    s = bdat_ready()
    s.send(b"BDAT 2\r\na\r")
    s.send(b"BDAT 2 LAST\r\n\nb")
    assert s.delivered[0].data == b"a\r\nb\r\n"


def test_bdat_errors_still_consume_chunk() -> None:
    s = Session()
    s.cmd("EHLO c")
    assert s.send(b"BDAT 12\r\nRSET\r\nQUIT\r\n") == b"503 5.5.1 Need MAIL command\r\n"
    assert not s.closed
    s.cmd("MAIL FROM:<a@example.com>")
    assert s.send(b"BDAT 4 LAST\r\nNOOP") == b"554 5.5.1 No valid recipients\r\n"
    assert s.cmd("BDAT x") == "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"


def test_bdat_and_data_do_not_mix() -> None:
    s = bdat_ready()
    s.send(b"BDAT 3\r\nabc")
    assert s.cmd("DATA") == "503 5.5.1 DATA not allowed after BDAT\r\n"
    assert s.cmd("RCPT TO:<bob@example.org>") == "503 5.5.1 RCPT not allowed after BDAT\r\n"


def test_bdat_size_limit() -> None:
    s = Session(config=EngineConfig(max_message_size=10))
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    assert s.send(b"BDAT 8\r\n12345678") == b"250 2.0.0 8 octets received\r\n"
    assert s.send(b"BDAT 8\r\n12345678") == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert s.send(b"BDAT 1 LAST\r\nx") == b"503 5.5.1 Need MAIL command\r\n"
    assert s.delivered == []
