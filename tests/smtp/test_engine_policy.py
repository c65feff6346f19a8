"""Relay policy per mode (DESIGN.md §4: never an open relay) and pipelining order (RFC 2920)."""

from __future__ import annotations

import pytest

from mailsuite.smtp.events import CheckRecipient

from .smtp_sim import Session, plain


def mx() -> Session:
    s = Session(mode="mx")
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<someone@example.com>")
    return s


def submitter() -> Session:
    s = Session(mode="submission", tls=True)
    s.cmd("EHLO c")
    s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw"))
    return s


def test_mx_accepts_local_users_aliases_plus() -> None:
    s = mx()
    for rcpt in ("alice@example.org", "ALICE@Example.ORG", "sales@example.org", "alice+news@example.org",
                 "Postmaster"):
        assert s.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok\r\n", rcpt
    s.send(b"DATA\r\nx\r\n.\r\n")
    recipients = s.delivered[0].envelope.recipients
    assert [r.status for r in recipients] == ["local"] * 5
    assert recipients[4].address == "postmaster@example.org"


def test_mx_unknown_user() -> None:
    assert mx().cmd("RCPT TO:<nobody@example.org>") == "550 5.1.1 Recipient address rejected: user unknown\r\n"


@pytest.mark.parametrize("rcpt", [
    "victim@elsewhere.test",                 # plain unauthenticated relay
    "@example.org:victim@elsewhere.test",    # source route through us: the route is ignored
    "@example.org,@example.net:victim@elsewhere.test",
    "victim@[192.0.2.1]",                    # address literal
])
def test_mx_refuses_relay(rcpt: str) -> None:
    assert mx().cmd(f"RCPT TO:<{rcpt}>") == "554 5.7.1 Relay access denied\r\n"


@pytest.mark.parametrize("rcpt", [
    "victim%elsewhere.test@example.org",     # percent hack
    '"victim@elsewhere.test"@example.org',   # quoted local part with @
    '"victim%elsewhere.test"@example.org',
    "elsewhere.test!victim@example.org",     # bang path
])
def test_mx_refuses_routing_tricks(rcpt: str) -> None:
    s = mx()
    assert s.cmd(f"RCPT TO:<{rcpt}>") == "550 5.7.1 Relay access denied: routing characters in local part\r\n"
    assert not [e for e in s.events if isinstance(e, CheckRecipient)]


def test_mx_null_sender_to_external_refused() -> None:
    s = Session(mode="mx")
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<>") == "250 2.1.0 Ok\r\n"
    assert s.cmd("RCPT TO:<victim@elsewhere.test>") == "554 5.7.1 Relay access denied\r\n"
    assert s.cmd("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok\r\n"   # bounces to local users are fine


def test_quoted_local_part_that_needs_no_quotes_is_canonicalised() -> None:
    s = mx()
    assert s.cmd('RCPT TO:<"alice"@example.org>') == "250 2.1.5 Ok\r\n"
    checks = [e for e in s.events if isinstance(e, CheckRecipient)]
    assert checks[-1].address == "alice@example.org"


def test_submission_relays_for_authenticated_user() -> None:
    s = submitter()
    assert s.cmd("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok\r\n"
    assert s.cmd("RCPT TO:<friend@elsewhere.test> NOTIFY=FAILURE") == "250 2.1.5 Ok\r\n"
    assert s.cmd("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok\r\n"
    assert s.cmd("RCPT TO:<nobody@example.org>").startswith("550 5.1.1")
    assert s.send(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n").endswith(b"250 2.0.0 Ok: delivered\r\n")
    env = s.delivered[0].envelope
    assert [(r.address, r.status) for r in env.recipients] == [("friend@elsewhere.test", "external"),
                                                               ("bob@example.org", "local")]
    assert env.auth_user == "alice@example.org" and env.tls


def test_submission_null_sender_cannot_relay() -> None:
    from mailsuite.smtp.engine import EngineConfig
    s = Session(mode="submission", tls=True, config=EngineConfig(sender_must_match=False))
    s.cmd("EHLO c")
    s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw"))
    s.cmd("MAIL FROM:<>")
    assert s.cmd("RCPT TO:<x@elsewhere.test>") == "550 5.7.1 Null sender may not send to remote recipients\r\n"


def test_recipient_lookup_error_is_temporary() -> None:
    s = mx()
    s.hold = True
    s.send(b"RCPT TO:<alice@example.org>\r\n")
    s.held.clear()
    s._handle(s.engine.action_result(RuntimeError("db down")))
    assert bytes(s.out).endswith(b"451 4.3.0 Temporary recipient lookup failure\r\n")


def test_pipelined_replies_in_order_while_checks_pending() -> None:
    """RFC 2920: one packet, asynchronous checks, replies strictly in command order."""
    s = Session(mode="mx", hold=True)
    packet = (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<alice@example.org>\r\n"
              b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<bob@example.org>\r\n"
              b"DATA\r\n")
    first = s.send(packet)
    assert first.endswith(b"250 2.1.0 Ok\r\n")       # EHLO and MAIL answered; first RCPT check pending
    assert len(s.held) == 1
    s.send(b"NOOP\r\n")                                # more input while pending: buffered
    s.release()
    tail = bytes(s.out)[len(b"220 mail.example.org ESMTP mailsuite\r\n") + len(first):]
    assert tail == (b"250 2.1.5 Ok\r\n550 5.1.1 Recipient address rejected: user unknown\r\n"
                    b"554 5.7.1 Relay access denied\r\n250 2.1.5 Ok\r\n"
                    b"354 End data with <CR><LF>.<CR><LF>\r\n")
    # the NOOP sent while pending is message content now (the client sent it after DATA)
    s.hold = False
    s.send(b".\r\n")
    assert s.delivered[0].data == b"NOOP\r\n"
