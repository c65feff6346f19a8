"""One user's view of :class:`mailsuite.store.Store` for the IMAP engine.

The engine calls the store synchronously for everything answered from the index (it is in-process:
LIST, STATUS, SELECT, FETCH, STORE, SEARCH, EXPUNGE, COPY/MOVE).  APPEND is the exception: its file
work (write, fsync, link) runs in the store's thread pool, so :meth:`UserMail.append` returns a
Deferred that the engine hands to the adapter as an :class:`~mailsuite.imap.engine.Await` action.
Mailbox names here are canonical Unicode store names (``.`` delimiter).
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable

from twisted.internet import defer

from ..store import MailboxInfo, Store
from ..store.mailbox import Mailbox, MessageInfo
from .spool import SpooledMessage, SpoolFile

DELIMITER = "."

__all__ = ["DELIMITER", "UserMail", "Mailbox", "MessageInfo", "MailboxInfo", "split_flags", "all_flags"]


def split_flags(flags: Iterable[str]) -> tuple[list[str], list[str]]:
    """(system flags, keywords) of an IMAP flag list (RFC 3501 §2.3.2)."""
    flags = list(flags)
    system = [f for f in flags if f.startswith("\\")]
    keywords = [f for f in flags if not f.startswith("\\")]
    return system, keywords


def all_flags(m: MessageInfo) -> frozenset[str]:
    return m.flags | m.keywords


class UserMail:
    """One session's access to a user's mail in the store."""

    def __init__(self, store: Store, user: str) -> None:
        self.store = store
        self.user = user

    def folders(self) -> list[MailboxInfo]:
        return self.store.list_mailboxes(self.user)

    def create(self, name: str) -> str:
        return self.store.create_mailbox(self.user, name)

    def delete(self, name: str) -> None:
        self.store.delete_mailbox(self.user, name)

    def rename(self, old: str, new: str) -> str:
        return self.store.rename_mailbox(self.user, old, new)

    def subscribe(self, name: str, on: bool) -> None:
        if on:
            self.store.subscribe(self.user, name)
        else:
            self.store.unsubscribe(self.user, name)

    def subscriptions(self) -> list[str]:
        return self.store.subscriptions(self.user)

    def open(self, name: str) -> Mailbox:
        """The shared, freshly synced mailbox (MailboxNotFound, InvalidMailboxName)."""
        return self.store.mailbox(self.user, name)

    def status(self, name: str) -> dict[str, int]:
        return self.open(name).status()

    def usage(self) -> int:
        return self.store.usage(self.user)

    def listen(self, name: str, callback: Callable[[], object]) -> None:
        self.store.add_listener(self.user, name, callback)

    def unlisten(self, name: str, callback: Callable[[], object]) -> None:
        self.store.remove_listener(self.user, name, callback)

    def spool(self) -> SpoolFile:
        """A spool file for a big APPEND literal, in the user's Maildir ``tmp/`` (same file system as
        every folder, so the store links it in without copying)."""
        directory = self.store.user_dir(self.user) / "tmp"
        if not directory.is_dir():
            self.open("INBOX")  # creates a missing account tree
        return SpoolFile(directory)

    def append(self, name: str, data: bytes | SpooledMessage, flags: Iterable[str],
               when: datetime | None) -> defer.Deferred:
        """Fires with (uidvalidity, uid) for APPENDUID (RFC 4315 §3).  A spooled message is linked in
        by the store from its file (``Store.append_file``)."""
        system, keywords = split_flags(flags)
        try:
            mb = self.open(name)
        except Exception:
            return defer.fail()
        stamp = when.timestamp() if when is not None else None
        if isinstance(data, SpooledMessage):
            d = self.store.append_file(self.user, name, data.path, tuple(system), tuple(keywords), stamp)
        else:
            d = self.store.append(self.user, name, data, tuple(system), tuple(keywords), stamp)
        d.addCallback(lambda uid: (mb.uidvalidity, uid))
        return d
