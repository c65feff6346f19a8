"""The POP3 maildrop: the user's INBOX in the shared store, as it was at login.

RFC 1939 §8 leaves the maildrop's meaning to the server; here it is the INBOX, listed once at login, with the
Maildir base name as the message key and UIDL (stable for the life of the message, whatever IMAP does to its
flags).  Removal at QUIT and ``\\Seen`` on RETR go through the store, so IMAP sessions see them.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol, Sequence

from .engine import DropEntry, uidl_for

__all__ = ["Maildrop", "InboxMaildrop"]


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

    def __init__(self, store: Any, user: str) -> None:
        self.store, self.user = store, user
        self._mailbox: Any = None
        self._uids: dict[str, int] = {}

    def open(self) -> list[DropEntry]:
        self._mailbox = self.store.mailbox(self.user, "INBOX")
        messages = self._mailbox.messages()
        self._uids = {m.name: m.uid for m in messages}
        # RFC 1939 §5: sizes are the octets sent; the store keeps CRLF files, so the file size is exact
        return [DropEntry(m.name, m.size, uidl_for(m.name)) for m in messages]

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
