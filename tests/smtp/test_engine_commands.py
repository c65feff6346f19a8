"""Byte-level tests of the SMTP engine: commands, order, EHLO keywords, enhanced codes (RFC 5321, 2034)."""

from __future__ import annotations

import pytest

from mailsuite.smtp.engine import EngineConfig, SMTPServerEngine
from mailsuite.smtp.events import Close, SendReply

from .smtp_sim import Session, b64, plain


def ehlo_keywords(reply: str) -> list[str]:
    return [line[4:] for line in reply.split("\r\n")[1:] if line]


def test_greeting_and_quit() -> None:
    s = Session()
    assert bytes(s.out) == b"220 mail.example.org ESMTP mailsuite\r\n"
    assert s.cmd("QUIT") == "221 2.0.0 mail.example.org closing connection\r\n"
    assert s.closed
    assert s.send(b"NOOP\r\n") == b""


def test_ehlo_keywords_mx_plain() -> None:
    s = Session(mode="mx")
    reply = s.cmd("EHLO client.example.com")
    assert reply.startswith("250-mail.example.org\r\n")
    kws = ehlo_keywords(reply)
    assert kws == ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
                   "DSN", "STARTTLS", "HELP"]
    assert reply.endswith("250 HELP\r\n")


def test_ehlo_keywords_submission_before_and_after_tls() -> None:
    s = Session(mode="submission")
    kws = ehlo_keywords(s.cmd("EHLO c"))
    assert "STARTTLS" in kws and not any(k.startswith("AUTH") for k in kws)
    assert s.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"
    kws = ehlo_keywords(s.cmd("EHLO c"))
    assert "STARTTLS" not in kws and "AUTH PLAIN LOGIN" in kws


def test_ehlo_submissions_has_auth_no_starttls() -> None:
    kws = ehlo_keywords(Session(mode="submissions", tls=True).cmd("EHLO c"))
    assert "AUTH PLAIN LOGIN" in kws and "STARTTLS" not in kws


def test_ehlo_no_starttls_when_tls_unavailable() -> None:
    cfg = EngineConfig(hostname="h", tls_available=False)
    s = Session(config=cfg)
    assert "STARTTLS" not in ehlo_keywords(s.cmd("EHLO c"))
    assert s.cmd("STARTTLS") == "454 4.7.0 TLS not available\r\n"


def test_helo_is_plain() -> None:
    s = Session()
    assert s.cmd("HELO client") == "250 mail.example.org\r\n"
    assert s.cmd("HELO") == "501 5.5.4 Syntax: HELO hostname\r\n"
    assert s.cmd("EHLO") == "501 5.5.4 Syntax: EHLO hostname\r\n"


@pytest.mark.parametrize("verb", ["SEND", "SOML", "SAML", "TURN", "send"])
def test_obsolete_commands(verb: str) -> None:
    assert Session().cmd(f"{verb} FROM:<a@b>") == "502 5.5.1 Command not implemented\r\n"


def test_unknown_command_and_syntax() -> None:
    s = Session()
    assert s.cmd("FOO bar") == "500 5.5.2 Command unrecognized\r\n"
    assert s.cmd("") == "500 5.5.2 Command unrecognized\r\n"
    assert s.cmd("RSET x") == "501 5.5.4 Syntax: RSET\r\n"
    assert s.cmd("NOOP anything") == "250 2.0.0 Ok\r\n"
    assert s.cmd("HELP").startswith("214-2.0.0 Commands:")


def test_wrong_order() -> None:
    s = Session()
    assert s.cmd("MAIL FROM:<a@example.com>") == "503 5.5.1 Send HELO/EHLO first\r\n"
    s.cmd("EHLO c")
    assert s.cmd("RCPT TO:<alice@example.org>") == "503 5.5.1 Need MAIL command\r\n"
    assert s.cmd("DATA") == "503 5.5.1 Need MAIL command\r\n"
    assert s.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Ok\r\n"
    assert s.cmd("MAIL FROM:<a@example.com>") == "503 5.5.1 Nested MAIL command\r\n"
    assert s.cmd("DATA") == "554 5.5.1 No valid recipients\r\n"


def test_mail_and_rcpt_syntax() -> None:
    s = Session()
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:a@example.com") == "501 5.1.7 Bad sender address syntax\r\n"
    assert s.cmd("MAIL TO:<a@example.com>") == "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
    assert s.cmd("MAIL FROM:<a@@example.com>") == "501 5.1.7 Bad sender address syntax\r\n"
    assert s.cmd("MAIL FROM: <a@example.com>") == "250 2.1.0 Ok\r\n"   # space after colon is tolerated
    assert s.cmd("RCPT TO:<>") == "501 5.1.3 Bad recipient address syntax\r\n"
    assert s.cmd("RCPT TO:<alice@example..org>") == "501 5.1.3 Bad recipient address syntax\r\n"
    assert s.cmd("RCPT TO:<alice@example.org> FOO=1") == "555 5.5.4 Unsupported parameter FOO\r\n"
    assert s.cmd("RCPT FROM:<alice@example.org>") == "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
    assert s.cmd("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok\r\n"


def test_mail_parameters() -> None:
    s = Session()
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=99999999999") == \
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=x") == "501 5.5.4 Bad SIZE parameter\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME") == "501 5.5.4 BODY must be 7BIT or 8BITMIME\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> BOGUS") == "555 5.5.4 Unsupported parameter BOGUS\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=1 SIZE=2") == "501 5.5.4 Duplicate SIZE parameter\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> RET=ALL") == "501 5.5.4 RET must be FULL or HDRS\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> ENVID=a=b") == "501 5.5.4 Bad parameter syntax\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> ENVID=a+zz") == "501 5.5.4 Bad ENVID parameter\r\n"
    assert s.cmd("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1 AUTH=<>") == \
        "250 2.1.0 Ok\r\n"
    assert s.cmd("RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bx@example.org") == \
        "250 2.1.5 Ok\r\n"
    assert s.cmd("RCPT TO:<bob@example.org> NOTIFY=NEVER,SUCCESS") == "501 5.5.4 Bad NOTIFY parameter\r\n"
    assert s.cmd("RCPT TO:<bob@example.org> ORCPT=rfc822") == "501 5.5.4 Bad ORCPT parameter\r\n"
    s.send(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    env = s.delivered[-1].envelope
    assert (env.size, env.body, env.ret, env.envid, env.auth_param) == (1000, "8BITMIME", "HDRS", "QQ+2B1", "<>")
    assert env.recipients[0].notify == ("SUCCESS", "FAILURE")
    assert env.recipients[0].orcpt == "rfc822;alice+2Bx@example.org"


def test_smtputf8_required_for_non_ascii() -> None:
    s = Session()
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<jörg@example.com>") == "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
    assert s.cmd("MAIL FROM:<jörg@example.com> SMTPUTF8") == "250 2.1.0 Ok\r\n"
    assert s.delivered == []
    assert s.cmd("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok\r\n"
    s.send(b"DATA\r\n\r\nx\r\n.\r\n")
    assert s.delivered[0].envelope.mail_from == "jörg@example.com"
    assert s.delivered[0].envelope.smtputf8


def test_vrfy_expn_never_reveal() -> None:
    s = Session()
    for arg in ("alice@example.org", "nobody@example.org"):
        assert s.cmd(f"VRFY {arg}") == \
            "252 2.5.0 Cannot verify, but will accept message and attempt delivery\r\n"
        assert s.cmd(f"EXPN {arg}").startswith("252 2.5.0")
    assert s.cmd("VRFY") == "501 5.5.4 Syntax: VRFY address\r\n"
    off = Session(config=EngineConfig(vrfy="502"))
    assert off.cmd("VRFY alice@example.org") == "502 5.5.1 VRFY command disabled\r\n"
    assert off.cmd("EXPN staff") == "502 5.5.1 EXPN command disabled\r\n"


def test_every_final_reply_has_enhanced_code() -> None:
    s = Session(mode="submission", tls=True)
    script = ["NOOP", "EHLO c", "AUTH PLAIN " + plain("alice@example.org", "alice-pw"), "HELP", "VRFY x",
              "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.org>", "RCPT TO:<x@elsewhere.test>",
              "RCPT TO:<nobody@example.org>", "RSET", "FOO", "TURN", "QUIT"]
    for line in script:
        s.cmd(line)
    text = bytes(s.out).decode()
    for line in text.split("\r\n"):
        if not line or line.startswith(("220 mail", "250-mail", "250-", "250 HELP", "334")):
            continue
        assert line[4] in "245" and line[5] == "." and line[3] in " -", line


def test_rset_clears_transaction_and_helo_resets() -> None:
    s = Session()
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("RCPT TO:<alice@example.org>")
    assert s.cmd("RSET") == "250 2.0.0 Ok\r\n"
    assert s.cmd("DATA") == "503 5.5.1 Need MAIL command\r\n"
    s.cmd("MAIL FROM:<a@example.com>")
    s.cmd("EHLO again")
    assert s.cmd("RCPT TO:<alice@example.org>") == "503 5.5.1 Need MAIL command\r\n"


def test_command_line_limits() -> None:
    s = Session()
    assert s.send(b"NOOP " + b"x" * 20000 + b"\r\n") == b"500 5.5.2 Line too long\r\n"
    assert s.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert s.send(b"NOOP\n") == b"500 5.5.2 Syntax error: lines must end with CRLF\r\n"
    assert s.send(b"NO\rOP\r\n") == b"500 5.5.2 Syntax error: bare CR or NUL in command\r\n"
    assert s.send(b"NOOP \0\r\n") == b"500 5.5.2 Syntax error: bare CR or NUL in command\r\n"
    assert s.send(b"NOOP \xff\r\n") == b"500 5.5.2 Syntax error: invalid UTF-8\r\n"


def test_too_many_errors_disconnects() -> None:
    s = Session(config=EngineConfig(max_errors=3))
    s.cmd("FOO")
    s.cmd("FOO")
    assert s.cmd("FOO") == "500 5.5.2 Command unrecognized\r\n421 4.7.0 Too many errors, closing\r\n"
    assert s.closed


def test_timeout() -> None:
    engine = SMTPServerEngine(EngineConfig(hostname="h"), "mx", "192.0.2.1", False)
    engine.connection_made()
    events = engine.timeout()
    assert events == [SendReply(b"421 4.4.2 h Error: timeout exceeded\r\n"), Close()]
    assert engine.closed and engine.timeout() == []


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError):
        SMTPServerEngine(EngineConfig(), "lmtp", "127.0.0.1", False)


def test_b64_helper_roundtrip() -> None:
    assert b64("Username:") == "VXNlcm5hbWU6"
