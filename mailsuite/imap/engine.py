"""The IMAP server engine: a pure state machine (RFC 3501 and the extensions in CAPABILITIES).

h11 style: the adapter feeds bytes with :meth:`ImapEngine.receive_data` and gets back a list of outputs:
``bytes`` to write, or actions to run —

- :class:`StartTLS`      start the TLS handshake now (everything buffered before it is already dropped);
- :class:`Authenticate`  check a password (asynchronous); feed the result to :meth:`auth_result`;
- :class:`AuthFailed`    a login that failed without a password check (malformed SASL response, other
                         authorization identity): log the fail2ban line, wait, then :meth:`auth_result`
                         with None;
- :class:`Stream`        an iterator of byte chunks (big FETCH responses); when it is exhausted call
                         :meth:`resume`;
- :class:`StartCompression`  RFC 4978 COMPRESS=DEFLATE: compress everything written after it and
                         inflate the input (starting with ``pending``) before feeding it back;
- :class:`Close`         close the connection after writing what came before.

While an action is outstanding the engine reads no further command (input stays buffered), so replies
always come in command order.  Mailbox operations call the store synchronously through the
:mod:`mailsuite.imap.backend` protocols (the store is in-process and answers from its index).  Store
change notifications only mark the session dirty and call ``wakeup`` so the adapter can ask
:meth:`poll` for updates (during IDLE, RFC 2177).
"""

from __future__ import annotations

import base64
import binascii
import errno
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..store.errors import InvalidMailboxName, MailboxExists, MailboxNotFound, MessageNotFound, StoreError
from ..store.mailbox import InvalidFlag, normalize_flags, validate_keywords
from ..store.names import decode_mutf7, encode_mutf7, validate_name
from . import fetch as fetchmod
from .backend import DELIMITER, Mailbox, UserMail, split_flags
from .framing import Continue, Framer, Line, RawCommand, Refused, TooLong, tag_of
from .message import WHOLE_READ, Message
from .mimeview import BinaryError, UnknownCharset
from .parser import Command, FetchAtt, ParseError, parse_command
from .response import astring, flag_list, sort_flags, string
from .search import SearchContext, decode_keys, matches, order_keys
from .selected import SYSTEM, Selected
from .seqset import SequenceSet, format_set
from .spool import SPOOL_THRESHOLD, SpooledMessage, SpoolFile

log = Logger()

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"
SMALL_LITERAL = 64 * 1024  # literals outside APPEND (names, passwords, search strings)


@dataclass
class StartTLS:
    pass


@dataclass
class Authenticate:
    user: str
    password: str


@dataclass
class AuthFailed:
    """A failed login that needs no password check: it still counts toward ``auth.max_failures`` and
    must produce the fail2ban line (DESIGN §4) after the usual delay.  ``user`` is what the client
    named ("" when nothing could be decoded)."""

    user: str


@dataclass
class Close:
    pass


@dataclass
class StartCompression:
    """RFC 4978: from now on both directions are raw DEFLATE; ``pending`` is input that arrived after
    the COMPRESS command and is already compressed."""

    pending: bytes


@dataclass
class Stream:
    chunks: Iterator[bytes]


@dataclass
class Await:
    """Wait for ``deferred`` (store file work in a thread), then call ``callback`` with its result
    (a value or a Failure) and write the outputs it returns."""

    deferred: Deferred
    callback: Callable[[Any], list]


Output = bytes | StartTLS | Authenticate | AuthFailed | Close | Stream | Await | StartCompression


@dataclass
class EngineConfig:
    hostname: str = "localhost"
    tls_available: bool = True  # STARTTLS offered (False on imaps, where TLS is already on)
    tls_active: bool = False
    plaintext_auth_ok: bool = False  # loopback exemption (settings.auth.allow_plaintext_loopback)
    max_literal: int = 50 * 1024 * 1024
    max_line: int = 65536
    max_auth_failures: int = 3
    quota_bytes: int = 0  # 0 = no limit (RFC 9208 STORAGE)
    max_buffer: int = 1024 * 1024  # pipelined input kept while an action is outstanding


# Extensions offered after authentication (only what is implemented completely).
EXTENSIONS = (
    "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN",
    "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "ESEARCH", "SEARCHRES", "CONDSTORE", "QUOTA", "QUOTA=RES-STORAGE",
    "UTF8=ACCEPT", "COMPRESS=DEFLATE",
)
ENABLEABLE = {"CONDSTORE", "UTF8=ACCEPT"}


#: shared empty values: an idle session keeps no containers of its own (2000 IDLE sessions, bench 7a)
_NOTHING_ENABLED: frozenset[str] = frozenset()  # frozenset() is a new object each call
_NO_RESULT: tuple[int, ...] = ()


def _no_wakeup() -> None:
    pass


class _EngineFramer(Framer):
    """The engine's framer: asks the engine for its literal policy and APPEND spool through one reference
    instead of keeping two bound methods per session."""

    __slots__ = ("_engine",)

    def __init__(self, engine: "ImapEngine", max_line: int) -> None:
        super().__init__(None, max_line=max_line)  # type: ignore[arg-type]
        self._engine = engine

    def _allowed(self, first_line: bytes, size: int, total: int) -> bool:
        return self._engine._literal_allowed(first_line, size, total)

    def _open_sink(self, first_line: bytes, size: int) -> Any:
        return self._engine._spool_for(first_line, size)


def _mailbox_gone(mailbox: Mailbox) -> bool:
    """True once the store has deleted or renamed the folder under this Mailbox (what ``sync()`` reports
    as MailboxNotFound, without touching the disk)."""
    return bool(getattr(mailbox, "_gone", False))


class ImapEngine:
    __slots__ = ("cfg", "_open_user", "_wakeup", "peer", "framer", "state", "user", "mail", "selected", "out",
                 "waiting", "auth_failures", "enabled", "condstore", "idle_tag", "_auth", "_pending_auth_tag",
                 "_pending_auth_reply", "_after_stream", "saved_result", "compressed", "_current_tag")

    def __init__(
        self,
        config: EngineConfig,
        open_user: Callable[[str], UserMail],
        wakeup: Callable[[], None] | None = None,
        peer: str = "",
    ) -> None:
        self.cfg = config
        self._open_user = open_user
        self._wakeup = wakeup or _no_wakeup
        self.peer = peer
        self.framer: Framer = _EngineFramer(self, config.max_line)
        self.state = NOT_AUTHENTICATED
        self.user: str | None = None
        self.mail: UserMail | None = None
        self.selected: Selected | None = None
        self.out: list[Output] | None = None  # outputs since the last flush (a list only while there are some)
        self.waiting = False  # an action is outstanding
        self.auth_failures = 0
        self.enabled: frozenset[str] = _NOTHING_ENABLED   # RFC 5161 ENABLE
        self.condstore = False
        self.idle_tag: str | None = None
        self._auth: dict[str, Any] | None = None  # AUTHENTICATE exchange in progress
        self._pending_auth_tag: str | None = None
        self._pending_auth_reply: bytes | None = None  # the tagged NO/BAD text of an AuthFailed
        self._after_stream: Callable[[], None] | None = None
        self.saved_result: Sequence[int] = _NO_RESULT  # RFC 5182 SEARCHRES; replaced, never changed in place
        self.compressed = False
        self._current_tag: str | None = None

    # ------------------------------------------------------------------------------------ interface

    def greeting(self) -> list[Output]:
        self._emit(b"* OK [CAPABILITY " + self.capabilities().encode() + b"] " + self._host() + b" ready\r\n")
        return self._flush()

    def receive_data(self, data: bytes) -> list[Output]:
        if self.state == LOGOUT:
            return []
        self.framer.feed(data)
        if self.waiting and self.framer.buffered() > self.cfg.max_buffer:
            self._emit(b"* BYE Too much pipelined input\r\n")
            self._logout()
            return self._flush()
        self._run()
        return self._flush()

    def auth_result(self, user: str | None) -> list[Output]:
        """Result of an :class:`Authenticate` action: the canonical user name or None."""
        tag = self._pending_auth_tag or "*"
        reply = self._pending_auth_reply or b"NO [AUTHENTICATIONFAILED] Authentication failed"
        self._pending_auth_tag = self._pending_auth_reply = None
        self.waiting = False
        if self.state == LOGOUT:
            return []
        if user is None:
            self.auth_failures += 1
            self._emit(tag.encode() + b" " + reply + b"\r\n")
            if self.auth_failures >= self.cfg.max_auth_failures:
                self._emit(b"* BYE Too many authentication failures\r\n")
                self._logout()
                return self._flush()
        else:
            try:
                self.mail = self._open_user(user)
            except Exception:
                log.failure("IMAP: opening the mail store of {user} failed", user=user)
                self._emit(tag.encode() + b" NO [UNAVAILABLE] Mailbox store unavailable\r\n")
                self._run()
                return self._flush()
            self.user = user
            self.state = AUTHENTICATED
            self._emit(tag.encode() + b" OK [CAPABILITY " + self.capabilities().encode() + b"] Logged in\r\n")
        self._run()
        return self._flush()

    def resume(self) -> list[Output]:
        """A :class:`Stream` has been written entirely."""
        self.waiting = False
        if self._after_stream is not None:
            cb, self._after_stream = self._after_stream, None
            cb()
        self._run()
        return self._flush()

    def tls_started(self) -> None:
        """The adapter switched the transport to TLS (implicit TLS sets ``tls_active`` from the start)."""
        self.cfg = replace(self.cfg, tls_active=True)  # the config may be shared: copied, not changed

    def poll(self, check_outside: bool = False) -> list[Output]:
        """Store changed (or, with ``check_outside``, may have been changed by other programs): during
        IDLE send the updates now (RFC 2177); otherwise they wait for the next command."""
        if self.idle_tag is not None and self.selected is not None and not self.waiting:
            if check_outside:
                self.selected.dirty = True  # sync() rescans the Maildir (two stats when unchanged)
            if self.selected.dirty:
                # A store notification means the store has already indexed the change (or the adapter's
                # shared outside-change tick has just rescanned): no Maildir rescan per session then.
                self._emit_updates(allow_expunge=True, rescan=check_outside)
        return self._flush()

    def connection_lost(self) -> None:
        self.framer.close()  # a half-received APPEND leaves no spool file behind
        self._deselect()
        self.state = LOGOUT

    # ------------------------------------------------------------------------------------ internals

    def _host(self) -> bytes:
        return self.cfg.hostname.encode("ascii", "replace")

    def _emit(self, data: Output) -> None:
        if self.out is None:
            self.out = [data]
        else:
            self.out.append(data)

    def _flush(self) -> list[Output]:
        out, self.out = self.out, None
        if out is None:
            return []
        # merge adjacent bytes so the adapter writes fewer, larger chunks
        merged: list[Output] = []
        for item in out:
            if isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] = merged[-1] + item
            else:
                merged.append(item)
        return merged

    def _auth_allowed(self) -> bool:
        return self.cfg.tls_active or self.cfg.plaintext_auth_ok  # DESIGN §4

    def capabilities(self) -> str:
        caps = ["IMAP4rev1"]
        if self.state == NOT_AUTHENTICATED:
            caps += ["LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
            if self.cfg.tls_available and not self.cfg.tls_active:
                caps.append("STARTTLS")
            if self._auth_allowed():
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 §6.2.3
        else:
            caps += list(EXTENSIONS)
            caps.append(f"APPENDLIMIT={self.cfg.max_literal}")  # RFC 7889
        return " ".join(caps)

    def _literal_allowed(self, first_line: bytes, size: int, total: int) -> bool:
        """Literal size policy, checked before ``+`` is sent (RFC 7888 §4, RFC 7889)."""
        words = first_line.split(b" ", 3)
        name = words[1].upper() if len(words) > 1 else b""
        if name == b"APPEND" and self.state in (AUTHENTICATED, SELECTED):
            return size <= self.cfg.max_literal and total <= self.cfg.max_literal + self.cfg.max_line
        return size <= SMALL_LITERAL and total <= 4 * SMALL_LITERAL

    def _spool_for(self, first_line: bytes, size: int) -> SpoolFile | None:
        """Big APPEND literals go to a file as they arrive, so memory per session stays bounded
        (the literal was already accepted by :meth:`_literal_allowed`)."""
        words = first_line.split(b" ", 3)
        if (size < SPOOL_THRESHOLD or len(words) < 2 or words[1].upper() != b"APPEND"
                or self.state not in (AUTHENTICATED, SELECTED) or self.mail is None):
            return None
        try:
            return self.mail.spool()
        except Exception:
            log.failure("IMAP: no APPEND spool file; keeping the literal in memory")
            return None

    def _logout(self) -> None:
        self._deselect()
        self.state = LOGOUT
        self._emit(Close())

    def _run(self) -> None:
        while not self.waiting and self.state != LOGOUT:
            ev = self.framer.next_event()
            if ev is None:
                return
            try:
                self._event(ev)
            except Exception:
                # Never show Python internals to the client (DESIGN §4).
                log.failure("IMAP: internal error")
                tag = self._current_tag or "*"
                self._emit(tag.encode() + b" NO [SERVERBUG] Internal error\r\n")
                self.waiting = False

    def _event(self, ev) -> None:
        if isinstance(ev, Line):
            if self.idle_tag is not None:
                self._idle_line(ev.data)
            elif self._auth is not None:
                self._auth_line(ev.data)
            return
        if isinstance(ev, TooLong):
            self._emit(ev.tag.encode() + b" BAD Line too long\r\n")
            return
        if isinstance(ev, Refused):
            # RFC 7888 §4, RFC 7889 §4: refuse before "+", tagged.
            if ev.tag == "*":
                self._emit(b"* BAD Literal too big\r\n")
            elif b"APPEND" in ev.first_line.upper()[:30]:
                self._emit(ev.tag.encode() + b" NO [TOOBIG] Message too big\r\n")
            else:
                self._emit(ev.tag.encode() + b" BAD Literal too big\r\n")
            return
        if isinstance(ev, Continue):
            self._emit(b"+ Ready for literal data\r\n")
            return
        assert isinstance(ev, RawCommand)
        self._current_tag = tag_of(ev.lines[0]) if ev.lines[0] else "*"
        try:
            try:
                cmd = parse_command(ev)
            except ParseError as exc:
                if exc.tag == "*" and ev.lines[0].strip() == b"":
                    return  # empty line: ignore
                self._emit(exc.tag.encode() + b" BAD " + exc.message.encode() + b"\r\n")
                return
            self._command(cmd)
        finally:
            for lit in ev.literals:  # spool files no command took over
                if isinstance(lit, SpooledMessage) and not lit.taken:
                    lit.discard()

    # ------------------------------------------------------------------------------------ dispatch

    _NOT_AUTH = {"STARTTLS", "AUTHENTICATE", "LOGIN"}
    _AUTH = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
             "STATUS", "APPEND", "IDLE", "NAMESPACE", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "COMPRESS"}
    _SELECTED = {"CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UNSELECT"}

    def _command(self, cmd: Command) -> None:
        name = cmd.name
        if name in self._NOT_AUTH:
            if self.state != NOT_AUTHENTICATED:
                return self._tagged(cmd, "BAD", "Already authenticated")
        elif name in self._AUTH:
            if self.state == NOT_AUTHENTICATED:
                return self._tagged(cmd, "BAD", "Not authenticated")
        elif name in self._SELECTED:
            if self.state != SELECTED:
                return self._tagged(cmd, "BAD", "No mailbox selected")
        if name == "ENABLE" and self.state == NOT_AUTHENTICATED:
            return self._tagged(cmd, "BAD", "Not authenticated")  # RFC 5161 §3.1
        handler = getattr(self, "_cmd_" + name.lower())
        try:
            handler(cmd)
        except InvalidFlag as exc:
            self._tagged(cmd, "NO", "Invalid flag: " + _safe(exc), "CANNOT")
        except MessageNotFound:
            self._tagged(cmd, "NO", "Message no longer exists", "EXPUNGEISSUED")
        except InvalidMailboxName as exc:
            self._tagged(cmd, "NO", "Invalid mailbox name: " + _safe(exc), "CANNOT")
        except MailboxNotFound:
            self._tagged(cmd, "NO", "Mailbox does not exist", "NONEXISTENT")
        except MailboxExists:
            self._tagged(cmd, "NO", "Mailbox already exists", "ALREADYEXISTS")
        except StoreError as exc:
            log.info("IMAP: store refused {cmd}: {exc}", cmd=cmd.name, exc=exc)
            self._tagged(cmd, "NO", _safe(exc), "CANNOT")

    def _tagged(self, cmd: Command, status: str, text: str, code: str | None = None) -> None:
        # RFC 3501 §7.1: pending untagged updates come before the tagged completion
        if status != "BAD" and self.selected is not None and self.idle_tag is None:
            allow = cmd.uid or cmd.name not in ("FETCH", "STORE", "SEARCH")  # RFC 3501 §7.4.1
            self._emit_updates(allow_expunge=allow)
        line = f"{cmd.tag} {status} " + (f"[{code}] " if code else "") + text + "\r\n"
        self._emit(line.encode("utf-8"))

    def _emit_updates(self, allow_expunge: bool, rescan: bool = True) -> None:
        """Untagged updates for the selected mailbox; ``rescan=False`` trusts the store's index (the
        change came through the store) instead of looking at the Maildir again."""
        sel = self.selected
        if sel is None:
            return
        try:
            if rescan:
                sel.mailbox.sync()  # outside Maildir changes (two stats when nothing changed); notifies -> dirty
            elif _mailbox_gone(sel.mailbox):
                raise MailboxNotFound(sel.name)
        except MailboxNotFound:
            self._emit(b"* BYE Selected mailbox was deleted\r\n")  # RFC 3501 §7.1.5
            self._logout()
            return
        if sel.mailbox.uidvalidity != sel.uidvalidity:
            # The index was rebuilt: our UIDs mean nothing any more (RFC 3501 §2.3.1.1)
            self._emit(b"* BYE Mailbox UIDVALIDITY changed, please reconnect\r\n")
            self._logout()
            return
        if not sel.dirty and not sel.ghosts:
            return
        for line in sel.sync(allow_expunge, self.condstore):
            self._emit(line)

    # ------------------------------------------------------------------------------------ any state

    def _cmd_capability(self, cmd: Command) -> None:
        self._emit(b"* CAPABILITY " + self.capabilities().encode() + b"\r\n")
        self._tagged(cmd, "OK", "CAPABILITY completed")

    def _cmd_noop(self, cmd: Command) -> None:
        if self.selected is not None:
            self.selected.dirty = True  # also pick up outside Maildir changes (RFC 3501 §6.1.2)
        self._tagged(cmd, "OK", "NOOP completed")

    def _cmd_logout(self, cmd: Command) -> None:
        self._emit(b"* BYE Logging out\r\n")
        self._emit(cmd.tag.encode() + b" OK LOGOUT completed\r\n")
        self._logout()

    def _cmd_id(self, cmd: Command) -> None:  # RFC 2971
        self._emit(b'* ID ("name" "mailsuite")\r\n')
        self._tagged(cmd, "OK", "ID completed")

    def _cmd_enable(self, cmd: Command) -> None:  # RFC 5161
        newly = [c for c in cmd.args["capabilities"] if c in ENABLEABLE and c not in self.enabled]
        self.enabled = self.enabled.union(newly)
        if "CONDSTORE" in newly:
            self.condstore = True
        self._emit(b"* ENABLED" + b"".join(b" " + c.encode() for c in newly) + b"\r\n")
        self._tagged(cmd, "OK", "ENABLE completed")

    # ------------------------------------------------------------------------------------ not authenticated

    def _cmd_starttls(self, cmd: Command) -> None:
        if not self.cfg.tls_available or self.cfg.tls_active:
            return self._tagged(cmd, "BAD", "TLS already active" if self.cfg.tls_active else "TLS unavailable")
        self._emit(cmd.tag.encode() + b" OK Begin TLS negotiation now\r\n")
        self.framer.clear()  # RFC 3501 §6.2.1 / DESIGN §4: drop pipelined plaintext
        self.cfg = replace(self.cfg, tls_active=True)  # the config may be shared: copied, not changed
        self._emit(StartTLS())

    def _cmd_login(self, cmd: Command) -> None:
        if not self._auth_allowed():
            return self._tagged(cmd, "NO", "Plaintext login disabled, use STARTTLS first", "PRIVACYREQUIRED")
        try:
            user = cmd.args["user"].decode("utf-8")
            password = cmd.args["password"].decode("utf-8")
        except UnicodeDecodeError:
            user, password = "", ""
        self._start_auth(cmd.tag, user, password)

    def _start_auth(self, tag: str, user: str, password: str) -> None:
        self._pending_auth_tag = tag
        self.waiting = True
        self._emit(Authenticate(user, password))

    def _auth_failed(self, tag: str, user: str, reply: bytes) -> None:
        """A login attempt that fails without a password check still counts (``auth.max_failures``)
        and is logged for fail2ban by the adapter (DESIGN §4); ``reply`` is the tagged answer."""
        self._pending_auth_tag = tag
        self._pending_auth_reply = reply
        self.waiting = True
        self._emit(AuthFailed(user))

    def _cmd_authenticate(self, cmd: Command) -> None:
        if not self._auth_allowed():
            return self._tagged(cmd, "NO", "Authentication disabled, use STARTTLS first", "PRIVACYREQUIRED")
        mech = cmd.args["mechanism"]
        if mech not in ("PLAIN", "LOGIN"):
            return self._tagged(cmd, "NO", "Unsupported mechanism", "CANNOT")
        self._auth = {"tag": cmd.tag, "mech": mech, "step": 0, "user": ""}
        initial = cmd.args["initial"]
        if initial is not None:  # RFC 4959 SASL-IR
            self._auth_response(b"" if initial == b"=" else initial)
            return
        self._auth_prompt()

    def _auth_prompt(self) -> None:
        assert self._auth is not None
        if self._auth["mech"] == "PLAIN":
            self._emit(b"+ \r\n")
        else:  # AUTH=LOGIN prompts "Username:" / "Password:"
            self._emit(b"+ VXNlcm5hbWU6\r\n" if self._auth["step"] == 0 else b"+ UGFzc3dvcmQ6\r\n")
        self.framer.line_mode = True

    def _auth_line(self, data: bytes) -> None:
        self.framer.line_mode = False
        assert self._auth is not None
        if data.strip() == b"*":  # RFC 3501 §6.2.2 cancel
            tag = self._auth["tag"]
            self._auth = None
            self._emit(tag.encode() + b" BAD Authentication cancelled\r\n")
            return
        self._auth_response(data.strip())

    def _auth_response(self, b64: bytes) -> None:
        auth = self._auth
        assert auth is not None
        self._auth = None
        try:
            raw = base64.b64decode(b64, validate=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            # RFC 3501 §6.2.2: BAD for an undecodable response; still a failed login (DESIGN §4)
            self._auth_failed(auth["tag"], auth["user"], b"BAD Invalid base64 response")
            return
        if auth["mech"] == "PLAIN":  # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            parts = text.split("\0")
            if len(parts) != 3:
                shown = parts[1] if len(parts) > 1 else ""
                self._auth_failed(auth["tag"], shown, b"BAD Malformed PLAIN response")
                return
            authzid, user, password = parts
            if authzid and authzid != user:  # RFC 4616 §2: we authorize no one to act as another
                self._auth_failed(auth["tag"], user, b"NO [AUTHORIZATIONFAILED] No proxy authentication")
                return
            self._start_auth(auth["tag"], user, password)
            return
        if auth["step"] == 0:
            auth["user"] = text
            auth["step"] = 1
            self._auth = auth
            self._auth_prompt()
            return
        self._start_auth(auth["tag"], auth["user"], text)

    # ------------------------------------------------------------------------------------ names

    def _utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    def _decode_name(self, wire: str) -> str:
        """Wire mailbox name -> validated store name (RFC 3501 §5.1.3, RFC 6855 §3)."""
        if wire.upper() == "INBOX":
            return "INBOX"
        name = wire if self._utf8() else decode_mutf7(wire)
        return validate_name(name)

    def _encode_name(self, name: str) -> bytes:
        return string(name) if self._utf8() else astring(encode_mutf7(name))

    # ------------------------------------------------------------------------------------ authenticated

    def _cmd_namespace(self, cmd: Command) -> None:  # RFC 2342
        self._emit(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
        self._tagged(cmd, "OK", "NAMESPACE completed")

    def _cmd_select(self, cmd: Command, readonly: bool = False) -> None:
        """SELECT / EXAMINE (RFC 3501 §6.3.1-2, RFC 7162 §3.1.2.1 HIGHESTMODSEQ)."""
        self._deselect()
        self.saved_result = _NO_RESULT  # RFC 5182 §2.1
        assert self.mail is not None
        name = self._decode_name(cmd.args["mailbox"])
        mb = self.mail.open(name)
        if cmd.args["condstore"]:
            self.condstore = True  # RFC 7162 §3.1.8
        sel = Selected(mb, readonly)
        sel.load()
        self.selected = sel
        self.state = SELECTED
        sel.listener = self._changed
        self.mail.listen(mb.name, sel.listener)
        kws = sorted(sel.keywords)
        self._emit(b"* FLAGS " + flag_list(SYSTEM + kws) + b"\r\n")
        perm = b"()" if readonly else flag_list(SYSTEM + kws + ["\\*"])
        self._emit(b"* OK [PERMANENTFLAGS " + perm + b"] Flags permitted\r\n")
        self._emit(b"* %d EXISTS\r\n* %d RECENT\r\n" % (sel.count(), len(sel.recent)))
        unseen = sel.first_unseen()
        if unseen:
            self._emit(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
        self._emit(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mb.uidvalidity)
        self._emit(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mb.uidnext)
        self._emit(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % mb.highestmodseq)
        code = "READ-ONLY" if readonly else "READ-WRITE"
        self._tagged(cmd, "OK", ("EXAMINE" if readonly else "SELECT") + " completed", code)

    def _cmd_examine(self, cmd: Command) -> None:
        self._cmd_select(cmd, readonly=True)

    def _changed(self) -> None:
        if self.selected is not None:
            self.selected.dirty = True
        self._wakeup()

    def _deselect(self) -> None:
        sel = self.selected
        if sel is not None:
            self.selected = None
            if sel.listener is not None and self.mail is not None:
                try:
                    self.mail.unlisten(sel.name, sel.listener)
                except Exception:
                    log.failure("IMAP: removing a store listener failed")
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    def _cmd_create(self, cmd: Command) -> None:
        assert self.mail is not None
        wire = cmd.args["mailbox"]
        if wire.endswith(DELIMITER):  # RFC 3501 §6.3.3: trailing delimiter = intent to have children
            wire = wire[:-1]
        name = self._decode_name(wire)
        if name == "INBOX":
            return self._tagged(cmd, "NO", "INBOX already exists", "ALREADYEXISTS")
        self.mail.create(name)
        self._tagged(cmd, "OK", "CREATE completed")

    def _cmd_delete(self, cmd: Command) -> None:
        assert self.mail is not None
        name = self._decode_name(cmd.args["mailbox"])
        if name == "INBOX":
            return self._tagged(cmd, "NO", "INBOX cannot be deleted", "CANNOT")
        if self.selected is not None and self.selected.name == name:
            self._deselect()
        self.mail.delete(name)
        self._tagged(cmd, "OK", "DELETE completed")

    def _cmd_rename(self, cmd: Command) -> None:
        assert self.mail is not None
        old = self._decode_name(cmd.args["old"])
        new = self._decode_name(cmd.args["new"])
        if new == "INBOX":
            return self._tagged(cmd, "NO", "Cannot rename to INBOX", "ALREADYEXISTS")
        if self.selected is not None and self.selected.name == old and old != "INBOX":
            self._deselect()
        self.mail.rename(old, new)
        self._tagged(cmd, "OK", "RENAME completed")

    def _cmd_subscribe(self, cmd: Command, on: bool = True) -> None:
        assert self.mail is not None
        self.mail.subscribe(self._decode_name(cmd.args["mailbox"]), on)
        self._tagged(cmd, "OK", ("SUBSCRIBE" if on else "UNSUBSCRIBE") + " completed")

    def _cmd_unsubscribe(self, cmd: Command) -> None:
        self._cmd_subscribe(cmd, on=False)

    def _pattern_regex(self, reference: str, pattern: str) -> re.Pattern[str]:
        """RFC 3501 §6.3.8: ``*`` matches anything, ``%`` anything but the delimiter."""
        full = reference + pattern
        if not self._utf8():
            try:
                full = decode_mutf7(full)
            except InvalidMailboxName:
                pass
        out = []
        for ch in full:
            if ch == "*":
                out.append(".*")
            elif ch == "%":
                out.append("[^.]*")
            else:
                out.append(re.escape(ch))
        if full[:5].upper() == "INBOX":  # INBOX is case-insensitive (RFC 3501 §5.1)
            out[:5] = ["(?:INBOX|inbox|Inbox|" + re.escape(full[:5]) + ")"]
        return re.compile("".join(out), re.DOTALL)

    def _cmd_list(self, cmd: Command) -> None:
        """LIST (RFC 3501 §6.3.8) with LIST-EXTENDED (RFC 5258), SPECIAL-USE (RFC 6154), CHILDREN
        (RFC 3348) and LIST-STATUS (RFC 5819)."""
        assert self.mail is not None
        a = cmd.args
        selection = set(a["selection"])
        returns = set(a["returns"])
        for opt in selection:
            if opt not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                return self._tagged(cmd, "BAD", "Unknown selection option")
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            return self._tagged(cmd, "BAD", "RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
        for opt in returns:
            if opt not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"):
                return self._tagged(cmd, "BAD", "Unknown return option")
        if not a["extended"] and a["patterns"] == [""]:  # RFC 3501 §6.3.8: the delimiter query
            self._emit(b'* LIST (\\Noselect) "." ""\r\n')
            return self._tagged(cmd, "OK", "LIST completed")
        rxs = [self._pattern_regex(a["reference"], p) for p in a["patterns"]]
        folders = {f.name: f for f in self.mail.folders()}
        subscribed = set(self.mail.subscriptions()) if "SUBSCRIBED" in selection | returns else set()
        names = list(folders)
        if "SUBSCRIBED" in selection:  # RFC 5258 §3.1: subscribed names, existing or not
            names = sorted(set(names) | subscribed, key=lambda n: (n != "INBOX", n))

        def selected_by_options(name: str) -> bool:
            f = folders.get(name)
            if "SUBSCRIBED" in selection and name not in subscribed:
                return False
            return not ("SPECIAL-USE" in selection and (f is None or not f.special_use))

        for name in names:
            if not any(rx.fullmatch(name) for rx in rxs):
                continue
            f = folders.get(name)
            childinfo = b""
            if not selected_by_options(name):
                # RFC 5258 §3.5 RECURSIVEMATCH: a parent of a selected mailbox, with CHILDINFO
                if "RECURSIVEMATCH" not in selection or not any(
                        n.startswith(name + DELIMITER) and selected_by_options(n) for n in names):
                    continue
                reasons = [r for r in ("SUBSCRIBED", "SPECIAL-USE") if r in selection]
                childinfo = b' ("CHILDINFO" (' + " ".join(f'"{r}"' for r in reasons).encode() + b"))"
            attrs = []
            if f is None:
                attrs.append("\\NonExistent")
            else:
                attrs.append("\\HasChildren" if f.has_children else "\\HasNoChildren")
                if not f.selectable:
                    attrs.append("\\Noselect")
                if f.special_use:  # RFC 6154 §2: returned by default
                    attrs.append(f.special_use)
            if name in subscribed:
                attrs.append("\\Subscribed")
            self._emit(b"* LIST (" + " ".join(attrs).encode() + b') "." ' + self._encode_name(name) + childinfo
                       + b"\r\n")
            if "STATUS" in returns and f is not None and f.selectable:  # RFC 5819 §2
                try:
                    self._emit_status(name, a["status"])
                except MailboxNotFound:
                    pass
        self._tagged(cmd, "OK", "LIST completed")

    def _cmd_lsub(self, cmd: Command) -> None:
        assert self.mail is not None
        rx = self._pattern_regex(cmd.args["reference"], cmd.args["patterns"][0])
        existing = {f.name: f for f in self.mail.folders()}
        for name in sorted(self.mail.subscriptions(), key=lambda n: (n != "INBOX", n)):
            if rx.fullmatch(name):
                f = existing.get(name)
                attrs = b"()" if f is not None and f.selectable else b"(\\Noselect)"
                self._emit(b"* LSUB " + attrs + b' "." ' + self._encode_name(name) + b"\r\n")
        self._tagged(cmd, "OK", "LSUB completed")

    def _emit_status(self, name: str, items: list[str]) -> None:
        """RFC 3501 §6.3.10 (+ HIGHESTMODSEQ, RFC 7162 §3.1.7; SIZE, RFC 8438)."""
        assert self.mail is not None
        st = self.mail.status(name)
        if self.selected is not None and self.selected.name == name:
            st["RECENT"] = len(self.selected.recent)
        values = " ".join(f"{item} {st[item]}" for item in items)
        self._emit(b"* STATUS " + self._encode_name(name) + b" (" + values.encode() + b")\r\n")

    def _cmd_status(self, cmd: Command) -> None:
        name = self._decode_name(cmd.args["mailbox"])
        self._emit_status(name, cmd.args["items"])
        self._tagged(cmd, "OK", "STATUS completed")

    def _over_quota(self, extra: int) -> bool:
        assert self.mail is not None
        return bool(self.cfg.quota_bytes) and self.mail.usage() + extra > self.cfg.quota_bytes

    def _cmd_append(self, cmd: Command) -> None:
        """RFC 3501 §6.3.11, RFC 4315 APPENDUID; the file work runs in the store's threads."""
        assert self.mail is not None
        a = cmd.args
        name = self._decode_name(a["mailbox"])
        data: bytes | SpooledMessage = a["message"]  # big literals arrive spooled to a file
        if not data:
            return self._tagged(cmd, "NO", "Empty message")
        if isinstance(data, SpooledMessage) and data.failed:
            return self._tagged(cmd, "NO", "Could not store the message", "SERVERBUG")
        if len(data) > self.cfg.max_literal:
            return self._tagged(cmd, "NO", "Message too big", "TOOBIG")
        if self._over_quota(len(data)):
            return self._tagged(cmd, "NO", "Quota exceeded", "OVERQUOTA")  # RFC 9208 §5.1
        system, keywords = split_flags(a["flags"])
        normalize_flags(system)  # InvalidFlag -> NO before any file is written
        validate_keywords(keywords)
        d = self.mail.append(name, data, a["flags"], a["date"])
        self.waiting = True
        if isinstance(data, SpooledMessage):
            data.taken = True  # the store links the file in, or removes it

        def done(result: Any) -> list[Output]:
            self.waiting = False
            if isinstance(data, SpooledMessage):
                data.discard()  # nothing left to remove unless the store never got to it
            if self.state == LOGOUT:
                return []
            if isinstance(result, Failure):
                if result.check(MailboxNotFound):
                    self._tagged(cmd, "NO", "Mailbox does not exist", "TRYCREATE")  # RFC 3501 §6.3.11
                elif result.check(InvalidMailboxName):
                    self._tagged(cmd, "NO", "Invalid mailbox name", "CANNOT")
                elif result.check(OSError):
                    # a disk problem, not a bug: one clear line for the admin (DESIGN §4), no traceback
                    err = result.value
                    log.error("IMAP: APPEND to {mailbox} of {user} failed: {error}", mailbox=name, user=self.user,
                              error=f"{err.strerror or err} ({getattr(err, 'filename', '') or 'store'})")
                    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                    # RFC 9208 §4.4 / RFC 5530: OVERQUOTA when the space is gone, else UNAVAILABLE
                    self._tagged(cmd, "NO", "No space left for the message" if full else "Mail store unavailable",
                                 "OVERQUOTA" if full else "UNAVAILABLE")
                else:
                    log.failure("IMAP: APPEND failed", result)
                    self._tagged(cmd, "NO", "APPEND failed", "SERVERBUG")
            else:
                uidvalidity, uid = result
                if self.selected is not None and self.selected.name == name:
                    self.selected.dirty = True
                self._tagged(cmd, "OK", "APPEND completed", f"APPENDUID {uidvalidity} {uid}")
            self._run()
            return self._flush()

        self._emit(Await(d, done))

    def _cmd_idle(self, cmd: Command) -> None:  # RFC 2177
        self._emit(b"+ idling\r\n")
        self.idle_tag = cmd.tag
        self.framer.line_mode = True
        if self.selected is not None:
            self.selected.dirty = True
            self._emit_updates(allow_expunge=True)

    def _idle_line(self, data: bytes) -> None:
        tag = self.idle_tag or "*"
        self.idle_tag = None
        self.framer.line_mode = False
        if data.strip().upper() != b"DONE":
            self._emit(tag.encode() + b" BAD Expected DONE\r\n")
            return
        self._tagged(Command(tag, "IDLE"), "OK", "IDLE terminated")

    def _cmd_compress(self, cmd: Command) -> None:
        """RFC 4978 §3: answer uncompressed, then both sides switch to raw DEFLATE."""
        if cmd.args["mechanism"] != "DEFLATE":
            return self._tagged(cmd, "NO", "Unknown compression mechanism", "CANNOT")
        if self.compressed:
            return self._tagged(cmd, "NO", "DEFLATE already active", "COMPRESSIONACTIVE")
        self._tagged(cmd, "OK", "DEFLATE active")
        self.compressed = True
        self._emit(StartCompression(self.framer.take_buffered()))

    def _cmd_getquotaroot(self, cmd: Command) -> None:
        """RFC 9208 §4.1.2: one quota root "" (the whole account) when a limit is configured, none
        otherwise (a QUOTA response needs a limit, RFC 9208 §5.1)."""
        name = self._decode_name(cmd.args["root"])
        assert self.mail is not None
        self.mail.status(name)  # NO [NONEXISTENT] for unknown mailboxes
        roots = b' ""' if self.cfg.quota_bytes else b""
        self._emit(b"* QUOTAROOT " + self._encode_name(name) + roots + b"\r\n")
        if self.cfg.quota_bytes:
            self._emit_quota()
        self._tagged(cmd, "OK", "GETQUOTAROOT completed")

    def _emit_quota(self) -> None:
        assert self.mail is not None
        used = (self.mail.usage() + 1023) // 1024  # STORAGE is in units of 1024 octets
        self._emit(b'* QUOTA "" (STORAGE %d %d)\r\n' % (used, self.cfg.quota_bytes // 1024))

    def _cmd_getquota(self, cmd: Command) -> None:  # RFC 9208 §4.1.1
        if cmd.args["root"] != "" or not self.cfg.quota_bytes:
            return self._tagged(cmd, "NO", "No such quota root", "NONEXISTENT")
        self._emit_quota()
        self._tagged(cmd, "OK", "GETQUOTA completed")

    def _cmd_setquota(self, cmd: Command) -> None:
        self._tagged(cmd, "NO", "Quotas are set by the administrator", "NOPERM")  # RFC 9208 §4.1.4

    # ------------------------------------------------------------------------------------ selected

    def _cmd_check(self, cmd: Command) -> None:
        assert self.selected is not None
        self.selected.dirty = True
        self._tagged(cmd, "OK", "CHECK completed")

    def _cmd_close(self, cmd: Command) -> None:
        sel = self.selected
        assert sel is not None
        if not sel.readonly:  # RFC 3501 §6.4.2: silent expunge
            sel.mailbox.expunge()
        self._deselect()
        self._tagged(cmd, "OK", "CLOSE completed")

    def _cmd_unselect(self, cmd: Command) -> None:  # RFC 3691
        self._deselect()
        self._tagged(cmd, "OK", "UNSELECT completed")

    def _cmd_expunge(self, cmd: Command) -> None:
        """RFC 3501 §6.4.3; UID EXPUNGE (RFC 4315 §2.1) only touches the given UIDs."""
        sel = self.selected
        assert sel is not None
        if sel.readonly:
            return self._tagged(cmd, "NO", "Mailbox is read-only", "READ-ONLY")
        uidset: SequenceSet | None = cmd.args["set"]
        if uidset is not None:
            sel.mailbox.expunge(self._uids_for(uidset, True))
        else:
            sel.mailbox.expunge()
        sel.dirty = True
        self._tagged(cmd, "OK", "EXPUNGE completed")

    def _uids_for(self, s: SequenceSet, uid: bool) -> list[int]:
        """UIDs of the messages a set names, in the session's view (ghosts included)."""
        sel = self.selected
        assert sel is not None
        if s.saved:  # RFC 5182: "$", the saved result, minus what was expunged since
            return [u for u in self.saved_result if sel.live(u)]
        if uid:
            return [sel.uids[i] for i in s.indexes(sel.uids)]
        return [sel.uids[n - 1] for n in s.seqnums(sel.count())]

    def _check_seqset(self, cmd: Command, s: SequenceSet) -> bool:
        """RFC 3501 §9: a message sequence number must exist (BAD otherwise); UIDs need not."""
        if cmd.uid or s.saved:
            return True
        count = self.selected.count() if self.selected else 0
        for a, b in s.ranges:
            if a > count or b > count:  # "*" (0) in an empty mailbox names nothing, leniently
                self._tagged(cmd, "BAD", "Invalid message sequence number")
                return False
        return True

    def _message(self, uid: int, headers: "_HeaderBatch | None" = None) -> Message:
        sel = self.selected
        assert sel is not None
        mb = sel.mailbox
        loader = (lambda: headers.get(uid)) if headers is not None else (lambda: mb.header_bytes(uid))
        return Message(lambda: mb.open_message(uid), sel.infos[uid].size, loader, lambda: mb.internaldate(uid),
                       lambda start, length: mb.read_range(uid, start, length))

    def _cmd_search(self, cmd: Command) -> None:
        """SEARCH (RFC 3501 §6.4.4), ESEARCH (RFC 4731), MODSEQ (RFC 7162 §3.1.5)."""
        sel = self.selected
        assert sel is not None
        a = cmd.args
        try:
            keys = order_keys(decode_keys(a["keys"], a["charset"]))
        except UnknownCharset:  # RFC 3501 §6.4.4
            return self._tagged(cmd, "NO", "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
        uses_modseq = _has_modseq(keys)
        if uses_modseq:
            self.condstore = True
        results: list[tuple[int, int]] = []
        max_modseq = 0
        count = sel.count()
        max_uid = sel.uids[-1] if sel.uids else 0
        batch = _HeaderBatch(sel)
        for i, uid in enumerate(sel.uids):
            if not sel.live(uid):
                continue
            ctx = SearchContext(i + 1, sel.infos[uid], uid in sel.recent, count, max_uid,
                                lambda uid=uid: self._message(uid, batch), self.saved_result)
            try:
                hit = matches(keys, ctx)
            except (OSError, MessageNotFound):
                continue  # the message vanished meanwhile
            if hit:
                results.append((i + 1, uid))
                max_modseq = max(max_modseq, ctx.max_modseq)
        nums = [u if cmd.uid else s for s, u in results]
        if a["returns"] is None:
            line = b"* SEARCH" + b"".join(b" %d" % n for n in nums)
            if uses_modseq and nums:
                line += b" (MODSEQ %d)" % max_modseq  # RFC 7162 §3.1.5
            self._emit(line + b"\r\n")
            return self._tagged(cmd, "OK", "SEARCH completed")
        rets = set(a["returns"]) or {"ALL"}  # RFC 4731 §3.1: RETURN () means ALL
        if "SAVE" in rets:  # RFC 5182 §2.1: remember the result for "$"
            self.saved_result = [u for _, u in results]
            rets.discard("SAVE")
        if rets:  # RFC 5182 §2.4: SAVE alone produces no ESEARCH response
            parts = [b'* ESEARCH (TAG "' + cmd.tag.encode() + b'")']
            if cmd.uid:
                parts.append(b"UID")
            if nums and "MIN" in rets:
                parts.append(b"MIN %d" % nums[0])
            if nums and "MAX" in rets:
                parts.append(b"MAX %d" % nums[-1])
            if nums and "ALL" in rets:
                parts.append(b"ALL " + format_set(nums).encode())
            if "COUNT" in rets:
                parts.append(b"COUNT %d" % len(nums))
            if uses_modseq and nums:
                parts.append(b"MODSEQ %d" % max_modseq)
            self._emit(b" ".join(parts) + b"\r\n")
        self._tagged(cmd, "OK", "SEARCH completed")

    def _cmd_fetch(self, cmd: Command) -> None:
        """FETCH (RFC 3501 §6.4.5), CHANGEDSINCE (RFC 7162 §3.1.4); answered as a :class:`Stream`."""
        sel = self.selected
        assert sel is not None
        a = cmd.args
        if not self._check_seqset(cmd, a["set"]):
            return
        atts: list[FetchAtt] = a["atts"]
        changedsince = a["changedsince"]
        if changedsince is not None or any(t.name == "MODSEQ" for t in atts):
            self.condstore = True  # RFC 7162 §3.1
        uids = self._uids_for(a["set"], cmd.uid)
        if sel.ghosts:
            uids = [u for u in uids if sel.live(u)]
        if changedsince is not None:
            uids = [u for u in uids if sel.infos[u].modseq > changedsince]
        # \Seen for non-PEEK body fetches, set before answering (RFC 3501 §6.4.5)
        if not sel.readonly and any(fetchmod.sets_seen(t) for t in atts):
            unseen = [u for u in uids if "\\Seen" not in sel.infos[u].flags]
            if unseen:
                changed, _ = sel.mailbox.set_flags(unseen, ["\\Seen"], (), "+")
                for u in changed:
                    sel.refresh_info(u)
                if not any(t.name == "FLAGS" for t in atts):
                    atts = atts + [FetchAtt("FLAGS")]
        with_modseq = changedsince is not None or (self.condstore and any(t.name == "FLAGS" for t in atts))
        self.waiting = True
        failures: list[tuple[str, str]] = []
        self._emit(Stream(self._fetch_stream(cmd, uids, atts, with_modseq, failures)))

        def done() -> None:
            if failures:  # RFC 3501 §6.4.5: NO when some data could not be fetched
                code, text = failures[0]
                self._tagged(cmd, "NO", text, code)
            else:
                self._tagged(cmd, "OK", "FETCH completed")

        self._after_stream = done

    def _fetch_stream(self, cmd: Command, uids: list[int], atts: list[FetchAtt], with_modseq: bool,
                      failures: list[tuple[str, str]]) -> Iterator[bytes]:
        sel = self.selected
        assert sel is not None
        plan = fetchmod.simple_plan(atts, cmd.uid, with_modseq)
        if plan is not None:
            yield from self._fetch_simple(cmd, uids, atts, with_modseq, plan, failures)
            return
        yield from self._fetch_general(cmd, uids, atts, with_modseq, failures)

    def _fetch_general(self, cmd: Command, uids: list[int], atts: list[FetchAtt], with_modseq: bool,
                       failures: list[tuple[str, str]]) -> Iterator[bytes]:
        """Any FETCH: each message through :func:`fetch.fetch_items` (a big body streamed from its file)."""
        sel = self.selected
        assert sel is not None
        batch = _HeaderBatch(sel, uids)   # header blocks asked 500 at a time, only if an item needs one
        for uid in uids:
            if not sel.live(uid):
                continue
            seq = sel.seq_of(uid)
            info = sel.infos[uid]
            msg = self._message(uid, batch)
            chunks = fetchmod.fetch_items(seq, info, sel.flags_of(uid), atts, msg, with_uid=cmd.uid,
                                          with_modseq=with_modseq)
            first: list[bytes] = []
            size = 0
            try:
                # Small responses are built whole, so a failure cannot leave half a response behind.
                for chunk in chunks:
                    first.append(chunk)
                    size += len(chunk)
                    if size > 256 * 1024:
                        break
            except Exception as exc:  # noqa: BLE001 - reported by the tagged NO
                failures.append(_fetch_failure(exc, uid))
                continue
            yield b"".join(first)
            if size > 256 * 1024:
                yield from chunks  # a big body, streamed from the file (padded if it shrinks)

    def _fetch_simple(self, cmd: Command, uids: list[int], atts: list[FetchAtt], with_modseq: bool, plan: list,
                      failures: list[tuple[str, str]]) -> Iterator[bytes]:
        """FETCH of flags, sizes, header fields and whole messages only (a client's header sync or full
        download, see :func:`fetch.simple_plan`): one tight loop without a Message object per message; the
        field literals from the folder's header memo (computed from the cached header block on the first
        fetch of a message); a whole message read with one ``pread``.  A message too big to be read whole
        (``WHOLE_READ``) goes through the general path, which streams it."""
        sel = self.selected
        assert sel is not None
        mb = sel.mailbox
        batch = _HeaderBatch(sel, uids)
        memos = [mb.header_memo(key) if key is not None else None for _kind, key, _label in plan]
        steps = [(kind, key, label, memo) for (kind, key, label), memo in zip(plan, memos)]
        UID, FLAGS, SIZE, MODSEQ = fetchmod.UID_STEP, fetchmod.FLAGS_STEP, fetchmod.SIZE_STEP, fetchmod.MODSEQ_STEP
        WHOLE = fetchmod.WHOLE_STEP
        whole = any(kind is WHOLE for kind, *_ in plan)
        read_range = mb.read_range
        flag_items: dict[tuple, bytes] = {}
        seq_of = sel.seq_of
        for uid in uids:
            infos = sel.infos  # a sync during the stream may replace the session's dicts
            info = infos.get(uid)
            if info is None or uid in sel.ghosts:
                continue
            if whole and info.size > WHOLE_READ:
                yield from self._fetch_general(cmd, [uid], atts, with_modseq, failures)
                continue
            out = [b"* %d FETCH (" % seq_of(uid)]
            try:
                for kind, key, label, memo in steps:
                    out.append(label)
                    if kind is UID:
                        out.append(b"%d" % uid)
                    elif kind is FLAGS:
                        fk = (info.flags, info.keywords, uid in sel.recent)
                        item = flag_items.get(fk)
                        if item is None:
                            item = flag_items[fk] = fetchmod.flags_item(sel.flags_of(uid))
                        out.append(item)
                    elif kind is SIZE:
                        out.append(b"%d" % info.size)
                    elif kind is MODSEQ:
                        out.append(b"(%d)" % info.modseq)
                    elif kind is WHOLE:
                        size = info.size
                        out.append(b"{%d}\r\n" % size)
                        if size:
                            data = read_range(uid, 0, size)
                            if len(data) < size:   # the file shrank: keep the announced length (RFC 3501 §4.3)
                                data += b" " * (size - len(data))
                            out.append(data)
                    else:
                        literal = memo.data.get(uid)
                        if literal is None:
                            literal = fetchmod.fields_literal(batch.get(uid), key)
                            memo.put(uid, literal)
                        out.append(literal)
            except Exception as exc:  # noqa: BLE001 - reported by the tagged NO
                failures.append(_fetch_failure(exc, uid))
                continue
            out.append(b")\r\n")
            yield b"".join(out)

    def _cmd_store(self, cmd: Command) -> None:
        """STORE (RFC 3501 §6.4.6), UNCHANGEDSINCE (RFC 7162 §3.1.3)."""
        sel = self.selected
        assert sel is not None
        a = cmd.args
        if not self._check_seqset(cmd, a["set"]):
            return
        if sel.readonly:
            return self._tagged(cmd, "NO", "Mailbox is read-only", "READ-ONLY")
        if a["unchangedsince"] is not None:
            self.condstore = True
        uids = [u for u in self._uids_for(a["set"], cmd.uid) if sel.live(u)]
        system, keywords = split_flags(f for f in a["flags"] if f != "\\Recent")
        _, failed = sel.mailbox.set_flags(uids, system, keywords, a["mode"], a["unchangedsince"])
        kws = set(keywords) - sel.keywords
        if kws:  # RFC 3501 §7.2.6: announce new keywords
            sel.keywords = sel.keywords | kws
            self._emit(b"* FLAGS " + flag_list(SYSTEM + sorted(sel.keywords)) + b"\r\n")
        failed_set = set(failed)
        for uid in uids:
            info = sel.refresh_info(uid)
            if info is None or uid in failed_set:
                continue
            # .SILENT suppresses the FETCH; with UNCHANGEDSINCE the MODSEQ is still sent (RFC 7162 §3.1.3)
            if a["silent"] and a["unchangedsince"] is None:
                continue
            items = []
            if cmd.uid:
                items.append(b"UID %d" % uid)
            if not a["silent"]:
                items.append(b"FLAGS " + flag_list(sort_flags(sel.flags_of(uid))))
            if self.condstore:
                items.append(b"MODSEQ (%d)" % info.modseq)
            self._emit(b"* %d FETCH (%s)\r\n" % (sel.seq_of(uid), b" ".join(items)))
        if failed:
            nums = sorted(failed) if cmd.uid else sorted(sel.seq_of(u) for u in failed)
            return self._tagged(cmd, "OK", "Conditional STORE failed", "MODIFIED " + format_set(nums))
        self._tagged(cmd, "OK", "STORE completed")

    def _cmd_copy(self, cmd: Command, move: bool = False) -> None:
        """COPY (RFC 3501 §6.4.7) / MOVE (RFC 6851) with COPYUID (RFC 4315 §3)."""
        sel = self.selected
        assert sel is not None and self.mail is not None
        a = cmd.args
        if not self._check_seqset(cmd, a["set"]):
            return
        if move and sel.readonly:
            return self._tagged(cmd, "NO", "Mailbox is read-only", "READ-ONLY")
        dest_name = self._decode_name(a["mailbox"])
        uids = [u for u in self._uids_for(a["set"], cmd.uid) if sel.live(u)]
        if not move and self._over_quota(sum(sel.infos[u].size for u in uids)):
            return self._tagged(cmd, "NO", "Quota exceeded", "OVERQUOTA")
        try:
            dest = self.mail.open(dest_name)
        except MailboxNotFound:
            return self._tagged(cmd, "NO", "Mailbox does not exist", "TRYCREATE")
        if move and dest is sel.mailbox:
            return self._tagged(cmd, "NO", "Source and destination are the same", "CANNOT")
        pairs = sel.mailbox.move(uids, dest) if move else sel.mailbox.copy(uids, dest)
        code = None
        if pairs:
            pairs.sort()
            code = (f"COPYUID {dest.uidvalidity} {format_set([p[0] for p in pairs])} "
                    f"{format_set([p[1] for p in pairs])}")
        if move:
            if code:
                self._emit(f"* OK [{code}] Moved\r\n".encode())  # RFC 6851 §4.3
            sel.dirty = True
            return self._tagged(cmd, "OK", "MOVE completed")
        if dest is sel.mailbox:
            sel.dirty = True
        self._tagged(cmd, "OK", "COPY completed", code)

    def _cmd_move(self, cmd: Command) -> None:
        self._cmd_copy(cmd, move=True)


class _HeaderBatch:
    """Header blocks for SEARCH and FETCH, asked from the store's cache 500 messages at a time (one index
    query instead of one per message). ``order``: the UIDs the command walks (FETCH of a sparse set), else
    the whole mailbox in sequence order (SEARCH)."""

    SIZE = 500

    def __init__(self, sel: Selected, order: list[int] | None = None) -> None:
        self.sel = sel
        self.cache: dict[int, bytes] = {}
        self.order = order if order is not None else sel.uids
        self._by_seq = order is None
        self._position: dict[int, int] | None = None  # built on the first miss (FETCH)

    def get(self, uid: int) -> bytes:
        header = self.cache.pop(uid, None)
        if header is not None:
            return header
        sel = self.sel
        if self._by_seq:
            start = max(sel.seq_of(uid) - 1, 0)
        else:
            if self._position is None:
                self._position = {u: i for i, u in enumerate(self.order)}
            start = self._position.get(uid, 0)
        chunk = [u for u in self.order[start : start + self.SIZE] if sel.live(u)]
        if uid not in chunk:
            chunk.insert(0, uid)
        try:
            self.cache = dict(sel.mailbox.headers(chunk))
        except MessageNotFound:  # one of them vanished meanwhile: ask for this one alone
            self.cache = {}
            return sel.mailbox.header_bytes(uid)
        return self.cache.pop(uid)


def _has_modseq(key: tuple) -> bool:
    kind = key[0]
    if kind == "MODSEQ":
        return True
    if kind == "AND":
        return any(_has_modseq(k) for k in key[1])
    if kind == "NOT":
        return _has_modseq(key[1])
    if kind == "OR":
        return _has_modseq(key[1]) or _has_modseq(key[2])
    return False


def _fetch_failure(exc: Exception, uid: int) -> tuple[str, str]:
    """The response code and text of the tagged NO for a message whose FETCH failed (call it inside the
    ``except``: an unexpected error is logged with its traceback, and the client never sees Python
    internals, DESIGN §4)."""
    if isinstance(exc, BinaryError):                 # RFC 3516 §4.3: NO [UNKNOWN-CTE]
        return exc.code, _safe(exc)
    if isinstance(exc, (OSError, MessageNotFound)):  # RFC 5530: the message went away meanwhile
        return "EXPUNGEISSUED", "Some messages were expunged"
    log.failure("IMAP: FETCH of message {uid} failed", uid=uid)
    return "SERVERBUG", "Some messages could not be fetched"


def _safe(exc: Exception) -> str:
    """An exception text fit for a client: one line, printable, short."""
    text = str(exc).splitlines()[0] if str(exc) else "error"
    return "".join(c for c in text if c.isprintable())[:200]
