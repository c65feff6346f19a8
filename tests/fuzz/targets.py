"""The fuzz targets.  Each takes arbitrary bytes; the first bytes choose options, the rest is the input.

- ``smtp_engine``: SMTP server engine in every mode; input cut into packets; actions answered from the data.
- ``smtp_address``: RFC 5321 path and ESMTP parameter parsing.
- ``pop3_engine``: POP3 engine, actions answered from the data.
- ``pop3_dotstuff``: the streaming dot-stuffer (RETR/TOP) against a one-shot reference.
- ``imap_parser``: IMAP framer + command parser (literals, nesting, every command).
- ``mime_parser``: MIME parsing of stored messages and the ENVELOPE/BODYSTRUCTURE/section renderers.
"""

from __future__ import annotations

import re
from typing import Callable

from mailsuite import mime
from mailsuite.imap.framing import Continue, Framer, Line, RawCommand, Refused, TooLong
from mailsuite.imap.parser import Command, ParseError, parse_command
from mailsuite.pop3 import engine as pop3
from mailsuite.pop3.dotstuff import DotStuffer
from mailsuite.smtp.address import AddressError, parse_params, parse_path
from mailsuite.smtp.engine import EngineConfig as SMTPConfig
from mailsuite.smtp.engine import MODES, SMTPServerEngine
from mailsuite.smtp.events import (Action, Authenticate, CheckRecipient, CheckSender, Close, Deliver,
                                   RecipientCheck, Reply, SendReply, StartTLS)

_SMTP_LINE = re.compile(rb"^[2-5][0-9][0-9][ -][\x20-\x7e]*$")


class _Bytes:
    """Draws small choices from the front of the fuzz input; the rest is the protocol input."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunks(self, rest: bytes) -> list[bytes]:
        """Cut ``rest`` into packets whose lengths come from the input itself."""
        out, i, step = [], 0, 1
        while i < len(rest):
            step = 1 + (rest[i] * 7 + step) % 97
            out.append(rest[i:i + step])
            i += step
        return out


def smtp_engine(data: bytes) -> None:
    d = _Bytes(data)
    flags = d.byte()
    mode = MODES[flags % 3]
    config = SMTPConfig(hostname="mail.example.org", max_message_size=5000, max_recipients=1 + flags % 4,
                        max_line_length=200, allow_plaintext_loopback=bool(flags & 8), tls_available=bool(flags & 16),
                        max_errors=20)
    engine = SMTPServerEngine(config, mode, "127.0.0.1", tls_active=mode == "submissions")
    answers = d.byte()
    pending: list[Action] = []
    closed = False

    def take(events: list) -> None:
        nonlocal closed
        for event in events:
            assert not closed, "event after Close"
            if isinstance(event, SendReply):
                for line in event.data[:-2].split(b"\r\n"):
                    assert _SMTP_LINE.match(line), line
            elif isinstance(event, Close):
                closed = True
            elif isinstance(event, Action):
                assert not pending, "two actions outstanding"
                if isinstance(event, Authenticate):
                    assert mode != "mx" and (engine.tls_active or config.allow_plaintext_loopback)
                if isinstance(event, Deliver):
                    assert event.envelope.recipients
                    assert mode != "mx" or all(r.status == "local" for r in event.envelope.recipients)
                    assert mode == "mx" or event.envelope.auth_user
                pending.append(event)
            else:
                assert isinstance(event, StartTLS), event

    def answer() -> None:
        nonlocal answers
        action = pending.pop()
        answers = (answers * 5 + 3) & 0xFF
        ok = bool(answers & 1)
        if isinstance(action, Authenticate):
            result = "alice@example.org" if ok else None
        elif isinstance(action, CheckSender):
            result = ok
        elif isinstance(action, CheckRecipient):
            result = RecipientCheck(("local", "unknown", "external", "error")[answers % 4])
        else:
            result = Reply(250, "2.0.0", "ok") if ok else Reply(451, "4.3.0", "later")
        take(engine.action_result(result))

    take(engine.connection_made())
    for chunk in d.chunks(data[d.pos:]):
        if closed:
            assert engine.receive_data(chunk) == []
            continue
        take(engine.receive_data(chunk))
        while pending and not closed:
            answer()
    while pending:
        answer()
    if not closed:
        take(engine.timeout())
    assert closed and engine.closed


def smtp_address(data: bytes) -> None:
    text = data[1:].decode("utf-8", "replace")
    utf8 = bool(data[:1] and data[0] & 1)
    for allow_null in (False, True):
        try:
            mailbox, rest = parse_path(text, allow_null=allow_null, utf8=utf8, postmaster_domain="example.org")
        except AddressError:
            pass
        else:
            assert isinstance(rest, str)
            if mailbox is not None:
                assert "\r" not in str(mailbox) and "\n" not in str(mailbox)
    try:
        params = parse_params(text)
    except AddressError:
        return
    for key, _value in params:
        assert key and key == key.upper()


POP3_ENTRIES = [pop3.DropEntry(key=f"k{i}", size=10 * i, uid=f"u{i}") for i in range(1, 4)]


def pop3_engine(data: bytes) -> None:
    d = _Bytes(data)
    flags = d.byte()
    config = pop3.EngineConfig(tls_active=bool(flags & 1), plaintext_allowed=bool(flags & 2),
                               max_auth_failures=1 + flags % 3)
    engine = pop3.Pop3Engine(config)
    answers = d.byte()
    pending: list = []
    closed = False
    logged_in = False

    def take(events: list) -> None:
        nonlocal closed
        for event in events:
            assert not closed, "event after Close"
            if isinstance(event, pop3.Reply):
                assert event.data.startswith((b"+OK", b"-ERR", b"+ ")) and event.data.endswith(b"\r\n")
            elif isinstance(event, pop3.Close):
                closed = True
            elif isinstance(event, pop3.StartTLS):
                assert engine.tls_active
            else:
                assert not pending, "two actions outstanding"
                if isinstance(event, pop3.Authenticate):
                    assert engine.tls_active or config.plaintext_allowed
                if isinstance(event, (pop3.SendMessage, pop3.CommitDeletions)):
                    assert logged_in
                pending.append(event)

    def answer() -> None:
        nonlocal answers, logged_in
        action = pending.pop()
        answers = (answers * 5 + 3) & 0xFF
        ok = bool(answers & 1)
        if isinstance(action, pop3.Authenticate):
            take(engine.auth_result("alice@example.org" if ok else None))
        elif isinstance(action, pop3.OpenMaildrop):
            logged_in = ok
            take(engine.maildrop_opened(POP3_ENTRIES) if ok else engine.maildrop_failed(bool(answers & 2)))
        elif isinstance(action, pop3.SendMessage):
            take(engine.message_sent() if ok else engine.message_failed())
        else:
            take(engine.update_done(ok))

    take(engine.greeting())
    for chunk in d.chunks(data[d.pos:]):
        if closed:
            assert engine.receive_data(chunk) == []
            continue
        take(engine.receive_data(chunk))
        while pending:
            answer()
    if not closed:
        take(engine.timeout())
    assert closed and engine.closed


def _reference_stuff(message: bytes, body_lines: int | None) -> bytes:
    """RFC 1939 §3 byte-stuffing of a whole CRLF message at once (the specification the streamer must meet)."""
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")[:-1] if message else []
    if body_lines is not None:
        try:
            blank = lines.index(b"")
        except ValueError:
            blank = len(lines)
        lines = lines[:blank + 1 + body_lines]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def pop3_dotstuff(data: bytes) -> None:
    d = _Bytes(data)
    choice = d.byte()
    body_lines = None if choice & 1 else choice >> 1
    message = data[d.pos:].replace(b"\r", b"").replace(b"\n", b"\r\n")   # stored messages are CRLF
    stuffer = DotStuffer(body_lines)
    out = bytearray()
    for chunk in d.chunks(message):
        out += stuffer.feed(chunk)
        if stuffer.done:
            break
    out += stuffer.finish()
    assert bytes(out) == _reference_stuff(message, body_lines)


def imap_parser(data: bytes) -> None:
    d = _Bytes(data)
    limit = 1 + d.byte() * 8

    def policy(first_line: bytes, size: int, total: int) -> bool:
        return size <= limit and total <= 4 * limit

    framer = Framer(policy, max_line=2000)
    line_mode_every = d.byte()
    count = 0
    for chunk in d.chunks(data[d.pos:]):
        framer.feed(chunk)
        while True:
            event = framer.next_event()
            if event is None:
                break
            count += 1
            if isinstance(event, RawCommand):
                assert len(event.literals) == len(event.lines) - 1
                assert all(len(lit) <= limit for lit in event.literals)
                try:
                    command = parse_command(event)
                except ParseError as exc:
                    assert isinstance(exc.message, str) and isinstance(exc.tag, str)
                else:
                    assert isinstance(command, Command)
            else:
                assert isinstance(event, (Continue, Refused, TooLong, Line)), event
            if line_mode_every and count % (line_mode_every | 1) == 0:
                framer.line_mode = not framer.line_mode        # AUTHENTICATE / IDLE switch modes
        assert framer.buffered() <= 2 * 2000 + len(chunk) + limit


def mime_parser(data: bytes) -> None:
    root = mime.parse_message(data)
    assert isinstance(mime.envelope(root), bytes)
    assert isinstance(mime.bodystructure(root), bytes)
    assert isinstance(mime.bodystructure(root, extensible=False), bytes)
    for spec in ("HEADER", "TEXT", "1", "1.MIME", "2.1.HEADER", "HEADER.FIELDS (From Subject)"):
        assert isinstance(mime.section(data, root, spec), bytes)
    part = mime.find_part(root, (1,))
    if part is not None:
        try:
            mime.binary(part)
            mime.binary_size(part)
        except mime.BinaryError:
            pass
    mime.header_values(root, "Subject")
    mime.address_search_text(root, "From")
    mime.text_search_text(root)
    mime.sent_date(root)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp_engine": smtp_engine,
    "smtp_address": smtp_address,
    "pop3_engine": pop3_engine,
    "pop3_dotstuff": pop3_dotstuff,
    "imap_parser": imap_parser,
    "mime_parser": mime_parser,
}
