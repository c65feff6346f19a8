"""Hypothesis stateful tests (RuleBasedStateMachine) over the SMTP and POP3 engines (issue 8, fuzzing).

The machine plays a hostile client and an adapter at once: it sends commands from a vocabulary that reaches
every state, random bytes, pieces of lines; it answers each action with any legal result (success, failure,
temporary error) in any order with further input; it fires the idle timer.  Invariants after every step:
nothing escapes the engine, every event is of a known type and well formed, at most one action is
outstanding, the security rules hold (no AUTH action before TLS, no delivery without recipients, no
relaying, no message sent before login); at the end the session reaches a defined closed state.
"""

from __future__ import annotations

import base64
import re

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mailsuite.pop3 import engine as pop3
from mailsuite.smtp.engine import EngineConfig as SMTPConfig
from mailsuite.smtp.engine import SMTPServerEngine
from mailsuite.smtp.events import (Action, Authenticate, CheckRecipient, CheckSender, Close, Deliver,
                                   RecipientCheck, Reply, SendReply, StartTLS)

MACHINE_SETTINGS = settings(max_examples=120, stateful_step_count=40, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

_SMTP_LINE = re.compile(rb"^[2-5][0-9][0-9][ -][\x20-\x7e]*$")
PLAIN = base64.b64encode(b"\0alice@example.org\0secret").decode()
SMTP_COMMANDS = [
    "EHLO client.test", "HELO client.test", "EHLO", "MAIL FROM:<a@remote.test>", "MAIL FROM:<>",
    "MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME", "MAIL FROM:<a@remote.test> SIZE=999999999999",
    "MAIL FROM:<a@remote.test> ENVID=x+0D+0Ay RET=HDRS", "RCPT TO:<alice@example.org>",
    "RCPT TO:<victim@elsewhere.test>", "RCPT TO:<a%b@example.org>", "RCPT TO:<alice@example.org> NOTIFY=NEVER",
    "RCPT TO:<Postmaster>", "DATA", "BDAT 5", "BDAT 0 LAST", "BDAT 10 LAST", "RSET", "NOOP", "VRFY alice",
    "EXPN list", "HELP", "QUIT", "STARTTLS", f"AUTH PLAIN {PLAIN}", "AUTH PLAIN", PLAIN, "AUTH LOGIN",
    base64.b64encode(b"alice@example.org").decode(), "*", "=", "AUTH CRAM-MD5", "TURN", "X" * 13000,
]
#: pipelined openings that take a session deep quickly (transactions, TLS, AUTH), mixed with single commands
SMTP_SCRIPTS = [
    "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA",
    "EHLO c\r\nSTARTTLS", f"EHLO c\r\nAUTH PLAIN {PLAIN}", f"AUTH PLAIN {PLAIN}",
    "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@elsewhere.test>\r\nRCPT TO:<alice@example.org>\r\nDATA",
    "MAIL FROM:<alice@example.org>\r\nRCPT TO:<alice@example.org>\r\nBDAT 12 LAST\r\nSubject: x\r\n",
    "RCPT TO:<alice@example.org>\r\nRCPT TO:<carol@example.org>\r\nRCPT TO:<dave@example.org>",
]
SMTP_BODIES = [b"Subject: x\r\n\r\nhello\r\n.\r\n", b"a\n.\nb\r\n.\r\n", b"..\r\n.\r\n", b".\r\n",
               b"\x00\r\n.\r\n", b"x" * 9000 + b"\r\n.\r\n", b"Received: x\r\n" * 60 + b"\r\n.\r\n", b"12345"]


class SMTPMachine(RuleBasedStateMachine):
    """One SMTP session; the machine is also its adapter."""

    @initialize(mode=st.sampled_from(["mx", "submission", "submissions"]), loopback=st.booleans(),
                tls_available=st.booleans(), max_recipients=st.sampled_from([1, 3, 100]), opening=st.booleans())
    def start(self, mode: str, loopback: bool, tls_available: bool, max_recipients: int, opening: bool) -> None:
        self.config = SMTPConfig(hostname="mail.example.org", max_message_size=20000, max_recipients=max_recipients,
                                 max_received_headers=50, max_line_length=8192, allow_plaintext_loopback=loopback,
                                 tls_available=tls_available, max_errors=20)
        self.mode = mode
        self.engine = SMTPServerEngine(self.config, mode, "127.0.0.1" if loopback else "192.0.2.7",
                                       tls_active=mode == "submissions")
        self.pending: Action | None = None
        self.closed = False
        self.authenticated = False
        self.deliveries = 0
        self.take(self.engine.connection_made())
        if opening:                        # start half of the sessions deep: EHLO, TLS and AUTH done
            self.command("EHLO c", 0)
            if mode != "mx":
                if not self.engine.tls_active and tls_available:
                    self.command("STARTTLS", 0)
                    self.command("EHLO c", 0)
                self.command(f"AUTH PLAIN {PLAIN}", 0)
                if self.pending is not None:
                    self.answer(True, "local", 250)

    # -- the adapter side -----------------------------------------------------------------------------
    def take(self, events: list) -> None:
        for event in events:
            assert not self.closed, f"event after Close: {event!r}"
            if isinstance(event, SendReply):
                assert event.data.endswith(b"\r\n")
                for line in event.data[:-2].split(b"\r\n"):
                    assert _SMTP_LINE.match(line), line
            elif isinstance(event, StartTLS):
                assert self.engine.tls_active
            elif isinstance(event, Close):
                self.closed = True
            elif isinstance(event, Action):
                assert self.pending is None, "two actions outstanding"
                self.check_action(event)
                self.pending = event
            else:
                raise AssertionError(f"unknown event {event!r}")

    def check_action(self, action: Action) -> None:
        if isinstance(action, Authenticate):
            # DESIGN §4, RFC 4954 §4: credentials are looked at only over TLS (or loopback when allowed)
            assert self.mode != "mx"
            assert self.engine.tls_active or self.config.allow_plaintext_loopback
        elif isinstance(action, Deliver):
            env = action.envelope
            assert env.recipients and len(env.recipients) <= self.config.max_recipients
            if self.mode == "mx":
                assert all(r.status == "local" for r in env.recipients), "relayed from port 25"
            else:
                assert env.auth_user is not None, "submission without AUTH"
            self.deliveries += 1
        elif isinstance(action, CheckSender):
            assert self.mode != "mx"
        else:
            assert isinstance(action, CheckRecipient)

    # -- rules ----------------------------------------------------------------------------------------
    @precondition(lambda self: not self.closed)
    @rule(command=st.sampled_from(SMTP_COMMANDS) | st.sampled_from(SMTP_SCRIPTS), cut=st.integers(0, 40))
    def command(self, command: str, cut: int) -> None:
        data = command.encode() + b"\r\n"
        self.take(self.engine.receive_data(data[:cut]))
        if not self.closed:
            self.take(self.engine.receive_data(data[cut:]))

    @precondition(lambda self: not self.closed)
    @rule(body=st.sampled_from(SMTP_BODIES))
    def body(self, body: bytes) -> None:
        self.take(self.engine.receive_data(body))

    @precondition(lambda self: not self.closed)
    @rule(data=st.binary(max_size=300))
    def noise(self, data: bytes) -> None:
        self.take(self.engine.receive_data(data))

    @precondition(lambda self: self.pending is not None)
    @rule(ok=st.booleans(), status=st.sampled_from(["local", "unknown", "external", "error"]),
          code=st.sampled_from([250, 451, 452, 554]))
    def answer(self, ok: bool, status: str, code: int) -> None:
        action, self.pending = self.pending, None
        if isinstance(action, Authenticate):
            result = "alice@example.org" if ok else None
            self.authenticated = self.authenticated or ok
        elif isinstance(action, CheckSender):
            result = ok
        elif isinstance(action, CheckRecipient):
            result = RecipientCheck(status)
        else:
            result = Reply(code, "2.0.0" if code == 250 else "4.3.0", "done")
        self.take(self.engine.action_result(result))

    @precondition(lambda self: not self.closed and self.pending is None)
    @rule(fire=st.integers(0, 9))
    def idle_timeout(self, fire: int) -> None:
        if fire == 0:                       # rarely: most sessions should get deep before the timer fires
            self.take(self.engine.timeout())
            assert self.closed

    @precondition(lambda self: self.closed)
    @rule(data=st.binary(max_size=50))
    def after_close(self, data: bytes) -> None:
        assert self.engine.receive_data(data) == []
        assert self.engine.timeout() == []

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "engine"):
            assert self.engine.closed == self.closed
            assert (self.engine.pending is None) == (self.pending is None) or self.closed

    def teardown(self) -> None:
        """Every session ends in a defined state: results delivered, then the timer closes it."""
        if not hasattr(self, "engine"):
            return
        if self.pending is not None:
            self.answer(False, "error", 451)
        if not self.closed:
            self.take(self.engine.timeout())
        assert self.closed and self.engine.closed
        assert self.engine.receive_data(b"NOOP\r\n") == []


TestSMTPMachine = SMTPMachine.TestCase
TestSMTPMachine.settings = MACHINE_SETTINGS


# -- POP3 ----------------------------------------------------------------------------------------------

POP3_COMMANDS = [
    "CAPA", "STLS", "USER alice@example.org", "PASS secret", "PASS", "AUTH PLAIN", f"AUTH PLAIN {PLAIN}",
    PLAIN, "AUTH LOGIN", base64.b64encode(b"alice@example.org").decode(), "*", "AUTH", "APOP alice x",
    "STAT", "LIST", "LIST 1", "LIST 0", "LIST 99999999999999999999", "UIDL", "UIDL 2", "RETR 1", "RETR 3",
    "TOP 1 0", "TOP 2 -1", "DELE 1", "DELE 2", "DELE 1", "RSET", "NOOP", "UTF8", "QUIT", "XYZZY", "",
    "X" * 5000,
]
POP3_SCRIPTS = ["USER alice@example.org\r\nPASS secret", "STLS", f"AUTH PLAIN {PLAIN}",
                "RETR 1\r\nTOP 2 1\r\nDELE 2\r\nLIST", "DELE 1\r\nDELE 3\r\nQUIT", "UIDL\r\nRETR 2"]
ENTRIES = [pop3.DropEntry(key=f"k{i}", size=100 * i + 10, uid=f"u{i}") for i in range(1, 4)]
_POP3_FIRST = re.compile(rb"^(\+OK|-ERR|\+ )")


class POP3Machine(RuleBasedStateMachine):
    @initialize(tls=st.booleans(), plaintext=st.booleans(), failures=st.integers(1, 3), opening=st.booleans())
    def start(self, tls: bool, plaintext: bool, failures: int, opening: bool) -> None:
        self.config = pop3.EngineConfig(tls_active=tls, plaintext_allowed=plaintext, max_auth_failures=failures)
        self.engine = pop3.Pop3Engine(self.config)
        self.pending = None
        self.closed = False
        self.logged_in = False
        self.take(self.engine.greeting())
        if opening and (tls or plaintext):   # start half of the sessions logged in
            self.command("USER alice@example.org\r\nPASS secret", 0)
            self.answer(True, False)
            self.answer(True, False)

    def take(self, events: list) -> None:
        for event in events:
            assert not self.closed, f"event after Close: {event!r}"
            if isinstance(event, pop3.Reply):
                assert _POP3_FIRST.match(event.data) and event.data.endswith(b"\r\n"), event.data[:80]
                if b"\r\n" in event.data[:-2]:
                    assert event.data.endswith(b"\r\n.\r\n")          # RFC 1939 §3 multi-line
            elif isinstance(event, pop3.StartTLS):
                assert self.engine.tls_active
            elif isinstance(event, pop3.Close):
                self.closed = True
            else:
                assert isinstance(event, (pop3.Authenticate, pop3.OpenMaildrop, pop3.SendMessage,
                                          pop3.CommitDeletions)), event
                assert self.pending is None, "two actions outstanding"
                if isinstance(event, pop3.Authenticate):
                    assert self.engine.tls_active or self.config.plaintext_allowed    # RFC 2595 §2
                    assert not self.logged_in
                elif isinstance(event, (pop3.SendMessage, pop3.CommitDeletions)):
                    assert self.logged_in, "message access before login"
                    keys = {e.key for e in ENTRIES}
                    if isinstance(event, pop3.SendMessage):
                        assert event.key in keys
                    else:
                        assert set(event.keys) <= keys and len(set(event.keys)) == len(event.keys)
                self.pending = event

    @precondition(lambda self: not self.closed)
    @rule(command=st.sampled_from(POP3_COMMANDS) | st.sampled_from(POP3_SCRIPTS), cut=st.integers(0, 30))
    def command(self, command: str, cut: int) -> None:
        data = command.encode() + b"\r\n"
        self.take(self.engine.receive_data(data[:cut]))
        if not self.closed:
            self.take(self.engine.receive_data(data[cut:]))

    @precondition(lambda self: not self.closed)
    @rule(data=st.binary(max_size=200))
    def noise(self, data: bytes) -> None:
        self.take(self.engine.receive_data(data))

    @precondition(lambda self: self.pending is not None)
    @rule(ok=st.booleans(), in_use=st.booleans())
    def answer(self, ok: bool, in_use: bool) -> None:
        action, self.pending = self.pending, None
        if isinstance(action, pop3.Authenticate):
            events = self.engine.auth_result("alice@example.org" if ok else None)
        elif isinstance(action, pop3.OpenMaildrop):
            events = self.engine.maildrop_opened(ENTRIES) if ok else self.engine.maildrop_failed(in_use)
            self.logged_in = ok and not self.engine.closed
        elif isinstance(action, pop3.SendMessage):
            events = self.engine.message_sent() if ok else self.engine.message_failed()
        else:
            events = self.engine.update_done(ok)
            # QUIT's UPDATE ends the session, unless the idle timer already did (the result is then ignored)
            assert (events and isinstance(events[-1], pop3.Close)) if not self.closed else events == []
        self.take(events)

    @precondition(lambda self: not self.closed)
    @rule(fire=st.integers(0, 9))
    def idle_timeout(self, fire: int) -> None:
        if fire == 0:
            self.take(self.engine.timeout())
            assert self.closed

    @precondition(lambda self: self.closed)
    @rule(data=st.binary(max_size=50))
    def after_close(self, data: bytes) -> None:
        assert self.engine.receive_data(data) == []
        assert self.engine.timeout() == []

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "engine"):
            assert self.engine.closed == self.closed
            assert self.engine.busy == (self.pending is not None) or self.closed

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        if not self.closed:
            self.take(self.engine.timeout())
        assert self.closed and self.engine.closed
        assert self.engine.receive_data(b"NOOP\r\n") == []


TestPOP3Machine = POP3Machine.TestCase
TestPOP3Machine.settings = MACHINE_SETTINGS
