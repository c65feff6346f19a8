"""The SMTP server engine: a pure state machine (bytes in, events out; no sockets, reactor or clock).

Usage (see ``adapter.py``)::

    engine = SMTPServerEngine(EngineConfig.from_settings(settings), "submission", peer_ip, tls_active=False)
    events = engine.connection_made()          # the 220 greeting
    events = engine.receive_data(data)         # SendReply / StartTLS / Close / an Action
    events = engine.action_result(result)      # after running the Action the adapter was given

Only one action is outstanding at a time; while it is, further input is buffered and answered afterwards in
order (RFC 2920 §3.1).  Modes: ``mx`` (port 25: local recipients only, no AUTH), ``submission`` (587) and
``submissions`` (465, implicit TLS): AUTH required before MAIL (RFC 6409 §4.3, RFC 4954).

Reply codes carry RFC 3463 enhanced status codes (RFC 2034 §3: every 2xx/4xx/5xx reply except the greeting and
the replies to HELO/EHLO; 334 and 354 are intermediate replies and carry none).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..limits import is_loopback
from .address import AddressError, Mailbox, is_xtext, parse_params, parse_path
from .body import MessageBody
from .events import (Action, Authenticate, CheckRecipient, CheckSender, Close, Deliver, Envelope, Event,
                     Recipient, RecipientCheck, Reply, SendReply, StartTLS)

__all__ = ["SMTPServerEngine", "EngineConfig", "MODES"]

MODES = ("mx", "submission", "submissions")
#: RFC 4954 §4: an AUTH command line or SASL response may be up to 12288 octets; we use the same bound for
#: every command line (RFC 5321 §4.5.3.1.4 allows servers to accept longer than 512)
MAX_COMMAND_LINE = 12288
_COMMAND, _SASL, _DATA, _BDAT, _CLOSED = "command", "sasl", "data", "bdat", "closed"
_TOO_LONG, _BARE_LF = object(), object()
_BDAT_RE = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)
_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
_LOGIN_USER = "334 VXNlcm5hbWU6"   # base64("Username:"), exactly what Thunderbird expects
_LOGIN_PASS = "334 UGFzc3dvcmQ6"   # base64("Password:")
# Replies sent for nearly every message, made once so that their rendering is shared (Reply.to_bytes)
_OK = Reply(250, "2.0.0", "Ok")
_SENDER_OK = Reply(250, "2.1.0", "Ok")
_RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
_GO_AHEAD = Reply(354, None, "End data with <CR><LF>.<CR><LF>")


@dataclass(frozen=True)
class EngineConfig:
    """The settings the engine needs (built from mailsuite.config.Settings by ``from_settings``)."""

    hostname: str = "localhost"
    max_message_size: int = 50 * 1024 * 1024   # RFC 1870 SIZE, octets
    max_recipients: int = 100                  # RFC 5321 §4.5.3.1.8 (at least 100)
    max_received_headers: int = 50             # RFC 5321 §6.3 loop detection
    max_line_length: int = 8192                # octets per message line, CRLF included
    vrfy: str = "252"                          # "252" (never reveal) or "502" (disabled)
    sender_must_match: bool = True
    allow_plaintext_loopback: bool = False
    max_auth_failures: int = 3
    max_errors: int = 20                       # protocol errors before 421 and disconnect
    tls_available: bool = True
    postmaster_domain: str = "localhost"       # where the bare <Postmaster> recipient goes
    # replies that only depend on the configuration, made once in __post_init__ (see _OK above)
    greeting: Reply = field(init=False, repr=False, compare=False)
    helo_reply: Reply = field(init=False, repr=False, compare=False)
    closing: Reply = field(init=False, repr=False, compare=False)
    ehlo_replies: dict[tuple[bool, bool], Reply] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = self.hostname
        object.__setattr__(self, "greeting", Reply(220, None, f"{host} ESMTP mailsuite"))
        object.__setattr__(self, "helo_reply", Reply(250, None, host))
        object.__setattr__(self, "closing", Reply(221, "2.0.0", f"{host} closing connection"))
        object.__setattr__(self, "ehlo_replies", {})

    @classmethod
    def from_settings(cls, settings: Any, *, tls_available: bool = True) -> "EngineConfig":
        smtp, auth = settings.smtp, settings.auth
        domains = tuple(getattr(settings, "domains", ()) or ())
        return cls(
            hostname=settings.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_received_headers=smtp.max_received_headers,
            max_line_length=smtp.max_line_length,
            vrfy=str(getattr(smtp, "vrfy", "252")),
            sender_must_match=getattr(smtp, "sender_must_match", True),
            allow_plaintext_loopback=auth.allow_plaintext_loopback,
            max_auth_failures=auth.max_failures,
            max_errors=getattr(smtp, "max_errors", 20),
            tls_available=tls_available,
            postmaster_domain=domains[0] if domains else settings.hostname,
        )


@dataclass
class _Transaction:
    mail_from: str
    body_type: str = "7BIT"
    smtputf8: bool = False
    size: int | None = None
    ret: str | None = None
    envid: str | None = None
    auth_param: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    body: MessageBody | None = None
    bdat_used: bool = False


class SMTPServerEngine:
    """One SMTP server session (RFC 5321) with the ESMTP extensions listed in the module docstring."""

    def __init__(self, config: EngineConfig, mode: str, peer_ip: str, tls_active: bool) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown SMTP mode {mode!r}")
        self.config = config
        self.mode = mode
        self.peer_ip = peer_ip
        self.tls_active = tls_active
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self._buf = bytearray()
        self._events: list[Event] = []
        self._phase = _COMMAND
        self._skipping = False                 # discarding the rest of an over-long line
        self._pending: Action | None = None
        self._continue: Callable[[Any], None] | None = None
        self._tx: _Transaction | None = None
        self._line_start = True                # DATA: the next byte starts a line
        self._bdat_remaining = 0
        self._bdat_last = False
        self._bdat_error: Reply | None = None
        self._sasl_step: Callable[[bytes], None] | None = None
        self._errors = 0
        self._auth_failures = 0

    # ----------------------------------------------------------------- public interface

    @property
    def closed(self) -> bool:
        return self._phase == _CLOSED

    @property
    def in_data(self) -> bool:
        """True while message content is being read (the adapter uses the data timeout then)."""
        return self._phase in (_DATA, _BDAT)

    @property
    def pending(self) -> Action | None:
        return self._pending

    @property
    def buffered(self) -> int:
        """Bytes received but not processed yet (input that arrived while an action ran)."""
        return len(self._buf)

    @property
    def auth_allowed(self) -> bool:
        """AUTH only over TLS, or on loopback when configured (RFC 4954 §4, DESIGN.md §4)."""
        if self.mode == "mx":
            return False
        return self.tls_active or (self.config.allow_plaintext_loopback and is_loopback(self.peer_ip))

    def connection_made(self) -> list[Event]:
        """The greeting (RFC 5321 §4.2: 220, no enhanced code per RFC 2034 §3)."""
        self._send(self.config.greeting)
        return self._flush()

    def receive_data(self, data: bytes) -> list[Event]:
        if self._phase == _CLOSED:
            return []
        self._buf += data
        return self._run()

    def action_result(self, result: Any) -> list[Event]:
        """Feed back the result of the outstanding action and continue with buffered input."""
        if self._pending is None or self._continue is None:
            raise RuntimeError("no action is pending")
        cont = self._continue
        self._pending = self._continue = None
        if self._phase != _CLOSED:
            cont(result)
        return self._run()

    def timeout(self) -> list[Event]:
        """The adapter's idle timer fired (RFC 5321 §4.5.3.2)."""
        if self._phase == _CLOSED:
            return []
        self._send(Reply(421, "4.4.2", f"{self.config.hostname} Error: timeout exceeded"))
        self._close()
        return self._flush()

    # ----------------------------------------------------------------- machinery

    def _flush(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _send(self, reply: Reply, *, counts: bool | None = None) -> None:
        if self._phase == _CLOSED:
            return
        self._events.append(SendReply(reply.to_bytes()))
        if counts is None:
            counts = reply.code >= 500 and reply.code != 535
        if counts:
            self._errors += 1
            if self._errors >= self.config.max_errors:
                self._events.append(SendReply(Reply(421, "4.7.0", "Too many errors, closing").to_bytes()))
                self._close()

    def _close(self) -> None:
        if self._phase != _CLOSED:
            self._events.append(Close())
            self._phase = _CLOSED
            self._buf.clear()

    def _start(self, action: Action, cont: Callable[[Any], None]) -> None:
        self._pending, self._continue = action, cont
        self._events.append(action)

    def _run(self) -> list[Event]:
        while self._pending is None and self._phase != _CLOSED:
            if self._phase == _DATA:
                if not self._step_data():
                    break
            elif self._phase == _BDAT:
                if not self._step_bdat():
                    break
            else:
                line = self._take_line()
                if line is None:
                    break
                if self._phase == _SASL:
                    self._sasl_line(line)
                else:
                    self._command_line(line)
        return self._flush()

    def _take_line(self) -> Any:
        """Next CRLF-terminated line without its CRLF, or _TOO_LONG / _BARE_LF, or None (need more)."""
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_COMMAND_LINE:
                self._skipping = True
                buf.clear()
            return None
        raw = bytes(buf[:end + 1])
        del buf[:end + 1]
        if self._skipping or len(raw) > MAX_COMMAND_LINE:
            self._skipping = False
            return _TOO_LONG
        if end == 0 or raw[-2] != 0x0D:
            # RFC 5321 §2.3.8: lines end with CRLF; a bare LF is not a line end we act on
            return _BARE_LF
        return raw[:-2]

    # ----------------------------------------------------------------- commands

    def _command_line(self, line: Any) -> None:
        if line is _TOO_LONG:
            self._send(Reply(500, "5.5.2", "Line too long"))   # RFC 5321 §4.5.3.1.4
            return
        if line is _BARE_LF:
            self._send(Reply(500, "5.5.2", "Syntax error: lines must end with CRLF"))
            return
        if b"\r" in line or b"\0" in line:
            self._send(Reply(500, "5.5.2", "Syntax error: bare CR or NUL in command"))
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._send(Reply(500, "5.5.2", "Syntax error: invalid UTF-8"))
            return
        verb, _, arg = text.partition(" ")
        handler = self._HANDLERS.get(verb.upper())
        if handler is None:
            self._send(Reply(500, "5.5.2", "Command unrecognized"))
            return
        handler(self, arg)

    def _reset_tx(self) -> None:
        self._tx = None

    def _cmd_helo(self, arg: str) -> None:
        self._greet(arg, esmtp=False)

    def _cmd_ehlo(self, arg: str) -> None:
        self._greet(arg, esmtp=True)

    def _greet(self, arg: str, *, esmtp: bool) -> None:
        name = arg.strip(" ")
        if not name or " " in name:
            self._send(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        # RFC 5321 §4.1.4: EHLO/HELO resets the transaction state like RSET
        self._reset_tx()
        self.helo, self.esmtp = name, esmtp
        if not esmtp:
            self._send(self.config.helo_reply)
            return
        starttls = not self.tls_active and self.config.tls_available
        auth = self.auth_allowed
        cached = self.config.ehlo_replies.get((starttls, auth))
        if cached is None:
            cached = self.config.ehlo_replies[(starttls, auth)] = self._ehlo_reply(starttls, auth)
        self._send(cached)

    def _ehlo_reply(self, starttls: bool, auth: bool) -> Reply:
        lines = [self.config.hostname, "PIPELINING"]                   # RFC 2920
        if self.config.max_message_size:
            lines.append(f"SIZE {self.config.max_message_size}")      # RFC 1870
        else:
            lines.append("SIZE")
        lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if starttls:
            lines.append("STARTTLS")                                   # RFC 3207: before TLS only
        if auth:
            lines.append("AUTH PLAIN LOGIN")                           # RFC 4954 §3; one line "AUTH "
        lines.append("HELP")
        return Reply(250, None, tuple(lines))

    def _cmd_mail(self, arg: str) -> None:
        if self.helo is None:
            self._send(Reply(503, "5.5.1", "Send HELO/EHLO first"))
            return
        if self._tx is not None:
            self._send(Reply(503, "5.5.1", "Nested MAIL command"))
            return
        if self.mode != "mx" and self.auth_user is None:
            if not self.auth_allowed:
                self._send(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))   # RFC 3207 §4
            else:
                self._send(Reply(530, "5.7.0", "Authentication required"))             # RFC 4954 §6
            return
        if arg[:5].upper() != "FROM:":
            self._send(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        try:
            sender, rest = parse_path(arg[5:].lstrip(" "), allow_null=True, utf8=True)
        except AddressError:
            self._send(Reply(501, "5.1.7", "Bad sender address syntax"))
            return
        params = self._parameters(rest)
        if params is None:
            return
        tx = _Transaction(mail_from=sender.address if sender else "")
        for key, value in params:
            problem = self._mail_param(tx, key, value)
            if problem is not None:
                self._send(problem)
                return
        if sender is not None and not tx.smtputf8 and not tx.mail_from.isascii():
            self._send(Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"))   # RFC 6531 §3.5
            return
        if self.mode != "mx" and self.config.sender_must_match and self.auth_user is not None:
            def checked(ok: Any) -> None:
                if ok is True:
                    self._tx = tx
                    self._send(_SENDER_OK)
                else:
                    self._send(Reply(553, "5.7.1", "Sender address rejected: not owned by user"))
            self._start(CheckSender(self.auth_user, tx.mail_from), checked)
            return
        self._tx = tx
        self._send(_SENDER_OK)

    def _parameters(self, rest: str) -> list[tuple[str, str | None]] | None:
        """MAIL/RCPT ESMTP parameters (RFC 5321 §4.1.2), each keyword once; None after a 501 was sent."""
        try:
            params = parse_params(rest)
        except AddressError:
            self._send(Reply(501, "5.5.4", "Bad parameter syntax"))
            return None
        seen: set[str] = set()
        for key, _value in params:
            if key in seen:
                self._send(Reply(501, "5.5.4", f"Duplicate {key} parameter"))
                return None
            seen.add(key)
        return params

    def _mail_param(self, tx: _Transaction, key: str, value: str | None) -> Reply | None:
        """Apply one MAIL parameter; return an error reply or None."""
        if key == "SIZE":                                             # RFC 1870 §6
            if value is None or not value.isdigit() or len(value) > 20:
                return Reply(501, "5.5.4", "Bad SIZE parameter")
            tx.size = int(value)
            if self.config.max_message_size and tx.size > self.config.max_message_size:
                return Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif key == "BODY":                                           # RFC 6152 §3
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
            tx.body_type = value.upper()
        elif key == "SMTPUTF8":                                       # RFC 6531 §3.4
            if value is not None:
                return Reply(501, "5.5.4", "SMTPUTF8 takes no value")
            tx.smtputf8 = True
        elif key == "RET":                                            # RFC 3461 §4.3
            if value is None or value.upper() not in ("FULL", "HDRS"):
                return Reply(501, "5.5.4", "RET must be FULL or HDRS")
            tx.ret = value.upper()
        elif key == "ENVID":                                          # RFC 3461 §4.4
            if value is None or len(value) > 100 or not is_xtext(value):
                return Reply(501, "5.5.4", "Bad ENVID parameter")
            tx.envid = value
        elif key == "AUTH":                                           # RFC 4954 §5
            if value is None or (value != "<>" and not is_xtext(value)):
                return Reply(501, "5.5.4", "Bad AUTH parameter")
            tx.auth_param = value
        else:
            return Reply(555, "5.5.4", f"Unsupported parameter {key}")  # RFC 5321 §4.1.1.11
        return None

    def _cmd_rcpt(self, arg: str) -> None:
        tx = self._tx
        if tx is None:
            self._send(Reply(503, "5.5.1", "Need MAIL command"))
            return
        if tx.bdat_used:
            self._send(Reply(503, "5.5.1", "RCPT not allowed after BDAT"))
            return
        if arg[:3].upper() != "TO:":
            self._send(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        try:
            rcpt, rest = parse_path(arg[3:].lstrip(" "), allow_null=False, utf8=True,
                                    postmaster_domain=self.config.postmaster_domain)
        except AddressError:
            self._send(Reply(501, "5.1.3", "Bad recipient address syntax"))
            return
        params = self._parameters(rest)
        if params is None:
            return
        assert rcpt is not None
        notify: tuple[str, ...] = ()
        orcpt: str | None = None
        for key, value in params:
            if key == "NOTIFY":                                       # RFC 3461 §4.1
                items = tuple((value or "").upper().split(","))
                if not value or not set(items) <= _NOTIFY or ("NEVER" in items and len(items) > 1):
                    self._send(Reply(501, "5.5.4", "Bad NOTIFY parameter"))
                    return
                notify = items
            elif key == "ORCPT":                                      # RFC 3461 §4.2
                kind, semi, addr = (value or "").partition(";")
                if not semi or not kind or not kind.isascii() or not addr or not is_xtext(addr) \
                        or len(value or "") > 500:
                    self._send(Reply(501, "5.5.4", "Bad ORCPT parameter"))
                    return
                orcpt = value
            else:
                self._send(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
                return
        if not tx.smtputf8 and not rcpt.address.isascii():
            self._send(Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"))   # RFC 6531 §3.5
            return
        if len(tx.recipients) >= self.config.max_recipients:
            self._send(Reply(452, "4.5.3", "Too many recipients"))    # RFC 5321 §4.5.3.1.10
            return
        if any(c in rcpt.local for c in "@%!"):
            # RFC 5321 §3.6.1/§C: no percent hack, bang paths or "user@host"@relay routing through us
            self._send(Reply(550, "5.7.1", "Relay access denied: routing characters in local part"))
            return
        self._start(CheckRecipient(rcpt.address),
                    lambda result: self._rcpt_checked(tx, rcpt, notify, orcpt, result))

    def _rcpt_checked(self, tx: _Transaction, rcpt: Mailbox, notify: tuple[str, ...], orcpt: str | None,
                      result: Any) -> None:
        status = result.status if isinstance(result, RecipientCheck) else "error"
        if status == "unknown":
            self._send(Reply(550, "5.1.1", "Recipient address rejected: user unknown"))
            return
        if status == "external":
            if self.mode == "mx" or self.auth_user is None:
                # DESIGN.md §4: never an open relay
                self._send(Reply(554, "5.7.1", "Relay access denied"))
                return
            if tx.mail_from == "":
                self._send(Reply(550, "5.7.1", "Null sender may not send to remote recipients"))
                return
        elif status != "local":
            self._send(Reply(451, "4.3.0", "Temporary recipient lookup failure"), counts=False)
            return
        tx.recipients.append(Recipient(rcpt.address, status, result.data, notify, orcpt))
        self._send(_RECIPIENT_OK)

    def _cmd_data(self, arg: str) -> None:
        tx = self._tx
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: DATA"))
        elif tx is None:
            self._send(Reply(503, "5.5.1", "Need MAIL command"))
        elif tx.bdat_used:
            self._send(Reply(503, "5.5.1", "DATA not allowed after BDAT"))    # RFC 3030 §3
        elif not tx.recipients:
            self._send(Reply(554, "5.5.1", "No valid recipients"))            # RFC 5321 §3.3
        else:
            tx.body = self._new_body()
            self._line_start = True
            self._phase = _DATA
            self._send(_GO_AHEAD)

    def _new_body(self) -> MessageBody:
        return MessageBody(self.config.max_message_size, max(self.config.max_line_length - 2, 1))

    def _step_data(self) -> bool:
        """Consume DATA content; True when the end-of-data line was found (RFC 5321 §4.1.1.4)."""
        buf = self._buf
        body = self._tx.body if self._tx is not None else None
        assert body is not None
        pos, n = 0, len(buf)
        finished = False
        while pos < n:
            if self._line_start:
                if buf[pos] == 0x2E:
                    head = bytes(buf[pos:pos + 3])
                    if head == b".\r\n":
                        pos += 3
                        finished = True
                        break
                    if len(head) < 3 and b".\r\n".startswith(head):
                        break                                         # need more bytes to decide
                    pos += 1                                          # RFC 5321 §4.5.2: drop stuffed dot
                self._line_start = False
                continue
            nxt = buf.find(b"\r\n.", pos)
            if nxt >= 0:
                body.feed(bytes(buf[pos:nxt + 2]))
                pos = nxt + 2
                self._line_start = True
                continue
            if n - pos >= 2 and buf[n - 2:n] == b"\r\n":
                body.feed(bytes(buf[pos:n]))
                self._line_start = True
                pos = n
            elif buf[n - 1] == 0x0D:
                body.feed(bytes(buf[pos:n - 1]))                      # keep a CR that may start CRLF
                pos = n - 1
            else:
                body.feed(bytes(buf[pos:n]))
                pos = n
            break
        del buf[:pos]
        if finished:
            self._phase = _COMMAND
            self._end_of_message()
        return finished

    def _cmd_bdat(self, arg: str) -> None:
        match = _BDAT_RE.fullmatch(arg)
        if match is None:
            self._send(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
            return
        tx = self._tx
        error: Reply | None = None
        if tx is None:
            error = Reply(503, "5.5.1", "Need MAIL command")
        elif tx.body is not None and not tx.bdat_used:
            error = Reply(503, "5.5.1", "BDAT not allowed after DATA")
        elif not tx.recipients:
            error = Reply(554, "5.5.1", "No valid recipients")
        else:
            tx.bdat_used = True
            if tx.body is None:
                tx.body = self._new_body()
        # RFC 3030 §2: the chunk is read (and discarded on error) whatever the reply will be
        self._bdat_remaining = int(match.group(1))
        self._bdat_last = match.group(2) is not None
        self._bdat_error = error
        self._phase = _BDAT

    def _step_bdat(self) -> bool:
        take = min(self._bdat_remaining, len(self._buf))
        if take:
            chunk = bytes(self._buf[:take])
            del self._buf[:take]
            self._bdat_remaining -= take
            if self._bdat_error is None and self._tx is not None and self._tx.body is not None:
                self._tx.body.feed(chunk)
        if self._bdat_remaining:
            return False
        self._phase = _COMMAND
        size = 0 if self._tx is None or self._tx.body is None else self._tx.body.size
        if self._bdat_error is not None:
            self._reset_tx()
            self._send(self._bdat_error)
        elif self._tx is not None and self._tx.body is not None and self._tx.body.too_big:
            self._reset_tx()
            self._send(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"), counts=False)
        elif self._bdat_last:
            self._end_of_message()
        else:
            self._send(Reply(250, "2.0.0", f"{size} octets received"))
        return True

    def _end_of_message(self) -> None:
        tx = self._tx
        assert tx is not None and tx.body is not None
        body = tx.body
        data = body.finish()
        problem: Reply | None = None
        if body.too_big:
            problem = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")   # RFC 1870 §6
        elif body.has_nul:
            problem = Reply(554, "5.6.0", "Message contains NUL characters")
        elif body.line_too_long:
            problem = Reply(500, "5.5.6", "Message line too long")    # RFC 5321 §4.5.3.1.6
        elif MessageBody.count_received(data) > self.config.max_received_headers:
            problem = Reply(554, "5.4.6", "Too many Received headers: mail loop")  # RFC 5321 §6.3
        if problem is not None:
            self._reset_tx()
            self._send(problem, counts=False)
            return
        envelope = Envelope(
            mail_from=tx.mail_from, recipients=list(tx.recipients), helo=self.helo or "", esmtp=self.esmtp,
            peer_ip=self.peer_ip, tls=self.tls_active, auth_user=self.auth_user, body=tx.body_type,
            smtputf8=tx.smtputf8, size=tx.size, ret=tx.ret, envid=tx.envid, auth_param=tx.auth_param)

        def delivered(result: Any) -> None:
            self._reset_tx()
            if isinstance(result, Reply):
                self._send(result, counts=False)
            else:
                self._send(Reply(451, "4.3.0", "Local delivery failed, try again later"), counts=False)
        self._start(Deliver(envelope, data), delivered)

    def _cmd_rset(self, arg: str) -> None:
        if arg.strip(" "):
            self._send(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self._reset_tx()
        self._send(_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._send(_OK)                                               # RFC 5321 §4.1.1.9: args ignored

    def _cmd_quit(self, arg: str) -> None:
        self._send(self.config.closing)
        self._close()

    def _cmd_help(self, arg: str) -> None:
        self._send(Reply(214, "2.0.0", (
            "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN STARTTLS AUTH",
            "See RFC 5321")))

    def _cmd_vrfy(self, arg: str) -> None:
        self._no_disclosure(arg, "VRFY")

    def _cmd_expn(self, arg: str) -> None:
        self._no_disclosure(arg, "EXPN")

    def _no_disclosure(self, arg: str, verb: str) -> None:
        # RFC 5321 §3.5.3 / §7.3: answer without revealing whether the account or list exists
        if not arg.strip(" "):
            self._send(Reply(501, "5.5.4", f"Syntax: {verb} address"))
        elif self.config.vrfy == "252":
            self._send(Reply(252, "2.5.0", "Cannot verify, but will accept message and attempt delivery"))
        else:
            self._send(Reply(502, "5.5.1", f"{verb} command disabled"))

    def _cmd_obsolete(self, arg: str) -> None:
        self._send(Reply(502, "5.5.1", "Command not implemented"))   # SEND SOML SAML TURN, RFC 5321 §4.2.4

    def _cmd_starttls(self, arg: str) -> None:
        if arg.strip(" "):
            self._send(Reply(501, "5.5.4", "Syntax: STARTTLS"))
        elif self.tls_active:
            self._send(Reply(503, "5.5.1", "TLS already active"))
        elif not self.config.tls_available:
            self._send(Reply(454, "4.7.0", "TLS not available"), counts=False)   # RFC 3207 §4
        else:
            self._send(Reply(220, "2.0.0", "Ready to start TLS"))
            self._events.append(StartTLS())
            # RFC 3207 §4.2 / DESIGN.md §4: drop anything pipelined after STARTTLS (the injection attack)
            # and forget everything learnt from the client: a new EHLO is required.
            self._buf.clear()
            self._skipping = False
            self.tls_active = True
            self.helo, self.esmtp, self.auth_user = None, False, None
            self._reset_tx()

    # ----------------------------------------------------------------- AUTH (RFC 4954, 4616)

    def _cmd_auth(self, arg: str) -> None:
        if self.mode == "mx":
            self._send(Reply(502, "5.5.1", "AUTH not available on this port"))
            return
        parts = arg.split(" ")
        if not arg or len(parts) > 2 or not parts[0]:
            self._send(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        if self.helo is None or not self.esmtp:
            self._send(Reply(503, "5.5.1", "Send EHLO first"))
            return
        if self.auth_user is not None:
            self._send(Reply(503, "5.5.1", "Already authenticated"))   # RFC 4954 §4
            return
        if self._tx is not None:
            self._send(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        mech = parts[0].upper()
        if mech not in ("PLAIN", "LOGIN"):
            self._send(Reply(504, "5.5.4", "Unrecognized authentication type"))
            return
        if not self.auth_allowed:
            # RFC 4954 §6 / DESIGN.md §4: refuse before TLS without looking at the credentials
            self._send(Reply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
            return
        initial = parts[1] if len(parts) == 2 else None
        if mech == "PLAIN":
            if initial is None:
                self._sasl(Reply(334, None, ""), self._plain_response)
            else:
                self._sasl_decode(initial, self._plain_response, initial=True)
        else:
            if initial is None:
                self._sasl(Reply(334, None, _LOGIN_USER[4:]), self._login_user)
            else:
                self._sasl_decode(initial, self._login_user, initial=True)

    def _sasl(self, challenge: Reply, step: Callable[[bytes], None]) -> None:
        self._phase = _SASL
        self._sasl_step = step
        self._send(challenge)

    def _sasl_line(self, line: Any) -> None:
        step, self._sasl_step = self._sasl_step, None
        self._phase = _COMMAND
        if line is _TOO_LONG:
            self._send(Reply(500, "5.5.6", "Authentication exchange line is too long"))   # RFC 4954 §4
            return
        if line is _BARE_LF:
            self._send(Reply(501, "5.5.2", "Syntax error: lines must end with CRLF"))
            return
        if line == b"*":
            self._send(Reply(501, "5.7.0", "Authentication cancelled"))                   # RFC 4954 §4
            return
        assert step is not None
        self._sasl_decode(line.decode("latin-1"), step, initial=False)

    def _sasl_decode(self, text: str, step: Callable[[bytes], None], *, initial: bool) -> None:
        if initial and text == "=":
            step(b"")                                     # RFC 4954 §4: "=" is an empty initial response
            return
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            self._send(Reply(501, "5.5.2", "Invalid base64 data"))                        # RFC 4954 §4
            return
        step(raw)

    def _plain_response(self, raw: bytes) -> None:
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        parts = raw.split(b"\0")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts) if len(parts) == 3 else ("", "", "")
        except UnicodeDecodeError:
            authzid = authcid = password = ""
        if not authcid or not password:
            self._send(Reply(501, "5.5.2", "Malformed PLAIN response"))
            return
        if authzid and authzid != authcid:
            # no proxy authorization: a different authzid fails without a password check (RFC 4616 §2)
            self._auth_done(None)
            return
        self._start(Authenticate("PLAIN", authcid, password), self._auth_done)

    def _login_user(self, raw: bytes) -> None:
        try:
            user = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._send(Reply(501, "5.5.2", "Invalid user name encoding"))
            return
        self._sasl(Reply(334, None, _LOGIN_PASS[4:]), lambda pw: self._login_password(user, pw))

    def _login_password(self, user: str, raw: bytes) -> None:
        try:
            password = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._send(Reply(501, "5.5.2", "Invalid password encoding"))
            return
        if not user or not password:
            self._auth_done(None)
            return
        self._start(Authenticate("LOGIN", user, password), self._auth_done)

    def _auth_done(self, user: Any) -> None:
        if isinstance(user, str) and user:
            self.auth_user = user
            self._send(Reply(235, "2.7.0", "Authentication successful"))
            return
        self._auth_failures += 1
        self._send(Reply(535, "5.7.8", "Authentication credentials invalid"))             # RFC 4954 §6
        if self._auth_failures >= self.config.max_auth_failures:
            self._send(Reply(421, "4.7.0", "Too many authentication failures"), counts=False)
            self._close()

    _HANDLERS: dict[str, Callable[["SMTPServerEngine", str], None]] = {
        "HELO": _cmd_helo, "EHLO": _cmd_ehlo, "MAIL": _cmd_mail, "RCPT": _cmd_rcpt, "DATA": _cmd_data,
        "BDAT": _cmd_bdat, "RSET": _cmd_rset, "NOOP": _cmd_noop, "QUIT": _cmd_quit, "HELP": _cmd_help,
        "VRFY": _cmd_vrfy, "EXPN": _cmd_expn, "STARTTLS": _cmd_starttls, "AUTH": _cmd_auth,
        "SEND": _cmd_obsolete, "SOML": _cmd_obsolete, "SAML": _cmd_obsolete, "TURN": _cmd_obsolete,
    }
