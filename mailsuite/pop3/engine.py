"""The POP3 server engine: a pure state machine (RFC 1939, 2449, 2595, 3206, 5034, 6856).

No sockets, no reactor, no clock (the h11 style, DESIGN.md §1): the adapter feeds the bytes it reads to
``receive_data()`` and gets back a list of events, in the order they must be handled:

* ``Reply(data)``: bytes to write to the client (one complete single- or multi-line response);
* ``StartTLS()``: start the TLS handshake now (everything the client sent before it has been discarded);
* ``Close()``: close the connection once everything before it has been written;
* actions, whose result the adapter feeds back through the matching method:
  ``Authenticate`` → ``auth_result()``, ``OpenMaildrop`` → ``maildrop_opened()`` / ``maildrop_failed()``,
  ``SendMessage`` → ``message_sent()`` / ``message_failed()``, ``CommitDeletions`` → ``update_done()``.

While an action is pending the engine only buffers input; the result method answers the buffered commands in
order (RFC 2449 §6.6 PIPELINING) and returns the events that follow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence, Union

__all__ = [
    "Pop3Engine", "EngineConfig", "DropEntry", "Reply", "StartTLS", "Close", "Authenticate", "OpenMaildrop",
    "SendMessage", "CommitDeletions", "Event", "uidl_for", "MAX_LINE",
]

#: longest accepted input line without CRLF.  RFC 2449 §4 caps commands at 255 octets; SASL responses
#: (RFC 5034 §4) may be longer, so the engine allows some room before answering "line too long".
MAX_LINE = 4096
#: consecutive unknown or malformed commands before the server hangs up
MAX_BAD_COMMANDS = 20


# -- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Bytes to send: one complete response."""
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Begin the TLS handshake now (RFC 2595 §4)."""


@dataclass(frozen=True)
class Close:
    """Close the connection after writing what came before."""


@dataclass(frozen=True)
class Authenticate:
    """Check ``password`` for ``user``; feed the canonical user name (or None) to ``auth_result()``."""
    user: str
    password: str
    mechanism: str            # "USER", "PLAIN" or "LOGIN" (for the log line)


@dataclass(frozen=True)
class OpenMaildrop:
    """Lock ``user``'s maildrop and list it; feed ``maildrop_opened(entries)`` or ``maildrop_failed()``."""
    user: str


@dataclass(frozen=True)
class SendMessage:
    """Send message ``key``: if it can be opened, write ``ok_line``, then the file through a
    ``DotStuffer(body_lines)`` (None for the whole message) and its ``finish()``; then call
    ``message_sent()``.  If it cannot be opened, call ``message_failed()`` before writing anything."""
    key: str
    ok_line: bytes
    body_lines: int | None
    mark_seen: bool


@dataclass(frozen=True)
class CommitDeletions:
    """UPDATE state (RFC 1939 §6): remove ``keys`` from ``user``'s maildrop; feed ``update_done(ok)``."""
    user: str
    keys: tuple[str, ...]


Event = Union[Reply, StartTLS, Close, Authenticate, OpenMaildrop, SendMessage, CommitDeletions]


@dataclass(frozen=True)
class DropEntry:
    """One message of the maildrop as listed at login."""
    key: str                  # the adapter's handle on the message (the Maildir base name)
    size: int                 # octets as sent (RFC 1939 §5 "exact size")
    uid: str                  # unique-id listing (RFC 1939 §7), see ``uidl_for``


@dataclass(frozen=True)
class EngineConfig:
    tls_active: bool = False              # implicit TLS (pop3s) is on from the start
    tls_available: bool = True            # offer STLS (RFC 2595 §4)
    plaintext_allowed: bool = False       # clear-text auth allowed without TLS (loopback by config)
    max_auth_failures: int = 3
    mark_seen_on_retr: bool = True
    implementation: str = "mailsuite"
    greeting: str = "mailsuite POP3 server ready"


_UIDL_OK = re.compile(r"^[\x21-\x7e]{1,70}$")


def uidl_for(name: str) -> str:
    """A unique-id for a Maildir base name: the name itself when RFC 1939 §7 allows it (1-70 characters in
    0x21-0x7E), else a digest of it; both are stable for as long as the file keeps its name."""
    if _UIDL_OK.match(name):
        return name
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


class _State(Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    CLOSED = "closed"


class _Wait(Enum):
    """What the engine is waiting for before it reads the next command."""
    NOTHING = "nothing"
    AUTH = "auth"                     # Authenticate result
    MAILDROP = "maildrop"             # OpenMaildrop result
    MESSAGE = "message"               # SendMessage done
    UPDATE = "update"                 # CommitDeletions result
    SASL = "sasl"                     # a client continuation line (AUTH exchange)


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_LOGIN_USER = b"+ " + base64.b64encode(b"Username:") + b"\r\n"    # RFC 5034 §4 / draft-murchison-sasl-login
_LOGIN_PASS = b"+ " + base64.b64encode(b"Password:") + b"\r\n"
_NUMBER = re.compile(r"^[0-9]{1,9}$")
_COUNT = re.compile(r"^[0-9]{1,18}$")


def _ok(text: str = "") -> Reply:
    return Reply((f"+OK {text}" if text else "+OK").encode("utf-8") + b"\r\n")


def _err(text: str, code: str | None = None) -> Reply:
    # RFC 2449 §8 / RFC 3206: an extended response code in brackets right after -ERR
    prefix = f"[{code}] " if code else ""
    return Reply(f"-ERR {prefix}{text}\r\n".encode("utf-8"))


def _multi(first: str, lines: Sequence[str]) -> Reply:
    """A multi-line response (RFC 1939 §3); the lines here never start with '.', stuffed all the same."""
    body = "".join(("." + line if line.startswith(".") else line) + "\r\n" for line in lines)
    return Reply(f"+OK {first}\r\n{body}.\r\n".encode("utf-8"))


class Pop3Engine:
    """One POP3 session.  Start with ``greeting()``, then ``receive_data()`` and the result methods."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self._tls = self.config.tls_active
        self._state = _State.AUTHORIZATION
        self._wait = _Wait.NOTHING
        self._buffer = bytearray()
        self._discarding = False          # inside an over-long line, dropping bytes until LF
        self._bad_commands = 0
        self._auth_failures = 0
        self._user_arg: str | None = None  # the name given by USER, waiting for PASS
        self._pass_user: str | None = None # the USER name while its PASS command runs
        self._sasl_mech = ""
        self._sasl_user = ""
        self._sasl_step = 0
        self._pending_user: str | None = None
        self.user: str | None = None      # the authenticated user (TRANSACTION state)
        self._entries: list[DropEntry] = []
        self._deleted: set[int] = set()   # 0-based indexes marked by DELE
        self.utf8 = False                 # RFC 6856 §2 UTF8 mode

    # -- properties the adapter may read --------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def busy(self) -> bool:
        """True while an action is pending (input is only buffered)."""
        return self._wait not in (_Wait.NOTHING, _Wait.SASL)

    @property
    def buffered(self) -> int:
        """Bytes of input waiting to be read (the adapter pauses reading when this grows)."""
        return len(self._buffer)

    # -- input ----------------------------------------------------------------------------------------

    def greeting(self) -> list[Event]:
        # RFC 1939 §4: the greeting; no APOP timestamp since APOP is not offered (RFC 1939 §7)
        return [_ok(self.config.greeting)]

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the connection."""
        if self._state is _State.CLOSED:
            return []
        self._buffer += data
        return self._run()

    def timeout(self) -> list[Event]:
        """The idle timer fired: RFC 1939 §3 autologout, without entering the UPDATE state."""
        if self._state is _State.CLOSED:
            return []
        self._state = _State.CLOSED        # a result still pending is ignored when it comes
        return [_err("autologout; idle for too long"), Close()]

    # -- action results -------------------------------------------------------------------------------

    def auth_result(self, user: str | None) -> list[Event]:
        if not self._resume(_Wait.AUTH):
            return []
        if user is None:
            self._auth_failures += 1
            events: list[Event] = [_err("authentication failed", "AUTH")]   # RFC 3206 §4
            if self._auth_failures >= self.config.max_auth_failures:
                self._state = _State.CLOSED
                return events + [Close()]
            return events + self._run()
        self._pending_user = user
        self._wait = _Wait.MAILDROP
        return [OpenMaildrop(user)]

    def maildrop_opened(self, entries: Sequence[DropEntry]) -> list[Event]:
        if not self._resume(_Wait.MAILDROP):
            return []
        self.user, self._pending_user = self._pending_user, None
        self._entries = list(entries)
        self._state = _State.TRANSACTION
        count, size = len(self._entries), sum(e.size for e in self._entries)
        return [_ok(f"logged in, {count} messages ({size} octets)")] + self._run()

    def maildrop_failed(self, in_use: bool) -> list[Event]:
        """The maildrop could not be locked (``in_use``) or read; stay in AUTHORIZATION (RFC 1939 §4)."""
        if not self._resume(_Wait.MAILDROP):
            return []
        self._pending_user = None
        if in_use:
            reply = _err("maildrop already locked by another POP3 session", "IN-USE")   # RFC 2449 §8.1.1
        else:
            reply = _err("maildrop temporarily unavailable", "SYS/TEMP")                # RFC 3206 §4
        return [reply] + self._run()

    def message_sent(self) -> list[Event]:
        if not self._resume(_Wait.MESSAGE):
            return []
        return self._run()

    def message_failed(self) -> list[Event]:
        """The message could not be opened (removed by IMAP meanwhile); nothing was written for it."""
        if not self._resume(_Wait.MESSAGE):
            return []
        return [_err("message no longer available", "SYS/TEMP")] + self._run()

    def update_done(self, ok: bool) -> list[Event]:
        if not self._resume(_Wait.UPDATE):
            return []
        self._state = _State.CLOSED
        if ok:
            return [_ok("bye"), Close()]
        # RFC 1939 §6: -ERR if some deleted messages could not be removed
        return [_err("some deleted messages not removed", "SYS/TEMP"), Close()]

    def _resume(self, wait: _Wait) -> bool:
        """Check that ``wait`` was pending and clear it; False when the session closed meanwhile."""
        if self._wait is not wait:
            raise RuntimeError(f"POP3 engine got a {wait.value} result while waiting for {self._wait.value}")
        self._wait = _Wait.NOTHING
        return self._state is not _State.CLOSED

    # -- line splitting -------------------------------------------------------------------------------

    def _run(self) -> list[Event]:
        """Answer complete buffered lines until an action is pending, the session closes or input runs out."""
        events: list[Event] = []
        buf = self._buffer
        pos = 0                            # lines before ``pos`` are consumed; compacted once at the end
        while self._state is not _State.CLOSED and not self.busy:
            end = buf.find(b"\n", pos)
            if self._discarding:
                if end < 0:
                    pos = len(buf)
                    break
                pos = end + 1
                self._discarding = False
                continue
            if end < 0:
                # the line so far cannot fit even if CRLF came next
                if len(buf) - pos > MAX_LINE + 1:
                    pos = len(buf)
                    self._discarding = True
                    events += self._line_too_long()
                break
            raw = bytes(buf[pos:end])
            pos = end + 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > MAX_LINE:
                events += self._line_too_long()
                continue
            events += self._line(raw)
            if buf is not self._buffer:    # STLS replaced the buffer: nothing left to read
                return events
        del buf[:pos]
        return events

    def _line_too_long(self) -> list[Event]:
        if self._wait is _Wait.SASL:
            self._wait = _Wait.NOTHING
            return [_err("authentication line too long")] + self._bad()
        return [_err("line too long")] + self._bad()

    def _bad(self) -> list[Event]:
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self._state = _State.CLOSED
            return [_err("too many bad commands"), Close()]
        return []

    def _line(self, raw: bytes) -> list[Event]:
        if _CONTROL.search(raw):
            # RFC 1939 §3: keywords and arguments are printable (UTF-8 with RFC 6856); a bare CR or NUL
            # inside a line is never a separator, so such a line is refused as a whole.
            self._pass_user = self._user_arg = None
            if self._wait is _Wait.SASL:
                self._wait = _Wait.NOTHING
            return [_err("control characters are not allowed in a command")] + self._bad()
        text = raw.decode("utf-8", "replace")
        if self._wait is _Wait.SASL:
            return self._sasl_continue(text)
        keyword, _, arg = text.partition(" ")
        keyword = keyword.upper()
        handler = (_AUTHORIZATION if self._state is _State.AUTHORIZATION else _TRANSACTION).get(keyword)
        # RFC 1939 §7: PASS must come right after USER; any other command forgets the name
        self._pass_user, self._user_arg = self._user_arg, None
        if handler is None:
            if keyword in _AUTHORIZATION or keyword in _TRANSACTION:
                return [_err(f"{keyword} not valid in this state")] + self._bad()
            return [_err("unknown command")] + self._bad()
        events = handler(self, arg)
        if events and isinstance(events[0], Reply) and events[0].data.startswith(b"+"):
            self._bad_commands = 0
        return events

    # -- commands valid in both states ----------------------------------------------------------------

    def _capa(self, arg: str) -> list[Event]:
        # RFC 2449 §5: capabilities valid for the current state
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UTF8",
                "EXPIRE NEVER", f"IMPLEMENTATION {self.config.implementation}"]
        if self._state is _State.AUTHORIZATION:
            if self._auth_allowed():
                caps += ["USER", "SASL PLAIN LOGIN"]
            if not self._tls and self.config.tls_available:
                caps.append("STLS")   # RFC 2595 §4
        return [_multi("capability list follows", caps)]

    def _quit(self, arg: str) -> list[Event]:
        if self._state is _State.AUTHORIZATION:
            # RFC 1939 §4: QUIT in AUTHORIZATION does not enter the UPDATE state
            self._state = _State.CLOSED
            return [_ok("bye"), Close()]
        # RFC 1939 §6: the UPDATE state removes the messages marked as deleted
        keys = tuple(self._entries[i].key for i in sorted(self._deleted))
        if not keys:
            self._state = _State.CLOSED
            return [_ok("bye"), Close()]
        self._wait = _Wait.UPDATE
        return [CommitDeletions(self.user or "", keys)]

    # -- AUTHORIZATION --------------------------------------------------------------------------------

    def _auth_allowed(self) -> bool:
        # RFC 2595 §2.2 / DESIGN §4: clear-text passwords only inside TLS (loopback exemption by config)
        return self._tls or self.config.plaintext_allowed

    def _refuse_plaintext(self) -> list[Event]:
        # RFC 3206 §4 SYS/PERM: the client must not retry without changing something (start TLS first)
        return [_err("use STLS first: authentication is only allowed over TLS", "SYS/PERM")]

    def _stls(self, arg: str) -> list[Event]:
        # RFC 2595 §4: STLS only in AUTHORIZATION and only once
        if self._tls:
            return [_err("TLS is already active")]
        if not self.config.tls_available:
            return [_err("TLS not available", "SYS/PERM")]
        # RFC 2595 §4 and DESIGN §4: discard anything pipelined after STLS, forget what the client said
        self._buffer = bytearray()
        self._discarding = False
        self._tls = True
        self._user_arg = None
        self.utf8 = False
        return [_ok("begin TLS negotiation"), StartTLS()]

    def _user(self, arg: str) -> list[Event]:
        if not self._auth_allowed():
            return self._refuse_plaintext()
        name = arg.strip()
        if not name:
            return [_err("USER needs a name")] + self._bad()
        # RFC 1939 §7: the reply to USER never tells whether the mailbox exists
        self._user_arg = name
        return [_ok("send PASS")]

    def _pass(self, arg: str) -> list[Event]:
        user, self._pass_user = self._pass_user, None
        if not self._auth_allowed():
            return self._refuse_plaintext()
        if user is None:
            return [_err("PASS must follow USER")] + self._bad()
        # RFC 1939 §7: the password is the rest of the line (it may contain spaces)
        return self._authenticate(user, arg, "USER")

    def _authenticate(self, user: str, password: str, mechanism: str) -> list[Event]:
        self._wait = _Wait.AUTH
        self._bad_commands = 0
        return [Authenticate(user, password, mechanism)]

    def _auth(self, arg: str) -> list[Event]:
        parts = arg.split()
        if not parts:
            # the pre-RFC 5034 "AUTH" listing that some clients still probe with
            mechs = ["PLAIN", "LOGIN"] if self._auth_allowed() else []
            return [_multi("SASL mechanisms follow", mechs)]
        if not self._auth_allowed():
            return self._refuse_plaintext()
        mech = parts[0].upper()
        if mech not in ("PLAIN", "LOGIN") or len(parts) > 2:
            return [_err("unsupported SASL mechanism")] + self._bad()
        self._sasl_mech = mech
        self._sasl_user = ""
        self._sasl_step = 0
        if len(parts) == 2:
            # RFC 5034 §4: initial response; "=" stands for an empty one
            return self._sasl_continue(parts[1])
        self._wait = _Wait.SASL
        return [Reply(b"+ \r\n" if mech == "PLAIN" else _LOGIN_USER)]

    def _sasl_continue(self, text: str) -> list[Event]:
        self._wait = _Wait.NOTHING
        text = text.strip()
        if text == "*":
            return [_err("authentication cancelled")]     # RFC 5034 §4
        try:
            decoded = b"" if text == "=" else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            # RFC 5034 §4: a response that cannot be base64-decoded rejects the AUTH command
            return [_err("invalid base64 in SASL response")] + self._bad()
        if self._sasl_mech == "PLAIN":
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            fields = decoded.split(b"\0")
            if len(fields) != 3 or not fields[1]:
                return [_err("malformed PLAIN response")] + self._bad()
            authzid, authcid, password = (f.decode("utf-8", "replace") for f in fields)
            if authzid and authzid.casefold() != authcid.casefold():   # no proxy authorization
                self._auth_failures += 1
                return self._fail_authz()
            return self._authenticate(authcid, password, "PLAIN")
        # LOGIN: the user name, then the password, each after its prompt
        value = decoded.decode("utf-8", "replace")
        if self._sasl_step == 0:
            self._sasl_user = value
            self._sasl_step = 1
            self._wait = _Wait.SASL
            return [Reply(_LOGIN_PASS)]
        return self._authenticate(self._sasl_user, value, "LOGIN")

    def _fail_authz(self) -> list[Event]:
        events: list[Event] = [_err("authorization identity not allowed", "AUTH")]
        if self._auth_failures >= self.config.max_auth_failures:
            self._state = _State.CLOSED
            events.append(Close())
        return events

    def _utf8(self, arg: str) -> list[Event]:
        # RFC 6856 §2: UTF8 is valid in the AUTHORIZATION state; messages are never downgraded here
        self.utf8 = True
        return [_ok("UTF8 enabled")]

    # -- TRANSACTION ----------------------------------------------------------------------------------

    def _message_number(self, text: str) -> tuple[int | None, list[Event]]:
        """A 1-based message number that exists and is not deleted → 0-based index, else an -ERR."""
        text = text.strip()
        if not _NUMBER.match(text):
            return None, [_err("invalid message number")] + self._bad()
        index = int(text) - 1
        if not 0 <= index < len(self._entries):
            return None, [_err("no such message")]
        if index in self._deleted:
            # RFC 1939 §5: a message marked as deleted may not be referred to
            return None, [_err("message already deleted")]
        return index, []

    def _stat(self, arg: str) -> list[Event]:
        live = [e for i, e in enumerate(self._entries) if i not in self._deleted]
        # RFC 1939 §5: "+OK nn mm", message count and size, deleted messages not counted
        return [_ok(f"{len(live)} {sum(e.size for e in live)}")]

    def _listing(self, arg: str, field: str) -> list[Event]:
        if arg.strip():
            index, errors = self._message_number(arg)
            if index is None:
                return errors
            entry = self._entries[index]
            return [_ok(f"{index + 1} {getattr(entry, field)}")]
        lines = [f"{i + 1} {getattr(e, field)}" for i, e in enumerate(self._entries) if i not in self._deleted]
        return [_multi(f"{len(lines)} messages", lines)]

    def _list(self, arg: str) -> list[Event]:
        return self._listing(arg, "size")      # RFC 1939 §5 LIST

    def _uidl(self, arg: str) -> list[Event]:
        return self._listing(arg, "uid")       # RFC 1939 §7 UIDL

    def _retr(self, arg: str) -> list[Event]:
        index, errors = self._message_number(arg)
        if index is None:
            return errors
        entry = self._entries[index]
        self._wait = _Wait.MESSAGE
        return [SendMessage(entry.key, f"+OK {entry.size} octets\r\n".encode(), None, self.config.mark_seen_on_retr)]

    def _top(self, arg: str) -> list[Event]:
        parts = arg.split()
        if len(parts) != 2 or not _COUNT.match(parts[1]):
            return [_err("usage: TOP msg lines")] + self._bad()
        index, errors = self._message_number(parts[0])
        if index is None:
            return errors
        entry = self._entries[index]
        self._wait = _Wait.MESSAGE
        # RFC 1939 §7: header, blank line and the first n body lines; TOP does not mark the message seen
        return [SendMessage(entry.key, b"+OK top of message follows\r\n", int(parts[1]), False)]

    def _dele(self, arg: str) -> list[Event]:
        index, errors = self._message_number(arg)
        if index is None:
            return errors
        self._deleted.add(index)     # RFC 1939 §5: only marked; removed in the UPDATE state
        return [_ok(f"message {index + 1} deleted")]

    def _noop(self, arg: str) -> list[Event]:
        return [_ok()]

    def _rset(self, arg: str) -> list[Event]:
        self._deleted.clear()        # RFC 1939 §5 RSET
        return [_ok(f"{len(self._entries)} messages")]

    def _utf8_late(self, arg: str) -> list[Event]:
        return [_err("UTF8 is only valid before authentication")]   # RFC 6856 §2


_Handler = Callable[[Pop3Engine, str], list[Event]]

# RFC 1939 §4-§7, RFC 2449 §5, RFC 2595 §4, RFC 5034 §4, RFC 6856 §2: the commands of each state
_AUTHORIZATION: dict[str, _Handler] = {
    "CAPA": Pop3Engine._capa, "QUIT": Pop3Engine._quit, "STLS": Pop3Engine._stls, "USER": Pop3Engine._user,
    "PASS": Pop3Engine._pass, "AUTH": Pop3Engine._auth, "UTF8": Pop3Engine._utf8,
}
_TRANSACTION: dict[str, _Handler] = {
    "CAPA": Pop3Engine._capa, "QUIT": Pop3Engine._quit, "STAT": Pop3Engine._stat, "LIST": Pop3Engine._list,
    "UIDL": Pop3Engine._uidl, "RETR": Pop3Engine._retr, "TOP": Pop3Engine._top, "DELE": Pop3Engine._dele,
    "NOOP": Pop3Engine._noop, "RSET": Pop3Engine._rset, "UTF8": Pop3Engine._utf8_late,
}
