"""Byte-level tests of the POP3 engine (RFC 1939, 2449, 2595, 3206, 5034, 6856)."""

from __future__ import annotations

import base64

import pytest

from mailsuite.pop3.engine import (MAX_LINE, Authenticate, Close, CommitDeletions, EngineConfig, OpenMaildrop,
                                   Pop3Engine, Reply, SendMessage, uidl_for)

from .pop3_sim import MESSAGES, Sim, logged_in


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def capa_lines(text: bytes) -> list[bytes]:
    lines = text.split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[-2:] == [b".", b""]
    return lines[1:-2]


# -- AUTHORIZATION, TLS ------------------------------------------------------------------------------


def test_greeting_has_no_apop_timestamp() -> None:
    sim = Sim()
    assert sim.out == b"+OK mailsuite POP3 server ready\r\n"
    assert b"<" not in sim.out


def test_capa_before_tls_hides_plaintext_auth() -> None:
    caps = capa_lines(Sim().feed(b"CAPA\r\n"))
    assert b"STLS" in caps
    assert b"USER" not in caps and not any(c.startswith(b"SASL") for c in caps)
    for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"UTF8", b"EXPIRE NEVER",
                b"IMPLEMENTATION mailsuite"):
        assert cap in caps


def test_capa_after_stls() -> None:
    sim = Sim()
    assert sim.feed(b"STLS\r\n") == b"+OK begin TLS negotiation\r\n<TLS>"
    caps = capa_lines(sim.after_tls(b"CAPA\r\n"))
    assert b"STLS" not in caps
    assert b"USER" in caps and b"SASL PLAIN LOGIN" in caps


def test_capa_with_implicit_tls_has_no_stls() -> None:
    caps = capa_lines(Sim(config=EngineConfig(tls_active=True)).feed(b"CAPA\r\n"))
    assert b"STLS" not in caps and b"USER" in caps


def test_capa_without_tls_configured() -> None:
    caps = capa_lines(Sim(config=EngineConfig(tls_available=False)).feed(b"CAPA\r\n"))
    assert b"STLS" not in caps


@pytest.mark.parametrize("command", [b"USER alice@example.org\r\n", b"PASS secret\r\n",
                                     b"AUTH PLAIN " + b64(b"\0alice@example.org\0secret") + b"\r\n",
                                     b"AUTH LOGIN\r\n", b"AUTH PLAIN\r\n"])
def test_plaintext_auth_refused_before_tls(command: bytes) -> None:
    sim = Sim()
    reply = sim.feed(command)
    assert reply.startswith(b"-ERR [SYS/PERM] ")
    assert not any(isinstance(a, Authenticate) for a in sim.actions)


def test_user_pass_before_tls_never_checks_password() -> None:
    sim = Sim()
    out = sim.feed(b"USER alice@example.org\r\nPASS secret\r\nSTAT\r\n")
    assert out.count(b"-ERR") == 3
    assert sim.actions == []


def test_loopback_exemption_allows_plaintext() -> None:
    sim = Sim(config=EngineConfig(plaintext_allowed=True))
    assert b"USER" in capa_lines(sim.feed(b"CAPA\r\n"))
    out = sim.feed(b"USER alice@example.org\r\nPASS secret\r\n")
    assert out == b"+OK send PASS\r\n+OK logged in, 3 messages (%d octets)\r\n" % sum(map(len, MESSAGES.values()))


def test_stls_pipelining_injection_is_discarded() -> None:
    sim = Sim()
    out = sim.feed(b"STLS\r\nUSER alice@example.org\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
    assert out == b"+OK begin TLS negotiation\r\n<TLS>"
    assert sim.engine.buffered == 0
    # inside TLS, the injected USER is forgotten: PASS alone is refused
    assert sim.after_tls(b"PASS secret\r\n") == b"-ERR PASS must follow USER\r\n"
    assert not any(isinstance(a, Authenticate) for a in sim.actions)


def test_stls_forgets_user_given_before() -> None:
    sim = Sim(config=EngineConfig(plaintext_allowed=True))
    sim.feed(b"USER alice@example.org\r\nSTLS\r\n")
    assert sim.after_tls(b"PASS secret\r\n").startswith(b"-ERR")


def test_second_stls_rejected() -> None:
    sim = Sim()
    sim.feed(b"STLS\r\n")
    assert sim.after_tls(b"STLS\r\n") == b"-ERR TLS is already active\r\n"
    assert sum(1 for a in sim.actions if type(a).__name__ == "StartTLS") == 1


def test_stls_rejected_on_implicit_tls_and_in_transaction() -> None:
    assert Sim(config=EngineConfig(tls_active=True)).feed(b"STLS\r\n").startswith(b"-ERR")
    assert logged_in().feed(b"STLS\r\n") == b"-ERR STLS not valid in this state\r\n"


def test_stls_without_tls_configured() -> None:
    assert Sim(config=EngineConfig(tls_available=False)).feed(b"STLS\r\n").startswith(b"-ERR [SYS/PERM]")


def test_user_reply_does_not_reveal_existence() -> None:
    tls = EngineConfig(tls_active=True)
    assert Sim(config=tls).feed(b"USER alice@example.org\r\n") == Sim(config=tls).feed(b"USER nobody@example.org\r\n")


def test_user_pass_success_and_password_with_spaces() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    out = sim.feed(b"user bob@example.org\r\npass pa ss\r\n")
    assert out.endswith(b"+OK logged in, 3 messages (%d octets)\r\n" % sum(map(len, MESSAGES.values())))
    assert Authenticate("bob@example.org", "pa ss", "USER") in sim.actions
    assert OpenMaildrop("bob@example.org") in sim.actions


def test_pass_must_follow_user_immediately() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"USER alice@example.org\r\nCAPA\r\nPASS secret\r\n").endswith(b"-ERR PASS must follow USER\r\n")


def test_auth_plain_initial_response() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    out = sim.feed(b"AUTH PLAIN " + b64(b"\0alice@example.org\0secret") + b"\r\n")
    assert out.startswith(b"+OK logged in")
    assert Authenticate("alice@example.org", "secret", "PLAIN") in sim.actions


def test_auth_plain_with_continuation() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert sim.feed(b64(b"alice@example.org\0alice@example.org\0secret") + b"\r\n").startswith(b"+OK logged in")


def test_auth_plain_authzid_other_user_refused() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    out = sim.feed(b"AUTH PLAIN " + b64(b"bob@example.org\0alice@example.org\0secret") + b"\r\n")
    assert out.startswith(b"-ERR [AUTH]")
    assert sim.engine.user is None


def test_auth_login_prompts() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert sim.feed(b64(b"alice@example.org") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert sim.feed(b64(b"secret") + b"\r\n").startswith(b"+OK logged in")
    assert Authenticate("alice@example.org", "secret", "LOGIN") in sim.actions


def test_auth_login_initial_response() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"AUTH LOGIN " + b64(b"alice@example.org") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert sim.feed(b64(b"secret") + b"\r\n").startswith(b"+OK logged in")


def test_auth_cancel_and_bad_base64_and_unknown_mechanism() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"AUTH PLAIN\r\n*\r\n") == b"+ \r\n-ERR authentication cancelled\r\n"
    assert sim.feed(b"AUTH PLAIN\r\n!!!\r\n") == b"+ \r\n-ERR invalid base64 in SASL response\r\n"
    assert sim.feed(b"AUTH PLAIN =\r\n") == b"-ERR malformed PLAIN response\r\n"
    assert sim.feed(b"AUTH CRAM-MD5\r\n") == b"-ERR unsupported SASL mechanism\r\n"
    assert not any(isinstance(a, Authenticate) for a in sim.actions)


def test_auth_without_mechanism_lists_them() -> None:
    assert Sim(config=EngineConfig(tls_active=True)).feed(b"AUTH\r\n") == b"+OK SASL mechanisms follow\r\nPLAIN\r\nLOGIN\r\n.\r\n"


def test_apop_not_offered() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"APOP alice@example.org 0123456789abcdef0123456789abcdef\r\n") == b"-ERR unknown command\r\n"


def test_failed_logins_then_dropped() -> None:
    sim = Sim(config=EngineConfig(tls_active=True, max_auth_failures=3))
    out = sim.feed(b"USER alice@example.org\r\nPASS wrong\r\n" * 2)
    assert out.count(b"-ERR [AUTH] authentication failed\r\n") == 2 and not sim.closed
    out = sim.feed(b"USER alice@example.org\r\nPASS wrong\r\nUSER alice@example.org\r\nPASS secret\r\n")
    assert out == b"+OK send PASS\r\n-ERR [AUTH] authentication failed\r\n<CLOSE>"
    assert sim.engine.closed and sim.engine.user is None
    assert sim.engine.receive_data(b"CAPA\r\n") == []


def test_in_use_stays_in_authorization() -> None:
    sim = Sim(config=EngineConfig(tls_active=True), in_use=True)
    out = sim.feed(b"USER alice@example.org\r\nPASS secret\r\nSTAT\r\n")
    assert out == (b"+OK send PASS\r\n-ERR [IN-USE] maildrop already locked by another POP3 session\r\n"
                   b"-ERR STAT not valid in this state\r\n")
    assert sim.engine.user is None


def test_maildrop_error_is_sys_temp() -> None:
    engine = Pop3Engine(EngineConfig(tls_active=True))
    engine.receive_data(b"USER a\r\n")
    engine.receive_data(b"PASS b\r\n")
    assert engine.auth_result("a") == [OpenMaildrop("a")]
    assert engine.maildrop_failed(False) == [Reply(b"-ERR [SYS/TEMP] maildrop temporarily unavailable\r\n")]


def test_utf8_command() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    assert sim.feed(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
    assert sim.engine.utf8
    assert logged_in().feed(b"UTF8\r\n").startswith(b"-ERR")


def test_utf8_user_name() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    sim.feed("UTF8\r\nUSER jörg@example.org\r\nPASS x\r\n".encode())
    assert Authenticate("jörg@example.org", "x", "USER") in sim.actions


def test_transaction_commands_refused_before_login() -> None:
    sim = Sim(config=EngineConfig(tls_active=True))
    for command in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 0", b"UIDL"):
        assert sim.feed(command + b"\r\n") == b"-ERR %s not valid in this state\r\n" % command.split()[0]


def test_quit_in_authorization_deletes_nothing() -> None:
    sim = Sim()
    assert sim.feed(b"QUIT\r\n") == b"+OK bye\r\n<CLOSE>"
    assert not any(isinstance(a, CommitDeletions) for a in sim.actions)


# -- TRANSACTION -------------------------------------------------------------------------------------


def test_stat_list_uidl() -> None:
    sim = logged_in()
    sizes = [len(v) for v in MESSAGES.values()]
    assert sim.feed(b"STAT\r\n") == b"+OK 3 %d\r\n" % sum(sizes)
    assert sim.feed(b"LIST\r\n") == (b"+OK 3 messages\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(sizes))
    assert sim.feed(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % sizes[1]
    assert sim.feed(b"UIDL\r\n") == b"+OK 3 messages\r\n1 uid-m1\r\n2 uid-m2\r\n3 uid-m3\r\n.\r\n"
    assert sim.feed(b"UIDL 3\r\n") == b"+OK 3 uid-m3\r\n"


@pytest.mark.parametrize("arg", [b"0", b"4", b"99999999999", b"-1", b"+1", b"x", b"", b"1 2"])
def test_bad_message_numbers(arg: bytes) -> None:
    sim = logged_in()
    for command in (b"RETR", b"DELE", b"TOP"):
        out = sim.feed(command + b" " + arg + (b" 0" if command == b"TOP" else b"") + b"\r\n")
        assert out.startswith(b"-ERR"), (command, arg, out)
    if arg:
        assert sim.feed(b"LIST " + arg + b"\r\n").startswith(b"-ERR")


def test_retr_streams_and_stuffs_first_body_dot() -> None:
    sim = logged_in()
    out = sim.feed(b"RETR 2\r\n")
    size = len(MESSAGES["m2"])
    assert out == b"+OK %d octets\r\nSubject: two\r\n\r\n..\r\n..starts with dot\r\nlast\r\n.\r\n" % size
    assert sim.seen == {"m2"}


def test_retr_without_mark_seen() -> None:
    sim = Sim(config=EngineConfig(tls_active=True, mark_seen_on_retr=False))
    sim.feed(b"USER alice@example.org\r\nPASS secret\r\nRETR 1\r\n")
    assert sim.seen == set()


def test_top() -> None:
    sim = logged_in()
    assert sim.feed(b"TOP 3 0\r\n") == b"+OK top of message follows\r\nSubject: three\r\nX: y\r\n\r\n.\r\n"
    assert sim.feed(b"TOP 3 2\r\n") == b"+OK top of message follows\r\nSubject: three\r\nX: y\r\n\r\nb1\r\nb2\r\n.\r\n"
    assert sim.feed(b"TOP 2 1\r\n").endswith(b"\r\n\r\n..\r\n.\r\n")
    assert sim.seen == set()
    assert sim.feed(b"TOP 1\r\n") == b"-ERR usage: TOP msg lines\r\n"
    assert sim.feed(b"TOP 1 -1\r\n") == b"-ERR usage: TOP msg lines\r\n"
    # fetchmail's "keep" mode reads whole messages with a huge line count
    assert sim.feed(b"TOP 1 99999999999\r\n") == b"+OK top of message follows\r\n" + MESSAGES["m1"] + b".\r\n"


def test_dele_rset_and_quit_commits() -> None:
    sim = logged_in()
    assert sim.feed(b"DELE 1\r\n") == b"+OK message 1 deleted\r\n"
    assert sim.feed(b"DELE 1\r\n") == b"-ERR message already deleted\r\n"
    assert sim.feed(b"RETR 1\r\n") == b"-ERR message already deleted\r\n"
    assert sim.feed(b"LIST 1\r\n") == b"-ERR message already deleted\r\n"
    assert sim.feed(b"STAT\r\n") == b"+OK 2 %d\r\n" % (len(MESSAGES["m2"]) + len(MESSAGES["m3"]))
    assert sim.feed(b"UIDL\r\n") == b"+OK 2 messages\r\n2 uid-m2\r\n3 uid-m3\r\n.\r\n"
    assert sim.feed(b"RSET\r\n") == b"+OK 3 messages\r\n"
    assert sim.feed(b"STAT\r\n").startswith(b"+OK 3 ")
    sim.feed(b"DELE 3\r\nDELE 1\r\n")
    assert sim.feed(b"QUIT\r\n") == b"+OK bye\r\n<CLOSE>"
    assert sim.removed == ("m1", "m3")


def test_quit_without_deletions_skips_update() -> None:
    sim = logged_in()
    assert sim.feed(b"QUIT\r\n") == b"+OK bye\r\n<CLOSE>"
    assert not any(isinstance(a, CommitDeletions) for a in sim.actions)


def test_update_failure_reported() -> None:
    sim = logged_in(update_ok=False)
    assert sim.feed(b"DELE 2\r\nQUIT\r\n") == (b"+OK message 2 deleted\r\n"
                                               b"-ERR [SYS/TEMP] some deleted messages not removed\r\n<CLOSE>")


def test_message_gone_meanwhile() -> None:
    sim = logged_in(missing={"m1"})
    assert sim.feed(b"RETR 1\r\nNOOP\r\n") == b"-ERR [SYS/TEMP] message no longer available\r\n+OK\r\n"


def test_noop_and_case_insensitive_commands() -> None:
    sim = logged_in()
    assert sim.feed(b"noop\r\nStAt\r\n").startswith(b"+OK\r\n+OK 3 ")


def test_bare_lf_line_ends_accepted() -> None:
    assert logged_in().feed(b"NOOP\nNOOP\n") == b"+OK\r\n+OK\r\n"


# -- pipelining, limits, timeouts --------------------------------------------------------------------


def test_pipelined_input_waits_for_pending_action() -> None:
    engine = Pop3Engine(EngineConfig(tls_active=True))
    engine.greeting()
    events = engine.receive_data(b"USER a\r\nPASS b\r\nSTAT\r\nNOOP\r\n")
    assert events == [Reply(b"+OK send PASS\r\n"), Authenticate("a", "b", "USER")]
    assert engine.busy
    assert engine.receive_data(b"LIST\r\n") == []          # only buffered while the action is pending
    assert engine.auth_result("a") == [OpenMaildrop("a")]
    from mailsuite.pop3.engine import DropEntry
    events = engine.maildrop_opened([DropEntry("k", 5, "u")])
    assert events == [Reply(b"+OK logged in, 1 messages (5 octets)\r\n"), Reply(b"+OK 1 5\r\n"), Reply(b"+OK\r\n"),
                      Reply(b"+OK 1 messages\r\n1 5\r\n.\r\n")]


def test_pipelined_retr_keeps_order() -> None:
    sim = logged_in()
    out = sim.feed(b"RETR 1\r\nUIDL 1\r\nRETR 3\r\nQUIT\r\n")
    first = b"+OK %d octets\r\n" % len(MESSAGES["m1"]) + MESSAGES["m1"] + b".\r\n"
    third = b"+OK %d octets\r\n" % len(MESSAGES["m3"]) + MESSAGES["m3"] + b".\r\n"
    assert out == first + b"+OK 1 uid-m1\r\n" + third + b"+OK bye\r\n<CLOSE>"


def test_result_for_wrong_action_is_a_programming_error() -> None:
    engine = Pop3Engine()
    with pytest.raises(RuntimeError):
        engine.auth_result("x")
    with pytest.raises(RuntimeError):
        engine.message_sent()


def test_line_too_long() -> None:
    sim = logged_in()
    assert sim.feed(b"X" * (MAX_LINE + 1) + b"\r\nNOOP\r\n") == b"-ERR line too long\r\n+OK\r\n"
    assert sim.feed(b"NOOP " + b"X" * (MAX_LINE - 5) + b"\r\n") == b"+OK\r\n"       # exactly MAX_LINE


def test_line_too_long_arriving_in_pieces() -> None:
    sim = logged_in()
    out = b"".join(sim.feed(b"Y" * 1000) for _ in range(20))
    assert out == b"-ERR line too long\r\n"
    assert sim.engine.buffered == 0
    assert sim.feed(b"YYY\r\nNOOP\r\n") == b"+OK\r\n"


def test_too_many_bad_commands() -> None:
    sim = logged_in()
    out = sim.feed(b"BOGUS\r\n" * 25)
    assert out.count(b"-ERR unknown command\r\n") == 20
    assert out.endswith(b"-ERR too many bad commands\r\n<CLOSE>")


def test_good_command_resets_bad_count() -> None:
    sim = logged_in()
    out = sim.feed((b"BOGUS\r\n" * 15 + b"NOOP\r\n") * 3)
    assert not sim.closed and out.count(b"+OK\r\n") == 3


def test_timeout() -> None:
    engine = logged_in().engine
    assert engine.timeout() == [Reply(b"-ERR autologout; idle for too long\r\n"), Close()]
    assert engine.closed and engine.timeout() == []


def test_send_message_event_fields() -> None:
    sim = logged_in()
    sim.feed(b"RETR 3\r\nTOP 1 4\r\n")
    sends = [a for a in sim.actions if isinstance(a, SendMessage)]
    assert sends == [SendMessage("m3", b"+OK %d octets\r\n" % len(MESSAGES["m3"]), None, True),
                     SendMessage("m1", b"+OK top of message follows\r\n", 4, False)]


def test_uidl_for() -> None:
    name = "1732233333.M123P456Q1.host,S=1234"
    assert uidl_for(name) == name
    long = "x" * 71
    assert uidl_for(long) == uidl_for(long) and len(uidl_for(long)) == 40
    assert uidl_for("a b") != "a b" and all(0x21 <= ord(c) <= 0x7E for c in uidl_for("ü"))


def test_result_after_timeout_is_ignored() -> None:
    engine = Pop3Engine(EngineConfig(tls_active=True))
    engine.receive_data(b"USER a\r\nPASS b\r\n")
    assert engine.busy
    assert engine.timeout()[-1] == Close()
    assert engine.auth_result("a") == []
