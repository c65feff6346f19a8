"""The POP3 maildrop: the user's INBOX in the shared store, as it was at login.

RFC 1939 §8 leaves the maildrop's meaning to the server; here it is the INBOX, listed once at login, with the
Maildir base name as the message key and UIDL (stable for the life of the message, whatever IMAP does to its
flags).  Removal at QUIT and ``\\Seen`` for the retrieved messages (one batch when the session ends) go
through the store, so IMAP sessions see them.
"""

from __future__ import annotations

import re
from typing import Any, BinaryIO, Callable, Protocol, Sequence

from .dotstuff import has_bare_lf
from .engine import DropEntry, uidl_for

__all__ = ["Maildrop", "InboxMaildrop", "measure", "wire_size"]

#: Dovecot's ``,W=<size>`` in a Maildir name: the size with CRLF line ends (its "virtual size")
_W_RE = re.compile(r",W=(\d+)")
#: per (base name, file size): (octets as sent, True when the file has no bare LF); a Maildir file's content
#: never changes under its name
_WIRE_SIZES: dict[tuple[str, int], tuple[int, bool]] = {}
_MAX_CACHED = 500_000
#: bytes read per step while measuring
_MEASURE_CHUNK = 1 << 20


def measure(path: str, file_size: int) -> tuple[int, bool]:
    """The octets RETR sends for the file, before dot-stuffing, and whether it has no bare LF.

    Every bare LF becomes CRLF and an unfinished last line gets one (as ``DotStuffer`` does).  RFC 1939 §11:
    CRLF counts as two octets whatever the local line-end convention; files this server writes are CRLF
    already, Dovecot's or Postfix's are LF.  A CRLF file costs one regex scan for a bare LF per chunk;
    only a chunk that has one is counted."""
    extra, last = 0, b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_MEASURE_CHUNK):
            after_cr = last == b"\r"
            if has_bare_lf(chunk, after_cr):
                crlf = chunk.count(b"\r\n") + (1 if after_cr and chunk[:1] == b"\n" else 0)
                extra += chunk.count(b"\n") - crlf
            last = chunk[-1:]
    clean = extra == 0
    if last not in (b"", b"\n"):
        extra += 2
    return file_size + extra, clean


def wire_size(path: str, file_size: int) -> int:
    """The octets RETR sends for the file, before dot-stuffing (see :func:`measure`)."""
    return measure(path, file_size)[0]


def _known(name: str, file_size: int) -> tuple[int, bool] | None:
    """(octets as sent, no bare LF) when known without reading the file."""
    match = _W_RE.search(name)
    if match:
        # Dovecot's virtual size counts each LF as CRLF: equal to the file size, the file has no bare LF
        size = int(match.group(1))
        return size, size == file_size
    return _WIRE_SIZES.get((name, file_size))


def _measure(todo: list[tuple[str, int, str]]) -> None:
    """Fill the size cache for ``(name, file size, path)`` (in a thread: it reads whole files)."""
    for name, file_size, path in todo:
        try:
            result = measure(path, file_size)
        except OSError:
            continue           # renamed (flags) or removed meanwhile: the file size is used this time
        if len(_WIRE_SIZES) >= _MAX_CACHED:
            _WIRE_SIZES.clear()
        _WIRE_SIZES[(name, file_size)] = result


class Maildrop(Protocol):
    """What the adapter needs from a maildrop (methods may return values or Deferreds where noted)."""

    def open(self) -> Any:
        """List the messages (``Sequence[DropEntry]`` or a Deferred firing with it)."""

    def open_message(self, key: str) -> BinaryIO:
        """An open binary file of the message; OSError or LookupError when it is gone."""

    def crlf(self, key: str) -> bool:
        """Optional: True when the message is known to have no bare LF (the dot-stuffer skips its LF check)."""

    def mark_seen(self, keys: Sequence[str]) -> None:
        """Set ``\\Seen`` on the messages, in one go (RFC 1939 does not, the IMAP view does)."""

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
        self._crlf: set[str] = set()     # keys of the messages known to have no bare LF

    def open(self) -> Any:
        """The listing (a list, or a Deferred firing with it when files had to be measured in a thread)."""
        self._mailbox = self.store.mailbox(self.user, "INBOX")
        messages = self._mailbox.messages()
        self._uids = {m.name: m.uid for m in messages}

        known = [_known(m.name, m.size) for m in messages]
        todo = [(m.name, m.size, m.fspath) for m, k in zip(messages, known) if k is None]

        def entries(_: Any = None) -> list[DropEntry]:
            # RFC 1939 §5: sizes are the octets sent (the file size until a measure is known)
            out = []
            crlf = self._crlf
            crlf.clear()
            for m, k in zip(messages, known):
                if k is None:
                    k = _known(m.name, m.size)     # measured meanwhile
                    if k is None:
                        out.append(DropEntry(m.name, m.size, uidl_for(m.name)))
                        continue
                if k[1]:
                    crlf.add(m.name)
                out.append(DropEntry(m.name, k[0], uidl_for(m.name)))
            return out

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

    def crlf(self, key: str) -> bool:
        return key in self._crlf

    def _live_uids(self, keys: Sequence[str]) -> list[int]:
        """The UIDs of those messages that are still there (IMAP may have removed some meanwhile)."""
        uids = []
        for key in keys:
            try:
                uids.append(self._uid(key))
            except LookupError:
                continue
        return uids

    def mark_seen(self, keys: Sequence[str]) -> None:
        """One ``set_flags`` (one index commit) for all the messages; those gone meanwhile are skipped."""
        if isinstance(keys, str):
            keys = [keys]
        uids = self._live_uids(keys)
        if uids:
            self._mailbox.set_flags(uids, ["\\Seen"], mode="+")

    def remove(self, keys: Sequence[str]) -> bool:
        """RFC 1939 §6: flag the messages ``\\Deleted`` and expunge exactly those (IMAP sees them go).
        Messages that IMAP removed meanwhile count as removed."""
        uids = self._live_uids(keys)
        if not uids:
            return True
        self._mailbox.set_flags(uids, ["\\Deleted"], mode="+")
        gone = set(self._mailbox.expunge(uids))
        return gone >= set(uids)
