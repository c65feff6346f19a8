"""AUTH PLAIN/LOGIN (RFC 4954, 4616) and STARTTLS (RFC 3207) in the SMTP engine."""

from __future__ import annotations

from mailsuite.smtp.engine import EngineConfig
from mailsuite.smtp.events import Authenticate, StartTLS

from .smtp_sim import Session, b64, plain


def tls_session(**kw: object) -> Session:
    s = Session(mode="submission", tls=True, **kw)  # type: ignore[arg-type]
    s.cmd("EHLO c")
    return s


def auth_actions(s: Session) -> list[Authenticate]:
    return [e for e in s.events if isinstance(e, Authenticate)]


def test_plain_with_initial_response() -> None:
    s = tls_session()
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == "235 2.7.0 Authentication successful\r\n"
    assert s.engine.auth_user == "alice@example.org"
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == "503 5.5.1 Already authenticated\r\n"


def test_plain_without_initial_response() -> None:
    s = tls_session()
    assert s.cmd("AUTH PLAIN") == "334 \r\n"
    assert s.cmd(plain("bob@example.org", "bob-pw")) == "235 2.7.0 Authentication successful\r\n"


def test_plain_authzid_must_match() -> None:
    s = tls_session()
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw", "bob@example.org")) == \
        "535 5.7.8 Authentication credentials invalid\r\n"
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw", "alice@example.org")).startswith("235")


def test_login_exact_prompts() -> None:
    s = tls_session()
    assert s.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6\r\n"
    assert s.cmd(b64("alice@example.org")) == "334 UGFzc3dvcmQ6\r\n"
    assert s.cmd(b64("alice-pw")) == "235 2.7.0 Authentication successful\r\n"
    assert auth_actions(s)[0] == Authenticate("LOGIN", "alice@example.org", "alice-pw")


def test_login_with_initial_username() -> None:
    s = tls_session()
    assert s.cmd("AUTH login " + b64("bob@example.org")) == "334 UGFzc3dvcmQ6\r\n"
    assert s.cmd(b64("bob-pw")).startswith("235 2.7.0")


def test_cancel_and_bad_base64() -> None:
    s = tls_session()
    assert s.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6\r\n"
    assert s.cmd("*") == "501 5.7.0 Authentication cancelled\r\n"
    assert s.cmd("AUTH PLAIN") == "334 \r\n"
    assert s.cmd("!!notbase64") == "501 5.5.2 Invalid base64 data\r\n"
    assert s.cmd("AUTH PLAIN a") == "501 5.5.2 Invalid base64 data\r\n"
    assert s.cmd("AUTH PLAIN " + b64("no-nuls")) == "501 5.5.2 Malformed PLAIN response\r\n"
    assert s.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type\r\n"
    assert s.cmd("AUTH") == "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"
    assert auth_actions(s) == []
    # the session still works
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")).startswith("235")


def test_sasl_line_too_long() -> None:
    s = tls_session()
    s.cmd("AUTH PLAIN")
    assert s.send(b"A" * 13000 + b"\r\n") == b"500 5.5.6 Authentication exchange line is too long\r\n"
    assert s.cmd("NOOP") == "250 2.0.0 Ok\r\n"


def test_failures_then_drop() -> None:
    s = tls_session(config=EngineConfig(max_auth_failures=3))
    bad = "AUTH PLAIN " + plain("alice@example.org", "wrong")
    assert s.cmd(bad) == "535 5.7.8 Authentication credentials invalid\r\n"
    assert s.cmd(bad) == "535 5.7.8 Authentication credentials invalid\r\n"
    assert s.cmd(bad) == ("535 5.7.8 Authentication credentials invalid\r\n"
                          "421 4.7.0 Too many authentication failures\r\n")
    assert s.closed


def test_auth_before_tls_refused_without_checking() -> None:
    s = Session(mode="submission", tls=False)
    s.cmd("EHLO c")
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == \
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert s.cmd("AUTH LOGIN") == "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert auth_actions(s) == []
    assert s.cmd("MAIL FROM:<alice@example.org>") == "530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_loopback_exemption_only_by_config_and_only_on_loopback() -> None:
    cfg = EngineConfig(allow_plaintext_loopback=True)
    remote = Session(mode="submission", peer="192.0.2.5", config=cfg)
    remote.cmd("EHLO c")
    assert remote.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")).startswith("538 5.7.11")
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        local = Session(mode="submission", peer=peer, config=cfg)
        assert "AUTH PLAIN LOGIN" in local.cmd("EHLO c")
        assert local.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")).startswith("235")
    strict = Session(mode="submission", peer="127.0.0.1")
    strict.cmd("EHLO c")
    assert strict.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")).startswith("538 5.7.11")


def test_auth_not_on_mx() -> None:
    s = Session(mode="mx", tls=True)
    ehlo = s.cmd("EHLO c")
    assert "AUTH" not in ehlo
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == "502 5.5.1 AUTH not available on this port\r\n"


def test_auth_needs_ehlo() -> None:
    s = Session(mode="submission", tls=True)
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == "503 5.5.1 Send EHLO first\r\n"
    s.cmd("HELO c")
    assert s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw")) == "503 5.5.1 Send EHLO first\r\n"


def test_submission_requires_auth() -> None:
    s = tls_session()
    assert s.cmd("MAIL FROM:<alice@example.org>") == "530 5.7.0 Authentication required\r\n"


def test_submission_sender_must_match() -> None:
    s = tls_session()
    s.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw"))
    assert s.cmd("MAIL FROM:<bob@example.org>") == "553 5.7.1 Sender address rejected: not owned by user\r\n"
    assert s.cmd("MAIL FROM:<>") == "553 5.7.1 Sender address rejected: not owned by user\r\n"
    assert s.cmd("MAIL FROM:<postmaster@example.org>") == "250 2.1.0 Ok\r\n"
    loose = tls_session(config=EngineConfig(sender_must_match=False))
    loose.cmd("AUTH PLAIN " + plain("alice@example.org", "alice-pw"))
    assert loose.cmd("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok\r\n"


# ----------------------------------------------------------------------- STARTTLS

def test_starttls_discards_pipelined_commands() -> None:
    """The STARTTLS injection attack: commands in the same packet as STARTTLS are never executed."""
    s = Session(mode="submission")
    s.cmd("EHLO c")
    reply = s.send(b"STARTTLS\r\nEHLO evil\r\nAUTH PLAIN " + plain("alice@example.org", "alice-pw").encode() +
                   b"\r\nMAIL FROM:<alice@example.org>\r\n")
    assert reply == b"220 2.0.0 Ready to start TLS\r\n"
    assert s.tls_started == 1 and isinstance(s.events[-1], StartTLS)
    assert auth_actions(s) == []
    assert s.engine.helo is None and s.engine.auth_user is None
    # after the handshake a new EHLO is required
    assert s.cmd("MAIL FROM:<alice@example.org>") == "503 5.5.1 Send HELO/EHLO first\r\n"
    assert "AUTH PLAIN LOGIN" in s.cmd("EHLO c")


def test_starttls_resets_transaction_on_mx() -> None:
    s = Session(mode="mx")
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    assert s.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"
    s.cmd("EHLO c")
    assert s.cmd("RCPT TO:<alice@example.org>") == "503 5.5.1 Need MAIL command\r\n"


def test_starttls_twice_and_with_argument() -> None:
    s = Session(mode="submission")
    assert s.cmd("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS\r\n"
    s.cmd("STARTTLS")
    assert s.cmd("STARTTLS") == "503 5.5.1 TLS already active\r\n"


def test_starttls_after_pending_action_still_discards_later_input() -> None:
    s = Session(mode="mx", hold=True)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<a@example.com>")
    assert s.send(b"RCPT TO:<alice@example.org>\r\nRSET\r\nSTARTTLS\r\nNOOP\r\n") == b""
    s.send(b"NOOP\r\n")                        # arrives while the recipient check is still running
    s.release()
    assert bytes(s.out).endswith(b"250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n")
    assert s.tls_started == 1
