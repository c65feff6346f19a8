"""Outbound SMTP client engine: pure state machine, no sockets, no reactor, no clock (h11 style).

The adapter feeds the server's bytes to `ClientEngine.receive_data()` and calls `send_message()`, `quit()`,
`tls_established()` and `connection_lost()`; each returns a list of events to act on:

- `Send(data)`: write these bytes to the connection.
- `StartTLS()`: the server accepted STARTTLS; start the TLS handshake, then call `tls_established()`.
- `Ready()`: the session is set up (or the previous message is finished): `send_message()` may be called.
- `RecipientResult(message, recipient, reply)`: the server's answer to one RCPT.
- `MessageResult(message, reply, outcomes)`: the end of one message; `outcomes` holds the final reply for
  every recipient (the DATA reply for those the server accepted, the RCPT or MAIL reply for the others).
- `SessionFailed(reply)`: the session cannot go on (greeting refused, TLS required but not offered, AUTH
  failed, 421, protocol error, connection lost); a message in flight got its `MessageResult` first.
- `Close()`: close the connection now.

`phase` says what the engine is waiting for, `timeout` how long the adapter should let it wait
(RFC 5321 §4.5.3.2).  The engine speaks EHLO (HELO fallback), PIPELINING (RFC 2920), SIZE (RFC 1870),
8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954,
RFC 4616), and sends several messages on one connection with RSET between them.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailsuite.relay.dotstuff import DotStuffer

__all__ = [
    "Reply", "Recipient", "OutboundMessage", "ClientConfig", "ClientEngine",
    "Send", "SendBody", "StartTLS", "Ready", "RecipientResult", "MessageResult", "SessionFailed", "Close",
    "PHASE_TIMEOUTS", "xtext_encode",
]

MAX_REPLY_LINE = 4096      # RFC 5321 §4.5.3.1.5 says 512; be lenient with chatty servers
MAX_REPLY_LINES = 200

#: RFC 5321 §4.5.3.2 minimum timeouts per phase, in seconds
PHASE_TIMEOUTS: dict[str, float] = {
    "greeting": 300.0,      # §4.5.3.2.1 initial 220 message: 5 minutes
    "ehlo": 300.0,
    "starttls": 300.0,
    "tls-handshake": 300.0,
    "auth": 300.0,
    "ready": 300.0,         # idle between messages (the adapter decides when to QUIT)
    "mail": 300.0,          # §4.5.3.2.2 MAIL command: 5 minutes
    "rcpt": 300.0,          # §4.5.3.2.3 RCPT command: 5 minutes
    "data": 120.0,          # §4.5.3.2.4 DATA initiation: 2 minutes
    "data-block": 180.0,    # §4.5.3.2.5 data block: 3 minutes
    "data-end": 600.0,      # §4.5.3.2.6 DATA termination: 10 minutes
    "quit": 60.0,
    "closed": 0.0,
}

_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_UNSAFE = re.compile(r"[\x00-\x20<>\x7f]")
_NOTIFY = re.compile(r"^(NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*)$", re.IGNORECASE)
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*;")      # RFC 3461 §4.2 addr-type (an atom)
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""
    code: int
    lines: tuple[str, ...] = ("",)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the text, if any."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and m.group(1) == str(self.code)[0]:
            return m.group(0)
        return None

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


@dataclass(frozen=True)
class Recipient:
    address: str
    notify: str | None = None     # RFC 3461 §4.1: "NEVER" or a comma list of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None      # RFC 3461 §4.2: "addr-type;address", decoded (xtext-encoded when sent)


@dataclass(frozen=True)
class OutboundMessage:
    sender: str                   # "" is the null reverse-path (bounces)
    recipients: tuple[Recipient, ...]
    data: bytes                   # the message, CRLF line ends, not dot-stuffed
    ret: str | None = None        # RFC 3461 §4.3: FULL or HDRS
    envid: str | None = None      # RFC 3461 §4.4, decoded
    tag: Any = None               # opaque to the engine (the adapter's job)


@dataclass(frozen=True)
class ClientConfig:
    helo_name: str
    starttls: str = "opportunistic"     # "off", "opportunistic" or "required" (RFC 3207)
    tls: bool = False                   # already on TLS (implicit TLS, RFC 8314)
    auth_user: str | None = None        # smarthost credentials (RFC 4954)
    auth_password: str | None = None
    auth_without_tls: bool = False      # allow credentials over plain text (tests, loopback only)
    chunk_size: int = 65536             # size of the Send events carrying the message body (one data block)


# ---------------------------------------------------------------------------------------------- events

@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class SendBody:
    """The message content after the 354: dot-stuffed blocks of about ``chunk_size`` bytes, made as they are
    taken, the last one ending with the terminating ``.CRLF``.  The adapter hands them to the network one at
    a time (RFC 5321 §4.5.3.2.5: the client's timeout runs per data block) and holds any later bytes until
    they are out; the stuffed copy of a big message never exists whole."""
    blocks: Iterator[bytes]


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class RecipientResult:
    message: OutboundMessage
    recipient: Recipient
    reply: Reply


@dataclass(frozen=True)
class MessageResult:
    message: OutboundMessage
    reply: Reply
    outcomes: tuple[tuple[Recipient, Reply], ...]


@dataclass(frozen=True)
class SessionFailed:
    reply: Reply
    phase: str


@dataclass(frozen=True)
class Close:
    pass


Event = Send | SendBody | StartTLS | Ready | RecipientResult | MessageResult | SessionFailed | Close


def xtext_encode(value: str) -> str:
    """RFC 3461 §4: xtext, "+HH" for "+", "=", and characters outside "!".."~"."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (43, 61):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _is_ascii(s: str) -> bool:
    return all(ord(c) < 128 for c in s)


@dataclass
class _Transaction:
    message: OutboundMessage
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    sent_rcpts: int = 0
    body_sent: bool = False
    override: Reply | None = None


class ClientEngine:
    """One outbound SMTP session (see the module docstring for the event contract)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.phase = "greeting"
        self.tls = config.tls
        self.extensions: dict[str, str] = {}   # EHLO keyword (upper case) -> parameters
        self.esmtp = False
        self.max_size: int | None = None
        self._buffer = b""
        self._lines: list[tuple[int, str]] = []
        # what each outstanding reply answers, in order (several when pipelining, RFC 2920 §3.1)
        self._expect: deque[str] = deque()
        self._pending_cmds: deque[tuple[str, bytes]] = deque()   # not yet sent (no PIPELINING)
        self._txn: _Transaction | None = None
        self._transactions = 0
        self._auth_mech: str | None = None
        self._failed = False
        self.replies = 0        # complete replies received so far (the adapter's per-command timer uses it)

    # ------------------------------------------------------------------------------------ properties

    @property
    def timeout(self) -> float:
        return PHASE_TIMEOUTS.get(self.phase, 300.0)

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    # ----------------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[Event]:
        if self.phase in ("closed", "tls-handshake"):
            # RFC 3207 §4.2: nothing the server sent before the TLS handshake may be used after it.
            return []
        self._buffer += data
        events: list[Event] = []
        while self.phase not in ("closed", "tls-handshake"):
            nl = self._buffer.find(b"\n")
            if nl < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    return events + self._fail(Reply(451, ("4.5.0 reply line too long",)))
                break
            raw, self._buffer = self._buffer[:nl], self._buffer[nl + 1:]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            # RFC 5321 §4.2: Reply-code [ SP / "-" text ] CRLF; the last line has SP (or nothing).
            if len(line) < 3 or not line[:3].isdigit() or line[0] not in "2345" or \
                    (len(line) > 3 and line[3] not in " -"):
                return events + self._fail(Reply(451, (f"4.5.0 malformed reply: {line[:80]!r}",)))
            code = int(line[:3])
            self._lines.append((code, line[4:]))
            if len(self._lines) > MAX_REPLY_LINES:
                return events + self._fail(Reply(451, ("4.5.0 reply too long",)))
            if len(line) > 3 and line[3] == "-":
                continue
            # RFC 5321 §4.2.1: the code of a multi-line reply is the code of its last line.
            reply = Reply(code, tuple(text for _, text in self._lines))
            self._lines = []
            events += self._on_reply(reply)
        if self.phase == "tls-handshake":
            self._buffer = b""
        return events

    def tls_established(self) -> list[Event]:
        """The TLS handshake after STARTTLS is done: RFC 3207 §4.2, forget everything and EHLO again."""
        if self.phase != "tls-handshake":
            return []
        self.tls = True
        self._buffer = b""
        self._lines = []
        self.extensions = {}
        return self._send_ehlo()

    def connection_lost(self, why: str = "connection lost") -> list[Event]:
        """The connection closed, was reset, or the adapter gave up waiting (timeout, shutdown).

        RFC 5321 §3.8: a client that sees a close, reset or other communication failure treats the mail
        transaction as if a 451 reply had been received, so the message in flight gets a transient 421 and
        is retried; this holds after the final "." too (RFC 1047: the remote may have kept a copy, a
        possible duplicate we accept rather than risk losing the message).
        """
        if self.phase == "closed":
            return []
        if self.phase == "quit":
            self.phase = "closed"
            return []
        return self._fail(Reply(421, (f"4.4.2 {why}",)), close=False)

    # -------------------------------------------------------------------------------------- commands

    def send_message(self, message: OutboundMessage) -> list[Event]:
        """Start one mail transaction; only in phase "ready"."""
        if self.phase != "ready":
            raise RuntimeError(f"send_message() in phase {self.phase!r}")
        if not message.recipients:
            raise ValueError("message without recipients")
        refusal = self._refusal(message)
        if refusal is not None:
            outcomes = tuple((r, refusal) for r in message.recipients)
            return [MessageResult(message, refusal, outcomes), Ready()]
        self._txn = _Transaction(message)
        commands: list[tuple[str, bytes]] = []
        if self._transactions:
            # RFC 5321 §4.1.1.5: start each further transaction on this connection from a clean state.
            commands.append(("rset", b"RSET\r\n"))
        self._transactions += 1
        commands.append(("mail", self._mail_command(message)))
        for rcpt in message.recipients:
            commands.append(("rcpt", self._rcpt_command(rcpt)))
        commands.append(("data", b"DATA\r\n"))
        if self.pipelining:
            # RFC 2920 §3.1: MAIL, RCPT and DATA may be sent as one group; DATA is the last of it.
            self._expect.extend(kind for kind, _ in commands)
            self.phase = commands[0][0]
            return [Send(b"".join(cmd for _, cmd in commands))]
        self._pending_cmds.extend(commands)
        return self._send_next_pending()

    def quit(self) -> list[Event]:
        """End the session politely (RFC 5321 §4.1.1.10)."""
        if self.phase in ("closed", "quit"):
            return []
        if self.phase != "ready":
            self.phase = "closed"
            return [Close()]
        self.phase = "quit"
        self._expect.append("quit")
        return [Send(b"QUIT\r\n")]

    # ------------------------------------------------------------------------------------- internals

    def _refusal(self, message: OutboundMessage) -> Reply | None:
        size = len(message.data)
        if self.max_size and size > self.max_size:
            # RFC 1870 §6: do not send a message the server declared too big.
            return Reply(552, (f"5.3.4 message size {size} exceeds the remote limit {self.max_size}",))
        addresses = [message.sender] + [r.address for r in message.recipients]
        if any(_UNSAFE.search(a) for a in addresses):
            # never let an address carry a line end or brackets into the command stream (RFC 5321 §4.1.2)
            return Reply(553, ("5.1.3 invalid characters in an address",))
        if not all(_is_ascii(a) for a in addresses) and not self.supports("SMTPUTF8"):
            # RFC 6531 §3.2: a non-ASCII address needs SMTPUTF8 at the next hop.
            return Reply(553, ("5.6.7 the remote server does not support SMTPUTF8 for this address",))
        return None

    def _mail_command(self, message: OutboundMessage) -> bytes:
        params = []
        if self.max_size is not None:
            params.append(f"SIZE={len(message.data)}")          # RFC 1870 §3
        eight_bit = _EIGHT_BIT.search(message.data) is not None
        if self.supports("8BITMIME") and eight_bit:
            params.append("BODY=8BITMIME")                       # RFC 6152 §3
        # RFC 6152 §3 would have us convert 8-bit data for a 7-bit server; like every deployed MTA we send it
        # unchanged, which every server accepts in practice.
        header_end = message.data.find(b"\r\n\r\n")
        utf8_headers = eight_bit and _EIGHT_BIT.search(
            message.data, 0, header_end if header_end >= 0 else len(message.data)) is not None
        if self.supports("SMTPUTF8") and (utf8_headers or not all(
                _is_ascii(a) for a in [message.sender] + [r.address for r in message.recipients])):
            params.append("SMTPUTF8")                            # RFC 6531 §3.4: UTF-8 addresses or headers
        if self.supports("DSN"):
            if message.ret and message.ret.upper() in ("FULL", "HDRS"):
                params.append(f"RET={message.ret.upper()}")      # RFC 3461 §4.3
            if message.envid:
                params.append(f"ENVID={xtext_encode(message.envid)}")   # RFC 3461 §4.4
        line = f"MAIL FROM:<{message.sender}>" + "".join(" " + p for p in params) + "\r\n"
        return line.encode("utf-8")

    def _rcpt_command(self, rcpt: Recipient) -> bytes:
        params = []
        if self.supports("DSN"):
            if rcpt.notify and _NOTIFY.match(rcpt.notify):
                params.append(f"NOTIFY={rcpt.notify.upper()}")   # RFC 3461 §4.1
            if rcpt.orcpt and _ADDR_TYPE.match(rcpt.orcpt):
                kind, _, addr = rcpt.orcpt.partition(";")
                params.append(f"ORCPT={kind};{xtext_encode(addr)}")    # RFC 3461 §4.2
        line = f"RCPT TO:<{rcpt.address}>" + "".join(" " + p for p in params) + "\r\n"
        return line.encode("utf-8")

    def _send_next_pending(self) -> list[Event]:
        kind, cmd = self._pending_cmds.popleft()
        self._expect.append(kind)
        self.phase = kind
        return [Send(cmd)]

    def _send_ehlo(self) -> list[Event]:
        # RFC 5321 §4.1.1.1: EHLO with our fully qualified domain name.
        self.phase = "ehlo"
        self._expect.append("ehlo")
        return [Send(f"EHLO {self.config.helo_name}\r\n".encode("ascii"))]

    def _fail(self, reply: Reply, close: bool = True) -> list[Event]:
        """End the session: report the message in flight, then the session failure."""
        events: list[Event] = []
        failed_phase = self.phase
        if self._txn is not None:
            events += self._finish_transaction(reply, forced=True)
        self.phase = "closed"
        self._expect.clear()
        self._pending_cmds.clear()
        if not self._failed:
            self._failed = True
            events.append(SessionFailed(reply, failed_phase))
        if close:
            events.append(Close())
        return events

    def _on_reply(self, reply: Reply) -> list[Event]:
        self.replies += 1
        if self.phase == "greeting":
            if reply.code != 220:
                # RFC 5321 §3.1: a 554 (or any non-220) greeting: QUIT and give up on this server.
                self.phase = "quit"
                self._failed = True
                self._expect.append("quit")
                return [SessionFailed(reply, "greeting"), Send(b"QUIT\r\n")]
            return self._send_ehlo()
        if not self._expect:
            if reply.code == 421:
                return self._fail(reply)
            return self._fail(Reply(451, (f"4.5.0 unexpected reply: {reply}",)))
        kind = self._expect.popleft()
        if reply.code == 421 and kind != "quit":
            # RFC 5321 §3.8: the server is closing the channel.
            return self._fail(reply)
        handler = getattr(self, "_on_" + kind.replace("-", "_"))
        return handler(reply)

    # session setup

    def _on_ehlo(self, reply: Reply) -> list[Event]:
        if reply.code == 250:
            self.esmtp = True
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
                # old servers say "AUTH=PLAIN LOGIN"
                if keyword.upper().startswith("AUTH="):
                    self.extensions.setdefault("AUTH", keyword[5:] + (" " + params if params else ""))
            size = self.extensions.get("SIZE")
            if size is not None:
                self.max_size = int(size) if size.isdigit() else 0   # RFC 1870 §4: 0 or absent = no limit
            else:
                self.max_size = None
            return self._after_hello()
        if reply.permanent:
            # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
            self.phase = "helo"
            self._expect.append("helo")
            return [Send(f"HELO {self.config.helo_name}\r\n".encode("ascii"))]
        return self._fail(reply)

    def _on_helo(self, reply: Reply) -> list[Event]:
        if reply.code != 250:
            return self._fail(reply)
        self.esmtp = False
        self.extensions = {}
        self.max_size = None
        return self._after_hello()

    def _after_hello(self) -> list[Event]:
        mode = self.config.starttls
        if not self.tls and mode != "off":
            if self.supports("STARTTLS"):
                self.phase = "starttls"
                self._expect.append("starttls")
                return [Send(b"STARTTLS\r\n")]
            if mode == "required":
                return self._fail(Reply(454, ("4.7.5 TLS required but the server does not offer STARTTLS",)))
        if self.config.auth_user is not None:
            return self._start_auth()
        return self._ready()

    def _on_starttls(self, reply: Reply) -> list[Event]:
        if reply.code == 220:
            # RFC 3207 §4: start the handshake; drop whatever else the server already sent.
            self.phase = "tls-handshake"
            self._buffer = b""
            return [StartTLS()]
        if self.config.starttls == "required":
            return self._fail(Reply(454, (f"4.7.5 TLS required but STARTTLS failed: {reply}",)))
        # Opportunistic TLS: carry on in plain text (RFC 3207 §4.1 leaves that choice to the client).
        if self.config.auth_user is not None:
            return self._start_auth()
        return self._ready()

    def _start_auth(self) -> list[Event]:
        if not self.tls and not self.config.auth_without_tls:
            return self._fail(Reply(454, ("4.7.0 refusing to send credentials without TLS",)))
        offered = self.extensions.get("AUTH", "").upper().split()
        user = self.config.auth_user or ""
        password = self.config.auth_password or ""
        self.phase = "auth"
        if "PLAIN" in offered:
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd, sent as an initial response (RFC 4954 §4).
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode("ascii")
            self._auth_mech = "PLAIN"
            self._expect.append("auth")
            return [Send(f"AUTH PLAIN {token}\r\n".encode("ascii"))]
        if "LOGIN" in offered:
            self._auth_mech = "LOGIN"
            self._expect.append("auth-login-user")
            return [Send(b"AUTH LOGIN\r\n")]
        return self._fail(Reply(454, ("4.7.0 the server offers no AUTH mechanism we can use (PLAIN, LOGIN)",)))

    def _on_auth_login_user(self, reply: Reply) -> list[Event]:
        if reply.code != 334:
            return self._auth_failed(reply)
        self._expect.append("auth-login-password")
        return [Send(base64.b64encode((self.config.auth_user or "").encode()) + b"\r\n")]

    def _on_auth_login_password(self, reply: Reply) -> list[Event]:
        if reply.code != 334:
            return self._auth_failed(reply)
        self._expect.append("auth")
        return [Send(base64.b64encode((self.config.auth_password or "").encode()) + b"\r\n")]

    def _on_auth(self, reply: Reply) -> list[Event]:
        if reply.code == 334:
            # RFC 4954 §4: an unexpected challenge; cancel the exchange.
            self._expect.append("auth")
            return [Send(b"*\r\n")]
        if reply.code != 235:
            return self._auth_failed(reply)
        return self._ready()

    def _auth_failed(self, reply: Reply) -> list[Event]:
        # A refused login is our configuration's fault, never the message's: defer rather than bounce.
        return self._fail(Reply(454, (f"4.7.0 authentication failed: {reply}",)))

    def _ready(self) -> list[Event]:
        self.phase = "ready"
        return [Ready()]

    # transaction

    def _on_rset(self, reply: Reply) -> list[Event]:
        if not reply.positive:
            return self._fail(Reply(451, (f"4.5.0 RSET refused: {reply}",)))
        return self._continue()

    def _continue(self) -> list[Event]:
        if self._pending_cmds:
            return self._send_next_pending()
        if self._expect:
            self.phase = self._expect[0]
        return []

    def _on_mail(self, reply: Reply) -> list[Event]:
        txn = self._txn
        assert txn is not None
        txn.mail_reply = reply
        if not reply.positive and not self.pipelining:
            # The MAIL failed: every recipient gets its reply; nothing more to send (RFC 5321 §3.3).
            self._pending_cmds.clear()
            return self._finish_transaction(reply)
        return self._continue()

    def _on_rcpt(self, reply: Reply) -> list[Event]:
        txn = self._txn
        assert txn is not None
        rcpt = txn.message.recipients[len(txn.rcpt_replies)]
        txn.rcpt_replies.append(reply)
        events: list[Event] = []
        if txn.mail_reply is not None and txn.mail_reply.positive:
            events.append(RecipientResult(txn.message, rcpt, reply))
        if not self.pipelining and len(txn.rcpt_replies) == len(txn.message.recipients) \
                and not any(r.positive for r in txn.rcpt_replies):
            # No recipient accepted: do not send DATA (RFC 5321 §3.3).
            self._pending_cmds.clear()
            return events + self._finish_transaction(reply)
        return events + self._continue()

    def _on_data(self, reply: Reply) -> list[Event]:
        txn = self._txn
        assert txn is not None
        refused = self._refused_reply(txn)
        if reply.code == 354:
            if refused is not None:
                # RFC 2920 §3.1: a server should refuse DATA without valid recipients; if it did not, send
                # an empty message so the transaction ends and nobody receives anything.
                txn.override = refused
                self.phase = "data-end"
                self._expect.append("data-end")
                return [Send(b".\r\n")]
            return self._send_body(txn)
        # DATA refused (RFC 5321 §3.3): the reply applies to every recipient the server had accepted.
        return self._finish_transaction(refused or reply)

    @staticmethod
    def _refused_reply(txn: _Transaction) -> Reply | None:
        """The reply that sank the transaction before DATA, or None if some recipient was accepted."""
        if txn.mail_reply is not None and not txn.mail_reply.positive:
            return txn.mail_reply
        if txn.rcpt_replies and not any(r.positive for r in txn.rcpt_replies):
            return txn.rcpt_replies[-1]
        return None

    def _send_body(self, txn: _Transaction) -> list[Event]:
        self.phase = "data-block"
        blocks = _stuffed_blocks(txn.message.data, max(1, self.config.chunk_size))
        txn.body_sent = True
        self.phase = "data-end"
        self._expect.append("data-end")
        return [SendBody(blocks)]

    def _on_data_end(self, reply: Reply) -> list[Event]:
        txn = self._txn
        assert txn is not None
        return self._finish_transaction(txn.override or reply)

    def _on_quit(self, reply: Reply) -> list[Event]:
        self.phase = "closed"
        return [Close()]

    def _finish_transaction(self, reply: Reply, forced: bool = False) -> list[Event]:
        """Report the message: each recipient's final reply (RFC 5321 §3.3), then Ready unless failing.

        When the connection breaks after the whole message went out but before the final reply (`forced`),
        the remote may or may not have it (RFC 1047); the transient reply makes the queue retry.
        """
        txn = self._txn
        assert txn is not None
        self._txn = None
        outcomes: list[tuple[Recipient, Reply]] = []
        for i, rcpt in enumerate(txn.message.recipients):
            if txn.mail_reply is not None and not txn.mail_reply.positive:
                outcomes.append((rcpt, txn.mail_reply))
            elif i < len(txn.rcpt_replies) and not txn.rcpt_replies[i].positive:
                outcomes.append((rcpt, txn.rcpt_replies[i]))
            else:
                outcomes.append((rcpt, reply))
        events: list[Event] = [MessageResult(txn.message, reply, tuple(outcomes))]
        if not forced:
            events += self._ready()
        return events


def _stuffed_blocks(data: bytes, step: int) -> Iterator[bytes]:
    """The DATA stream of ``data`` (RFC 5321 §4.5.2 dot-stuffing, CRLF line ends, then ``.CRLF``) in blocks
    of about ``step`` bytes, each stuffed when it is asked for."""
    stuffer = DotStuffer()
    view = memoryview(data)
    for start in range(0, len(data), step):
        out = stuffer.feed(bytes(view[start:start + step]))
        if out:
            yield out
    yield stuffer.finish()
