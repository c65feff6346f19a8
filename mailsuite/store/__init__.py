"""The mail store: Dovecot-compatible Maildir++ per user, durable delivery, a SQLite index of UIDs,
flags and modseqs, and change notifications.  SMTP delivery, POP3 and IMAP all use this one API.

Layout (DESIGN §3)::

    <root>/<domain>/<local>/                 INBOX  (cur/ new/ tmp/)
    <root>/<domain>/<local>/.Sent/           folder "Sent" (Maildir++: "." + modified UTF-7 name)
    <root>/<domain>/<local>/.Work.Projects/  folder "Work.Projects" ("." is the IMAP delimiter)
    <root>/<domain>/<local>/mailsuite-index.sqlite   the index (WAL; rebuilt if lost or corrupt)
    <root>/<domain>/<local>/mailsuite-uidvalidity    last UIDVALIDITY handed out (survives index loss)
    <root>/<domain>/<local>/subscriptions            subscribed names, one modified UTF-7 name a line

Messages are files named ``<base>`` in ``new/`` or ``<base>:2,<letters>`` in ``cur/``; letters are
``D`` \\Draft, ``F`` \\Flagged, ``R`` \\Answered, ``S`` \\Seen, ``T`` \\Deleted and ``a``-``z`` keywords
(``dovecot-keywords``).  The base never changes: it keys the message in the index (UIDs survive
restarts and rescans) and is its POP3 UIDL.  Files are stored with CRLF line ends, so the file size is
RFC822.SIZE and the POP3 octet count.

Names: the API takes and returns canonical Unicode mailbox names (``"INBOX"``, ``"Work.Projects"``,
``"Entwürfe"``); :mod:`mailsuite.store.names` converts from/to IMAP's modified UTF-7
(:func:`~mailsuite.store.names.decode_name`, :func:`~mailsuite.store.names.encode_mutf7`) and validates.

Threads: SQLite is only touched on the caller's thread under a per-user lock; use the Store from the
reactor thread.  :meth:`Store.deliver` and :meth:`Store.append` do their blocking file work (write,
fsync, link, directory fsync) in the reactor's bounded thread pool, then index on the reactor thread.
:meth:`Store.deliver_sync` is the blocking, thread-safe, index-free variant.

API summary::

    store = Store(data_dir / "mail")                 # runner=... to inject the thread runner (tests)
    store.user_dir("alice@example.org")              # -> root/example.org/alice (validated)
    store.create_user(user)                          # INBOX + Sent Drafts Trash Junk Archive, subscribed
    await store.deliver(user, data, folder="INBOX", flags="")   # Deferred[file name]
    store.deliver_sync(user, data, folder, flags)    # blocking, any thread, no index
    await store.append(user, name, data, flags, keywords, internaldate)   # Deferred[uid]
    await store.append_file(user, name, path, flags, keywords, internaldate)  # spooled file, linked in
    store.list_mailboxes(user) -> [MailboxInfo(name, special_use, subscribed, has_children, selectable)]
    store.create_mailbox / delete_mailbox / rename_mailbox(user, old, new)
    store.subscribe / unsubscribe(user, name); store.subscriptions(user)
    store.add_listener(user, name, cb) / remove_listener(...)   # cb() after each change
    store.usage(user)                                # bytes, for QUOTA
    store.export_dovecot(user)                       # write dovecot-uidlist files (leaving for Dovecot)
    store.clean_stale_tmp()                          # at server start: tmp/ files older than 36 h
    store.close()                                    # at shutdown: flush header cache, close indexes

    mb = store.mailbox(user, "INBOX")                # shared instance, synced; MailboxNotFound
    mb.uidvalidity, mb.uidnext, mb.highestmodseq
    mb.sync() -> bool                                # outside changes (2 stats when nothing changed)
    mb.messages() -> [MessageInfo]                   # UID order; seq number = position + 1
    mb.message(uid); mb.uids(); len(mb); mb.status(); mb.changed_since(modseq)
    mb.claim_recent() -> set[uid]                    # \\Recent for this session only
    mb.open_message(uid); mb.read_message(uid); mb.header_bytes(uid); mb.headers(uids)
    mb.append(data, flags, keywords, internaldate) -> uid
    mb.set_flags(uids, flags, keywords, mode="+", unchangedsince=None) -> (changed, failed)
    mb.expunge(uids=None) -> [uid]
    mb.copy(uids, dest) / mb.move(uids, dest) -> [(src uid, new uid)]

Errors (:mod:`mailsuite.store.errors`): InvalidUser, InvalidMailboxName, MailboxNotFound,
MailboxExists, MessageNotFound, InvalidFlag (all StoreError).
"""

from __future__ import annotations

from .errors import (
    InvalidMailboxName,
    InvalidUser,
    MailboxExists,
    MailboxNotFound,
    MessageNotFound,
    StoreError,
)
from .mailbox import InvalidFlag, Mailbox, MessageInfo
from .names import decode_mutf7, decode_name, encode_mutf7, validate_name
from .store import SPECIAL_USE, MailboxInfo, Store

__all__ = [
    "Store",
    "Mailbox",
    "MessageInfo",
    "MailboxInfo",
    "SPECIAL_USE",
    "StoreError",
    "InvalidUser",
    "InvalidMailboxName",
    "MailboxNotFound",
    "MailboxExists",
    "MessageNotFound",
    "InvalidFlag",
    "encode_mutf7",
    "decode_mutf7",
    "decode_name",
    "validate_name",
]
