"""Byte-level tests of the outbound SMTP client engine (mailsuite.relay.client)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from mailsuite.relay.client import (
    ClientConfig, ClientEngine, Close, MessageResult, OutboundMessage, Ready, Recipient, RecipientResult,
    Reply, Send, SendBody, SessionFailed, StartTLS, xtext_encode,
)

EHLO_FULL = (b"250-mx.example.net hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n")


def sent(events) -> bytes:
    """The bytes the events send, in order (a SendBody's blocks are made as they are taken, once)."""
    out = []
    for e in events:
        if isinstance(e, Send):
            out.append(e.data)
        elif isinstance(e, SendBody):
            out.extend(e.blocks)
    return b"".join(out)


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def msg(*rcpts, data=b"Subject: t\r\n\r\nhello\r\n", sender="a@here.org", **kw) -> OutboundMessage:
    return OutboundMessage(sender, tuple(Recipient(r) if isinstance(r, str) else r for r in rcpts), data, **kw)


def ready_engine(ehlo=EHLO_FULL, **cfg) -> ClientEngine:
    cfg.setdefault("starttls", "off")
    e = ClientEngine(ClientConfig("me.here.org", **cfg))
    assert sent(e.receive_data(b"220 mx.example.net ESMTP\r\n")) == b"EHLO me.here.org\r\n"
    assert of(e.receive_data(ehlo), Ready)
    return e


def test_reply_parsing_multiline_and_enhanced():
    e = ClientEngine(ClientConfig("me", starttls="off"))
    assert e.phase == "greeting"
    # a greeting split at every byte still makes one reply
    out = []
    for b in b"220-first\r\n220 second\r\n":
        out += e.receive_data(bytes([b]))
    assert sent(out) == b"EHLO me\r\n"
    r = Reply(550, ("5.1.1 no such user", "more"))
    assert r.enhanced == "5.1.1" and r.permanent and str(r) == "550 5.1.1 no such user more"
    assert Reply(451, ("5.1.1 mismatch",)).enhanced is None


def test_pipelined_transaction_with_dsn_size_8bit():
    e = ready_engine()
    assert e.pipelining and e.max_size == 1000
    m = msg(Recipient("b@there.net", notify="SUCCESS,FAILURE", orcpt="rfc822;b+x=y@there.net"), "c@there.net",
            data="Subject: é\r\n\r\n.dot\r\n".encode(), ret="HDRS", envid="id 1")
    ev = e.send_message(m)
    size = len(m.data)
    assert sent(ev) == (f"MAIL FROM:<a@here.org> SIZE={size} BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+201\r\n"
                        "RCPT TO:<b@there.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx+3Dy@there.net\r\n"
                        "RCPT TO:<c@there.net>\r\nDATA\r\n").encode()
    ev = e.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
    assert [str(r.reply) for r in of(ev, RecipientResult)] == ["250 2.1.5 ok", "550 5.1.1 unknown"]
    assert sent(ev) == "Subject: é\r\n\r\n..dot\r\n.\r\n".encode()
    assert e.phase == "data-end" and e.timeout == 600
    ev = e.receive_data(b"250 2.0.0 queued\r\n")
    (res,) = of(ev, MessageResult)
    assert [(r.address, o.code) for r, o in res.outcomes] == [("b@there.net", 250), ("c@there.net", 550)]
    assert of(ev, Ready)


def test_without_pipelining_one_command_at_a_time_and_rset_between_messages():
    e = ready_engine(ehlo=b"250-mx\r\n250 SIZE\r\n")
    assert e.max_size == 0
    ev = e.send_message(msg("b@x.net", "c@x.net"))
    assert sent(ev).startswith(b"MAIL FROM:<a@here.org> SIZE=") and sent(ev).count(b"\r\n") == 1
    assert e.phase == "mail" and e.timeout == 300
    assert sent(e.receive_data(b"250 ok\r\n")) == b"RCPT TO:<b@x.net>\r\n"
    assert sent(e.receive_data(b"250 ok\r\n")) == b"RCPT TO:<c@x.net>\r\n"
    assert sent(e.receive_data(b"250 ok\r\n")) == b"DATA\r\n"
    assert e.phase == "data" and e.timeout == 120
    e.receive_data(b"354 go\r\n")
    ev = e.receive_data(b"250 done\r\n")
    assert of(ev, MessageResult) and of(ev, Ready)
    ev = e.send_message(msg("d@x.net"))
    assert sent(ev) == b"RSET\r\n"
    assert sent(e.receive_data(b"250 reset\r\n")).startswith(b"MAIL FROM:")
    e.receive_data(b"250 ok\r\n")
    e.receive_data(b"250 ok\r\n")
    e.receive_data(b"354 go\r\n")
    assert of(e.receive_data(b"250 ok\r\n"), Ready)
    assert of(e.quit(), Send) and e.phase == "quit"
    assert of(e.receive_data(b"221 bye\r\n"), Close)


def test_pipelined_second_message_pipelines_rset():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    e.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    e.receive_data(b"250 ok\r\n")
    ev = e.send_message(msg("c@x.net"))
    assert sent(ev).startswith(b"RSET\r\nMAIL FROM:<a@here.org>")
    ev = e.receive_data(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
    assert of(ev, MessageResult)[0].outcomes[0][1].code == 250


def test_all_recipients_refused_pipelined_no_body_sent():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    ev = e.receive_data(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert sent(ev) == b""
    (res,) = of(ev, MessageResult)
    assert res.reply.code == 550 and res.outcomes[0][1].code == 550
    assert e.phase == "ready"


def test_all_refused_but_server_says_354_gets_empty_data():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    ev = e.receive_data(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert sent(ev) == b".\r\n"
    ev = e.receive_data(b"250 ok\r\n")
    assert of(ev, MessageResult)[0].outcomes[0][1].code == 550


def test_mail_refused_without_pipelining():
    e = ready_engine(ehlo=b"250 mx\r\n")
    e.send_message(msg("b@x.net", "c@x.net"))
    ev = e.receive_data(b"452 4.3.1 full\r\n")
    (res,) = of(ev, MessageResult)
    assert [o.code for _, o in res.outcomes] == [452, 452] and sent(ev) == b""
    assert of(ev, Ready)


def test_data_refused_applies_to_accepted_recipients():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    ev = e.receive_data(b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n")
    assert of(ev, MessageResult)[0].outcomes[0][1].code == 451


def test_final_reply_5xx():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    e.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    ev = e.receive_data(b"554 5.7.1 spam\r\n")
    assert of(ev, MessageResult)[0].outcomes[0][1].permanent


def test_size_limit_refused_before_sending():
    e = ready_engine()
    ev = e.send_message(msg("b@x.net", data=b"x" * 2000))
    assert sent(ev) == b""
    assert of(ev, MessageResult)[0].reply.code == 552 and of(ev, Ready)


def test_smtputf8_needed_and_missing():
    e = ready_engine(ehlo=b"250-mx\r\n250 8BITMIME\r\n")
    ev = e.send_message(msg("jörg@x.net"))
    assert of(ev, MessageResult)[0].reply.enhanced == "5.6.7"
    e2 = ready_engine()
    assert b" SMTPUTF8" in sent(e2.send_message(msg("jörg@x.net")))


def test_8bit_body_only_is_not_smtputf8():
    e = ready_engine()
    line = sent(e.send_message(msg("b@x.net", data="Subject: x\r\n\r\né\r\n".encode())))
    assert b"BODY=8BITMIME" in line and b"SMTPUTF8" not in line


def test_addresses_and_parameters_cannot_inject_commands():
    e = ready_engine()
    ev = e.send_message(msg("b@x.net\r\nRCPT TO:<evil@x.net>"))
    assert sent(ev) == b"" and of(ev, MessageResult)[0].reply.code == 553
    ev = e.send_message(msg(Recipient("b@x.net", notify="SUCCESS\r\nDATA", orcpt="x y;z"), ret="FULL\r\nRSET"))
    line = sent(ev)
    assert line.count(b"\r\n") == 3 and b"NOTIFY" not in line and b"ORCPT" not in line and b"RET" not in line


def test_dsn_params_not_sent_when_not_offered():
    e = ready_engine(ehlo=b"250-mx\r\n250 PIPELINING\r\n")
    ev = e.send_message(msg(Recipient("b@x.net", notify="NEVER", orcpt="rfc822;b@x.net"), ret="FULL"))
    assert b"NOTIFY" not in sent(ev) and b"RET" not in sent(ev)


def test_ehlo_refused_falls_back_to_helo():
    e = ClientEngine(ClientConfig("me", starttls="opportunistic"))
    e.receive_data(b"220 old\r\n")
    assert sent(e.receive_data(b"502 what\r\n")) == b"HELO me\r\n"
    ev = e.receive_data(b"250 hi\r\n")
    assert of(ev, Ready) and not e.esmtp
    assert b"SIZE" not in sent(e.send_message(msg("b@x.net")))


def test_greeting_554_fails_the_session():
    e = ClientEngine(ClientConfig("me"))
    ev = e.receive_data(b"554 go away\r\n")
    assert of(ev, SessionFailed)[0].reply.code == 554 and sent(ev) == b"QUIT\r\n"
    assert of(e.receive_data(b"221 bye\r\n"), Close)


def test_starttls_opportunistic_discards_buffered_and_re_ehlos():
    e = ClientEngine(ClientConfig("me"))
    e.receive_data(b"220 hi\r\n")
    assert sent(e.receive_data(EHLO_FULL)) == b"STARTTLS\r\n"
    ev = e.receive_data(b"220 go ahead\r\n250 injected\r\n")
    assert of(ev, StartTLS) and e.phase == "tls-handshake"
    assert e.receive_data(b"250 more injection\r\n") == []
    assert sent(e.tls_established()) == b"EHLO me\r\n"
    assert not e.extensions
    ev = e.receive_data(b"250-mx\r\n250 PIPELINING\r\n")
    assert of(ev, Ready) and e.tls


def test_starttls_opportunistic_without_offer_goes_plain():
    e = ClientEngine(ClientConfig("me"))
    e.receive_data(b"220 hi\r\n")
    assert of(e.receive_data(b"250 mx\r\n"), Ready)


def test_starttls_required_not_offered_or_refused():
    e = ClientEngine(ClientConfig("me", starttls="required"))
    e.receive_data(b"220 hi\r\n")
    ev = e.receive_data(b"250 mx\r\n")
    assert of(ev, SessionFailed)[0].reply.code == 454 and of(ev, Close)
    e = ClientEngine(ClientConfig("me", starttls="required"))
    e.receive_data(b"220 hi\r\n")
    e.receive_data(b"250-mx\r\n250 STARTTLS\r\n")
    assert of(e.receive_data(b"454 no tls today\r\n"), SessionFailed)


def test_auth_plain_after_tls():
    e = ClientEngine(ClientConfig("me", tls=True, auth_user="u@x", auth_password="pw"))
    e.receive_data(b"220 hi\r\n")
    ev = e.receive_data(b"250-smart\r\n250 AUTH LOGIN PLAIN\r\n")
    token = base64.b64encode(b"\0u@x\0pw")
    assert sent(ev) == b"AUTH PLAIN " + token + b"\r\n"
    assert of(e.receive_data(b"235 2.7.0 ok\r\n"), Ready)


def test_auth_login_prompts():
    e = ClientEngine(ClientConfig("me", tls=True, auth_user="u@x", auth_password="pw"))
    e.receive_data(b"220 hi\r\n")
    assert sent(e.receive_data(b"250-smart\r\n250 AUTH=LOGIN\r\n")) == b"AUTH LOGIN\r\n"
    assert sent(e.receive_data(b"334 VXNlcm5hbWU6\r\n")) == base64.b64encode(b"u@x") + b"\r\n"
    assert sent(e.receive_data(b"334 UGFzc3dvcmQ6\r\n")) == base64.b64encode(b"pw") + b"\r\n"
    assert of(e.receive_data(b"235 ok\r\n"), Ready)


def test_auth_failure_is_transient_and_never_without_tls():
    e = ClientEngine(ClientConfig("me", tls=True, auth_user="u", auth_password="p"))
    e.receive_data(b"220 hi\r\n")
    e.receive_data(b"250-smart\r\n250 AUTH PLAIN\r\n")
    ev = e.receive_data(b"535 5.7.8 bad\r\n")
    assert of(ev, SessionFailed)[0].reply.code == 454
    e = ClientEngine(ClientConfig("me", starttls="opportunistic", auth_user="u", auth_password="p"))
    e.receive_data(b"220 hi\r\n")
    ev = e.receive_data(b"250-smart\r\n250 AUTH PLAIN\r\n")
    assert sent(ev) == b"" and of(ev, SessionFailed)


def test_421_mid_transaction_reports_message_then_session():
    e = ready_engine()
    m = msg("b@x.net")
    e.send_message(m)
    ev = e.receive_data(b"250 ok\r\n421 4.3.2 shutting down\r\n")
    assert [type(x) for x in ev] == [MessageResult, SessionFailed, Close]
    assert ev[0].outcomes[0][1].code == 421


def test_connection_lost_after_body_is_transient():
    e = ready_engine()
    e.send_message(msg("b@x.net"))
    e.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    ev = e.connection_lost()
    assert of(ev, MessageResult)[0].outcomes[0][1].transient and of(ev, SessionFailed)
    assert e.connection_lost() == []


def test_malformed_reply_fails():
    e = ClientEngine(ClientConfig("me"))
    ev = e.receive_data(b"HTTP/1.1 400 Bad\r\n")
    assert of(ev, SessionFailed) and of(ev, Close)


def test_send_message_requires_ready():
    e = ClientEngine(ClientConfig("me"))
    with pytest.raises(RuntimeError):
        e.send_message(msg("b@x.net"))


def test_xtext():
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"


def test_chunked_body_matches_whole_stuffing():
    data = b"".join(b".%d\r\n" % i for i in range(100))
    streams = set()
    for chunk in (1, 2, 3, 7, 64, 10000):
        e = ready_engine(chunk_size=chunk)
        e.send_message(msg("b@x.net", data=data))
        streams.add(sent(e.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")))
    assert len(streams) == 1
    assert streams.pop().endswith(b"\r\n..99\r\n.\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_server_bytes_never_crash(data):
    e = ClientEngine(ClientConfig("me"))
    e.receive_data(data)
    e.connection_lost()
    assert e.phase == "closed"


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(1, 120), max_size=10))
def test_any_split_of_server_replies_gives_same_output(cuts):
    stream = (b"220 hi\r\n" + EHLO_FULL.replace(b"250 STARTTLS", b"250 HELP")
              + b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")

    def run(pieces):
        e = ClientEngine(ClientConfig("me", starttls="off"))
        out = []
        for p in pieces:
            for ev in e.receive_data(p):
                out.append(ev)
                if isinstance(ev, Ready) and e.phase == "ready" and not of(out, MessageResult):
                    out += e.send_message(msg("b@x.net"))
        return [x for x in out if not isinstance(x, (Send, SendBody))], sent(out)

    points = sorted(set(c for c in cuts if c < len(stream)))
    pieces, last = [], 0
    for p in points:
        pieces.append(stream[last:p])
        last = p
    pieces.append(stream[last:])
    assert run(pieces) == run([stream])


_reply_lines = st.lists(st.sampled_from([
    b"250 ok\r\n", b"250-ok\r\n", b"354 go\r\n", b"421 bye\r\n", b"451 later\r\n", b"550 no\r\n",
    b"503 order\r\n", b"221 bye\r\n", b"garbage\r\n", b"\r\n", b"2", b"50 x\r\n"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(replies=_reply_lines, pipelining=st.booleans(), rcpts=st.integers(1, 3))
def test_random_replies_during_a_transaction_never_crash(replies, pipelining, rcpts):
    e = ready_engine(ehlo=b"250-mx\r\n250 PIPELINING\r\n" if pipelining else b"250 mx\r\n")
    events = e.send_message(msg(*[f"r{i}@x.net" for i in range(rcpts)]))
    for chunk in replies:
        events += e.receive_data(chunk)
    events += e.connection_lost()
    results = of(events, MessageResult)
    # exactly one result for the one message, whatever the server said, with an outcome for each recipient
    assert len(results) == 1
    assert [r.address for r, _ in results[0].outcomes] == [f"r{i}@x.net" for i in range(rcpts)]
    assert len(of(events, SessionFailed)) <= 1


def test_body_blocks_are_stuffed_as_they_are_taken():
    """RFC 5321 §4.5.2 stuffing per block of about chunk_size bytes, made only when the adapter takes a block,
    so the stuffed copy of a big message is never whole in memory."""
    data = b"Subject: t\r\n\r\n" + b".x\r\n" * 200          # under the server's SIZE 1000
    e = ready_engine(chunk_size=100)
    e.send_message(msg("b@x.net", data=data))
    (body,) = of(e.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n"), SendBody)
    first = next(body.blocks)
    assert 100 <= len(first) <= 200 and first.startswith(b"Subject: t\r\n\r\n..x\r\n")
    rest = list(body.blocks)
    assert len(rest) >= 8 and all(len(b) <= 200 for b in rest) and rest[-1] == b".\r\n"   # the terminator
    assert first + b"".join(rest) == data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
