"""One session's view of its selected mailbox: sequence numbers, reported flags, pending updates.

The store changes under us (other sessions, deliveries, POP3, outside Maildir tools).  The session keeps
the state it has told the client; :meth:`Selected.sync` compares it with the store and produces the
untagged ``EXPUNGE``/``EXISTS``/``RECENT``/``FETCH`` updates (RFC 3501 §7.3.1, §7.4.1, §5.2).  When
EXPUNGE may not be sent (during FETCH, STORE, SEARCH: RFC 3501 §7.4.1) expunged messages stay in the
view as ghosts until a later command may report them.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

from .backend import Mailbox, MessageInfo, all_flags

SYSTEM = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
#: the shared "none" of ``recent`` and ``ghosts``: a session holds a set of its own only while it has some
NONE: frozenset[int] = frozenset()


@dataclass(slots=True)
class Selected:
    mailbox: Mailbox
    readonly: bool
    uids: list[int] = field(default_factory=list)
    infos: dict[int, MessageInfo] = field(default_factory=dict)
    recent: set[int] | frozenset[int] = NONE
    ghosts: set[int] | frozenset[int] = NONE  # expunged in the store, not yet reported
    dirty: bool = False
    keywords: frozenset[str] = frozenset()
    listener: Callable[[], None] | None = None
    uidvalidity: int = 0
    #: ``uids`` and ``infos`` are the mailbox's shared snapshot (copied before the first change)
    shared: bool = False
    _first_unseen: int = 0

    @property
    def name(self) -> str:
        return self.mailbox.name

    def load(self) -> None:
        """Take the mailbox's snapshot (shared with the other sessions until one of us changes it:
        SELECT of an unchanged big folder costs no work per message)."""
        # RFC 3501 §2.3.2: \Recent belongs to the first session that selects; EXAMINE only looks.
        view, recent = self.mailbox.select_view(claim=not self.readonly)
        self.recent = recent or NONE
        self.uidvalidity = self.mailbox.uidvalidity
        self.uids = view.uids
        self.infos = view.infos
        self.shared = True
        self.keywords = view.keywords
        self._first_unseen = view.first_unseen

    def _own(self) -> None:
        """Copy the shared snapshot before changing it."""
        if self.shared:
            self.uids = list(self.uids)
            self.infos = dict(self.infos)
            self.shared = False

    def first_unseen(self) -> int:
        """Sequence number of the first message without \\Seen, 0 if none (SELECT's UNSEEN code)."""
        if self.shared:
            return self._first_unseen
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.infos[uid].flags:
                return i + 1
        return 0

    def _keywords(self) -> frozenset[str]:
        kws: set[str] = set()
        for m in self.infos.values():
            kws.update(m.keywords)
        return frozenset(kws)

    def count(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def flags_of(self, uid: int) -> list[str]:
        flags = list(all_flags(self.infos[uid]))
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def live(self, uid: int) -> bool:
        return uid not in self.ghosts and uid in self.infos

    def refresh_info(self, uid: int) -> MessageInfo | None:
        """Take the store's current info of a message we just changed ourselves."""
        try:
            info = self.mailbox.message(uid)
        except KeyError:
            return None
        if uid in self.infos:
            if self.infos[uid] is not info:
                self._own()
                self.infos[uid] = info
        return info

    def sync(self, allow_expunge: bool, condstore: bool) -> list[bytes]:
        """Untagged updates bringing the client's view up to date with the store (the caller has
        synced the store with the Maildir).  A view still shared with the mailbox is copied only when
        something changed (IDLE starts with a sync: an idle session keeps no copy of its own)."""
        self.dirty = False
        current = self.mailbox.messages()
        out: list[bytes] = []
        by_uid = {m.uid: m for m in current}
        vanished = [u for u in self.uids if u not in by_uid and u not in self.ghosts]
        if vanished:
            self.ghosts = {*self.ghosts, *vanished}
        if self.ghosts and allow_expunge:
            self._own()
            # Descending order: each EXPUNGE leaves the lower sequence numbers unchanged (RFC 3501 §7.4.1).
            for seq in sorted((self.seq_of(u) for u in self.ghosts), reverse=True):
                out.append(b"* %d EXPUNGE\r\n" % seq)
            gone = self.ghosts
            self.uids = [u for u in self.uids if u not in gone]
            for u in gone:
                self.infos.pop(u, None)
            if not self.recent.isdisjoint(gone):
                self.recent = (self.recent - gone) or NONE
            self.ghosts = NONE
        for uid in self.uids:  # flag changes made elsewhere (RFC 3501 §7.4.2)
            new = by_uid.get(uid)
            old = self.infos.get(uid)
            if new is None or old is None or new is old:
                continue
            self._own()
            self.infos[uid] = new
            if all_flags(new) != all_flags(old) or (condstore and new.modseq != old.modseq):
                flags = " ".join(sorted(self.flags_of(uid))).encode("utf-8")
                extra = b" MODSEQ (%d)" % new.modseq if condstore else b""
                out.append(b"* %d FETCH (UID %d FLAGS (%s)%s)\r\n" % (self.seq_of(uid), uid, flags, extra))
        last = self.uids[-1] if self.uids else 0
        new_msgs = [m for m in current if m.uid > last]
        if new_msgs:
            self._own()
            self.uids.extend(m.uid for m in new_msgs)
            for m in new_msgs:
                self.infos[m.uid] = m
            if not self.readonly:
                claimed = self.mailbox.claim_recent()
            else:
                claimed = {m.uid for m in new_msgs if m.recent}
            if claimed:
                self.recent = {*self.recent, *claimed}
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        kws = self._keywords()
        if kws - self.keywords:  # RFC 3501 §7.2.6: FLAGS when the defined flags change
            self.keywords = self.keywords | kws
            out.insert(0, b"* FLAGS (" + " ".join(SYSTEM + sorted(self.keywords)).encode("utf-8") + b")\r\n")
        return out
