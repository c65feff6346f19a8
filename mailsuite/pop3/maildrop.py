"""The POP3 maildrop: the user's INBOX in the shared store, as it was at login.

RFC 1939 §8 leaves the maildrop's meaning to the server; here it is the INBOX, listed once at login, with the
Maildir base name as the message key and UIDL (stable for the life of the message, whatever IMAP does to its
flags).  Removal at QUIT and ``\\Seen`` on RETR go through the store, so IMAP sessions see them.
"""

from __future__ import annotations

import re
from typing import Any, BinaryIO, Callable, Protocol, Sequence

from .engine import DropEntry, uidl_for

__all__ = ["Maildrop", "InboxMaildrop", "wire_size"]

#: Dovecot's ``,W=<size>`` in a Maildir name: the size with CRLF line ends (its "virtual size")
_W_RE = re.compile(r",W=(\d+)")
#: octets as sent, per (base name, file size): a Maildir file's content never changes under its name
_WIRE_SIZES: dict[tuple[str, int], int] = {}
_MAX_CACHED = 500_000


def wire_size(path: str, file_size: int) -> int:
    """The octets RETR sends for the file, before dot-stuffing: every bare LF becomes CRLF and an unfinished
    last line gets one (as ``DotStuffer`` does).  RFC 1939 §11: CRLF counts as two octets whatever the local
    line-end convention; files this server writes are CRLF already, Dovecot's or Postfix's are LF."""
    extra, last = 0, b""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crlf = chunk.count(b"\r\n") + (1 if last == b"\r" and chunk[:1] == b"\n" else 0)
            extra += chunk.count(b"\n") - crlf
            last = chunk[-1:]
    if last not in (b"", b"\n"):
        extra += 2
    return file_size + extra


def _known_size(name: str, file_size: int) -> int | None:
    match = _W_RE.search(name)
    if match:
        return int(match.group(1))
    return _WIRE_SIZES.get((name, file_size))


def _measure(todo: list[tuple[str, int, str]]) -> None:
    """Fill the size cache for ``(name, file size, path)`` (in a thread: it reads whole files)."""
    for name, file_size, path in todo:
        try:
            size = wire_size(path, file_size)
        except OSError:
            continue           # renamed (flags) or removed meanwhile: the file size is used this time
        if len(_WIRE_SIZES) >= _MAX_CACHED:
            _WIRE_SIZES.clear()
        _WIRE_SIZES[(name, file_size)] = size


class Maildrop(Protocol):
    """What the adapter needs from a maildrop (methods may return values or Deferreds where noted)."""

    def open(self) -> Any:
        """List the messages (``Sequence[DropEntry]`` or a Deferred firing with it)."""

    def open_message(self, key: str) -> BinaryIO:
        """An open binary file of the message; OSError or LookupError when it is gone."""

    def mark_seen(self, key: str) -> None:
        """Set ``\\Seen`` on the message (RFC 1939 does not, the IMAP view does)."""

    def remove(self, keys: Sequence[str]) -> Any:
        """Remove the messages (bool, or a Deferred firing with it: True when all are gone)."""


class InboxMaildrop:
    """The INBOX of ``user`` in a :class:`mailsuite.store.Store`, listed once at :meth:`open`.

    Keys are Maildir base names (``MessageInfo.name``); the UID each had at login is remembered and checked
    on use, so a name is found again even if the index was rebuilt meanwhile (new UIDs, same names).
    All calls are made on the reactor thread, as the store asks.
    """

    def __init__(self, store: Any, user: str, runner: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self.store, self.user = store, user
        self._runner = runner           # runs file reads off the reactor thread (deferToThread); None: inline
        self._mailbox: Any = None
        self._uids: dict[str, int] = {}

    def open(self) -> Any:
        """The listing (a list, or a Deferred firing with it when files had to be measured in a thread)."""
        self._mailbox = self.store.mailbox(self.user, "INBOX")
        messages = self._mailbox.messages()
        self._uids = {m.name: m.uid for m in messages}

        def entries(_: Any = None) -> list[DropEntry]:
            # RFC 1939 §5: sizes are the octets sent (the file size until a measure is known)
            return [DropEntry(m.name, _known_size(m.name, m.size) or m.size, uidl_for(m.name)) for m in messages]

        todo = [(m.name, m.size, str(m.path)) for m in messages if _known_size(m.name, m.size) is None]
        if not todo:
            return entries()
        if self._runner is None:
            _measure(todo)
            return entries()
        return self._runner(lambda: _measure(todo)).addCallback(entries)

    def _uid(self, key: str) -> int:
        """The current UID of ``key``; raises LookupError when the message is gone."""
        from mailsuite.store import MessageNotFound
        uid = self._uids.get(key)
        if uid is None:
            raise MessageNotFound(key)
        try:
            if self._mailbox.message(uid).name == key:
                return uid
        except MessageNotFound:
            pass
        self._mailbox.sync()
        self._uids = {m.name: m.uid for m in self._mailbox.messages()}
        if key not in self._uids:
            raise MessageNotFound(key)
        return self._uids[key]

    def open_message(self, key: str) -> BinaryIO:
        return self._mailbox.open_message(self._uid(key))

    def mark_seen(self, key: str) -> None:
        self._mailbox.set_flags([self._uid(key)], ["\\Seen"], mode="+")

    def remove(self, keys: Sequence[str]) -> bool:
        """RFC 1939 §6: flag the messages ``\\Deleted`` and expunge exactly those (IMAP sees them go).
        Messages that IMAP removed meanwhile count as removed."""
        uids = []
        for key in keys:
            try:
                uids.append(self._uid(key))
            except LookupError:
                continue
        if not uids:
            return True
        self._mailbox.set_flags(uids, ["\\Deleted"], mode="+")
        gone = set(self._mailbox.expunge(uids))
        return gone >= set(uids)
