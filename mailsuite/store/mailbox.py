"""One open Maildir folder: its messages, UIDs, flags, modseqs, and the sync with the disk.

A :class:`Mailbox` is shared by every session of the process that opened the same folder (the
:class:`~mailsuite.store.Store` hands out one instance per user and folder), so a change made by one
session is seen at once by the others; listeners registered on the store are told after each change.

State lives in memory (a dict UID -> :class:`MessageInfo`, in UID order) and in the user's SQLite
index.  :meth:`Mailbox.sync` reconciles with the disk: it stats ``new/`` and ``cur/`` and lists a
directory only when its mtime moved since the last scan, or when that scan was too close to the
mtime to be sure nothing changed after it within the file system's timestamp granularity.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import operator
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from twisted.logger import Logger
from twisted.python import threadable

from . import dovecot
from .errors import MailboxNotFound, MessageNotFound, StoreError
from .index import CRASH_UID_GAP, FolderRow, UserIndex
from .maildir import (
    FLAG_LETTERS,
    LETTER_FLAGS,
    WrittenMessage,
    clean_tmp,
    fsync_dir,
    header_block,
    info_letters,
    make_maildir,
    make_suffix,
    normalize_line_ends,
    read_header_block,
    unique_base,
    write_message,
)

if TYPE_CHECKING:
    from .store import _UserState

__all__ = ["Mailbox", "MailboxView", "MessageInfo", "normalize_flags", "validate_keywords", "InvalidFlag"]

log = Logger()

EMPTY: frozenset[str] = frozenset()
#: Stand-in for a folder's dict while it is empty (most folders of idle sessions): shared, so never
#: written; a folder makes a dict of its own for its first entry.
_VACANT: dict = {}
#: The keyword table of folders without keywords (shared, never written: a new keyword makes a new table).
_NO_KEYWORDS: list[str | None] = []
#: Suffix cache shared by the folders without keywords (their suffixes decode alike); bounded.
_PLAIN_SUFFIXES: dict = {}
_PLAIN_SUFFIXES_MAX = 4096
_SUBDIRS = ("new", "cur")
_NS = 1_000_000_000
#: How many fetched headers to keep before writing them to the index in one transaction.
_HEADER_FLUSH = 256
#: Bytes of derived header data (:meth:`Mailbox.header_memo`) kept by the process, all folders together.
_MEMO_BUDGET = 64 * 1024 * 1024
#: How many learnt dates (:meth:`Mailbox.internaldate`) to keep before writing them to the index.
_DATES_FLUSH = 8192
#: A first scan with at least this many messages writes its index rows after answering (see _first_scan),
#: in the store's thread pool, this many per transaction.
_BULK_DEFER = 5000
#: Rows per transaction of that writer (~3 ms of CPU: the longest a session of the user waits for the
#: lock), its pause between them (lock and GIL released, see :meth:`Mailbox._write_bulk_rows`), and how
#: many rows it writes between WAL checkpoints (made without the lock, :class:`~.index.Checkpointer`).
_BULK_CHUNK = 500
_BULK_PAUSE = 0.0005
_BULK_CHECKPOINT = 20000
#: Folders up to this size are rescanned at once when a scan could not be trusted (see _needs_scan).
_EAGER_RESCAN_LIMIT = 2000


class InvalidFlag(StoreError, ValueError):
    """A flag that is not an IMAP system flag, or a malformed keyword (RFC 3501 §2.3.2)."""


_CANONICAL_FLAGS = {f.lower(): f for f in FLAG_LETTERS}
_KEYWORD_BAD = frozenset('(){%*"\\]')


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Canonical system flags (``\\seen`` -> ``\\Seen``).  ``\\Recent`` is dropped: it cannot be
    stored (RFC 3501 §2.3.2, §6.4.6).  Anything else raises :class:`InvalidFlag`."""
    out = set()
    for f in flags:
        low = f.lower()
        if low == "\\recent":
            continue
        try:
            out.add(_CANONICAL_FLAGS[low])
        except KeyError:
            raise InvalidFlag(f"not a storable system flag: {f!r}") from None
    return frozenset(out)


def validate_keywords(keywords: Iterable[str]) -> frozenset[str]:
    """Keywords must be IMAP atoms (RFC 3501 §9 ``flag-keyword``): no space, control, or atom-specials."""
    out = set()
    for k in keywords:
        if (
            not k
            or len(k) > 255
            or any(ord(c) <= 0x20 or ord(c) >= 0x7F or c in _KEYWORD_BAD for c in k)
        ):
            raise InvalidFlag(f"invalid keyword {k!r}")
        out.add(k)
    return frozenset(out)


def _location_row(m: MessageInfo) -> tuple:
    return (m.subdir, m.suffix, _letters_of(m.flags), _keywords_text(m.keywords), m.modseq, m.uid)


@functools.lru_cache(maxsize=4096)
def _flags_of(letters: str) -> frozenset[str]:
    return frozenset(LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS)


@functools.lru_cache(maxsize=4096)
def _letters_of(flags: frozenset[str]) -> str:
    return "".join(sorted(FLAG_LETTERS[f] for f in flags))


def _keywords_of(text: str) -> frozenset[str]:
    return frozenset(text.split(" ")) if text else EMPTY


@functools.lru_cache(maxsize=4096)
def _keywords_text(keywords: frozenset[str]) -> str:
    return " ".join(sorted(keywords)) if keywords else ""


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a big folder's objects are built (they hold no cycles; the
    collector would otherwise walk the growing heap again and again).  On the reactor thread the
    collector comes back after this turn's answer is written: the first allocation after
    ``gc.enable()`` runs the collection that was put off, a walk over all the new objects."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if _reactor_running() and threadable.isInIOThread():
                _call_later(gc.enable)
            else:
                gc.enable()


def _reactor_running() -> bool:
    from twisted.internet import reactor

    return bool(getattr(reactor, "running", False))


def _call_later(fn: Callable[[], object]) -> None:
    """Run ``fn`` on a later reactor turn, after the output of this one is written (a delay of 0 would
    run it before the reactor polls its sockets again)."""
    from twisted.internet import reactor

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the rows are written by the next transaction instead
            log.failure("mailsuite store: writing index rows")

    reactor.callLater(0.002, run)  # type: ignore[attr-defined]


def _list_files(subdir: str) -> set[str]:
    """The regular files of ``subdir`` (one ``scandir``; the type comes with the entries, so no
    ``stat``): symbolic links never count as messages (DESIGN §4), nor do directories or devices."""
    with os.scandir(subdir) as entries:
        return {e.name for e in entries if e.is_file(follow_symlinks=False)}


def _list_names(subdir: str) -> list[str]:
    """:func:`_list_files` as a list (the first scan sorts it)."""
    with os.scandir(subdir) as entries:
        return [e.name for e in entries if e.is_file(follow_symlinks=False)]


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_THIRD = operator.itemgetter(2)
_SUBDIR_OF = ("cur", "new").__getitem__  # by "is in new/"
_UID_FIELD = operator.itemgetter(0)  # MessageInfo.uid
_AS_INT = (0, 1).__getitem__  # False/True -> 0/1, exact ints
_FLAGS_FIELD = operator.itemgetter(2)  # MessageInfo.flags
_KEYWORDS_FIELD = operator.itemgetter(3)  # MessageInfo.keywords


def _bases(names: list[str]) -> list[str]:
    """The base names (before the first ``:``) of file names, in C loops (no Python frame per name)."""
    return list(map(_FIRST, map(str.partition, names, itertools.repeat(":"))))


def _size_digits(bases: list[str]) -> list[str]:
    """What :func:`_name_size` parses in each base name: the text after the first ``,S=`` up to the next
    ``,`` (``""`` when there is no ``,S=``), in C loops."""
    tails = map(_THIRD, map(str.partition, bases, itertools.repeat(",S=")))
    return list(map(_FIRST, map(str.partition, tails, itertools.repeat(","))))


def _name_size(base: str) -> int | None:
    """The size given by the ``,S=<size>`` field of a Maildir base name (Dovecot's and ours), or None
    when there is none or it is not a plain decimal number."""
    i = base.find(",S=")
    if i < 0:
        return None
    end = base.find(",", i + 3)
    digits = base[i + 3 :] if end < 0 else base[i + 3 : end]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _file_size_date(path: str) -> tuple[int, float] | None:
    """Size and mtime of a message file whose name gives no size; None if it vanished or is not a
    regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime) if stat.S_ISREG(st.st_mode) else None


def _window(mtime_ns: int) -> int:
    """Timestamp uncertainty of a directory mtime: 2 s on file systems with whole-second timestamps,
    else 0.1 s (covers coarse kernel clocks)."""
    return 2 * _NS if mtime_ns % _NS == 0 else _NS // 10


def _settled(mtime_ns: int, scanned_ns: int) -> bool:
    """Was the scan (time taken before listing) late enough after the mtime that any later change
    must have moved the mtime?"""
    return scanned_ns - mtime_ns >= _window(mtime_ns)


def _first_scan_order(cur: list[str], new: list[str]) -> tuple[list[str], list[str], list[bool] | None]:
    """The files of a folder's first scan in UID order: (file names, their base names, in ``new/`` or
    not; None when ``new/`` has none).  Base name order (Maildir names start with the delivery time);
    a base present in both ``cur/`` and ``new/`` is taken from ``cur/``; dot files are not messages.

    Sorting the file names gives base name order unless a base is a prefix of another (``:`` sorts
    after ``,``) or a base is there twice; the bases are checked to be strictly ascending, and only
    otherwise sorted one by one."""
    new_set: set[str] | None = None
    if new:
        cur_bases = set(_bases(cur))
        new_bases = _bases(new)
        if not cur_bases.isdisjoint(new_bases):
            new = list(itertools.compress(new, map(operator.not_, map(cur_bases.__contains__, new_bases))))
        names = cur + new
        new_set = set(new)
    else:
        names = cur  # ours: sorted in place
    names.sort()
    lo = bisect.bisect_left(names, ".")  # names starting with "." sort together: [".", "/")
    hi = bisect.bisect_left(names, "/", lo)
    if lo < hi:
        del names[lo:hi]
    bases = _bases(names)
    if not all(map(operator.lt, bases, itertools.islice(bases, 1, None))):
        chosen = dict(zip(bases, names))  # one file per base (a copy made outside is ignored)
        bases = sorted(chosen)
        names = list(map(chosen.__getitem__, bases))
    in_new = list(map(new_set.__contains__, names)) if new_set else None
    return names, bases, in_new


class MessageInfo(NamedTuple):
    """A message as the index knows it.  Immutable (a tuple); a change produces a new object.

    ``name`` is the Maildir base name (the file name without ``:2,...``): unique in the folder and
    stable for the message's life, so it doubles as the POP3 UIDL.  ``flags`` holds IMAP system flags
    (``\\Seen``...), ``keywords`` the other flags; ``recent`` is True until a session claims it with
    :meth:`Mailbox.claim_recent`.  ``internaldate`` is a Unix time (the file's mtime).  ``size`` is
    the file size (= RFC822.SIZE, CRLF line ends).  ``path`` is where the file is now.
    """

    uid: int
    name: str
    flags: frozenset[str]
    keywords: frozenset[str]
    modseq: int
    size: int
    internaldate: float
    recent: bool
    subdir: str
    filename: str
    folder_dir: str

    @property
    def path(self) -> Path:
        return Path(self.folder_dir, self.subdir, self.filename)

    @property
    def fspath(self) -> str:
        """``path`` as a plain string (cheaper than building a Path)."""
        return f"{self.folder_dir}/{self.subdir}/{self.filename}"

    @property
    def suffix(self) -> str:
        return self.filename[len(self.name) :]


class HeaderMemo:
    """Values derived from the header of a message (e.g. an IMAP ``HEADER.FIELDS`` literal), by UID.

    A UID names one file for the life of its UIDVALIDITY and Maildir files do not change, so an entry
    stays right until the message is expunged.  Shared by every session of the folder.  All memos of
    the process share one byte budget (:data:`_MEMO_BUDGET`): when it is spent, the memos used least
    recently are emptied (:class:`_MemoPool`)."""

    __slots__ = ("data", "size", "_pool")

    def __init__(self, pool: _MemoPool) -> None:
        self.data: dict[int, bytes] = {}
        self.size = 0
        self._pool = pool

    def get(self, uid: int) -> bytes | None:
        return self.data.get(uid)

    def put(self, uid: int, value: bytes) -> None:
        cost = len(value) + 80
        if uid not in self.data and self._pool.charge(self, cost):
            self.data[uid] = value
            self.size += cost

    def discard(self, uid: int) -> None:
        value = self.data.pop(uid, None)
        if value is not None:
            self.size -= len(value) + 80
            self._pool.refund(len(value) + 80)

    def clear(self) -> None:
        self._pool.refund(self.size)
        self.data.clear()
        self.size = 0


class _MemoPool:
    """The byte budget shared by all :class:`HeaderMemo` of the process, least recently used first out."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._lru: dict[int, HeaderMemo] = {}  # id -> memo, least recently used first
        self._lock = threading.RLock()

    def touch(self, memo: HeaderMemo) -> None:
        with self._lock:
            self._lru.pop(id(memo), None)
            self._lru[id(memo)] = memo

    def forget(self, memo: HeaderMemo) -> None:
        with self._lock:
            self._lru.pop(id(memo), None)
            memo.clear()

    def refund(self, cost: int) -> None:
        with self._lock:
            self.used -= cost

    def charge(self, memo: HeaderMemo, cost: int) -> bool:
        with self._lock:
            if self.used + cost > self.budget:
                for key, old in list(self._lru.items()):
                    if self.used + cost <= self.budget:
                        break
                    if old is not memo:
                        del self._lru[key]
                        old.clear()
            if self.used + cost > self.budget:
                return False
            self.used += cost
            return True


_MEMOS = _MemoPool(_MEMO_BUDGET)


class _Unsaved:
    """Index writes of one folder put off while the user's index is closed (see ``Mailbox._put_off``):
    the UIDs of new messages (``first_new`` up to UIDNEXT; 0: none), the UIDs whose \\Recent was claimed
    (their files maybe moved to ``cur/``), and the latest folder fields.  No copy of the rows: they are
    written from the folder's messages, which nothing changes before they are written (any other change
    of the folder is an index transaction, and the index applies what is put off first)."""

    __slots__ = ("fid", "first_new", "claimed", "fields")

    def __init__(self, fid: int) -> None:
        self.fid = fid
        self.first_new = 0
        self.claimed: list[int] | None = None
        self.fields: dict[str, object] | None = None

    def note_fields(self, fields: dict[str, object]) -> None:
        if fields:
            if self.fields is None:
                self.fields = dict(fields)
            else:
                self.fields.update(fields)


class MailboxView(NamedTuple):
    """A snapshot of a folder for SELECT, shared by every session that selects it while nothing
    changes (building it is O(folder); reusing it is O(1)).  ``uids`` and ``infos`` must not be
    mutated: a session copies them before its first change (see :class:`mailsuite.imap.selected.Selected`).
    ``first_unseen`` is the sequence number of the first message without ``\\Seen`` (0: none)."""

    stamp: tuple
    uids: list[int]
    infos: dict[int, MessageInfo]
    keywords: frozenset[str]
    first_unseen: int


class Mailbox:
    """An open folder (obtain it with :meth:`Store.mailbox`; do not construct directly).

    Attributes ``uidvalidity``, ``uidnext`` and ``highestmodseq`` are kept current.  All methods are
    thread-safe (one lock per user) but are meant for the reactor thread.  Outside changes become
    visible only through :meth:`sync`, so a session decides when to look (RFC 3501 §7.4.1 allows
    EXPUNGE responses only at certain times).

    One per open folder of every user (bench 7a: 2000 idle sessions), hence ``__slots__``, the folder
    directory kept as a string, and empty dicts/sets shared (:data:`_VACANT`, :data:`EMPTY`) until used.
    """

    __slots__ = (
        "_user", "_index", "_lock", "name", "_dir_str", "_msgs", "_by_name", "_gone", "_pending_headers",
        "_pending_dates", "_total_size", "fid", "uidvalidity", "uidnext", "highestmodseq", "_kwtable",
        "_kwletter", "_suffix_cache", "_state", "_recent", "_gen", "_view", "_memos", "_bulk_rows",
        "_bulk_fields", "_unsaved",
        "__dict__",  # made only if something sets another attribute (tests wrap methods of an instance)
    )

    def __init__(self, user: _UserState, name: str, folder_dir: Path | str) -> None:
        self._user = user
        self._index: UserIndex = user.index
        self._lock: threading.RLock = user.lock
        self.name = name
        self._dir_str = os.fspath(folder_dir)
        self._msgs: dict[int, MessageInfo] = {}
        self._by_name: dict[str, int] = {}
        self._gone = False
        self._pending_headers: dict[int, bytes] = _VACANT
        #: uid -> (internaldate, size) learnt from files, written to the index with the next transaction
        self._pending_dates: dict[int, tuple[float, int]] = _VACANT
        self._total_size = 0
        self.fid = 0
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1
        self._kwtable: list[str | None] = _NO_KEYWORDS
        self._kwletter: dict[str, str] = _VACANT
        #: suffix -> (flags, keywords) and (flags, keywords, old letters) -> letters; depends on _kwtable
        self._suffix_cache: dict = _PLAIN_SUFFIXES
        self._state: dict[str, tuple[int, int]] = {"new": (0, 0), "cur": (0, 0)}
        #: UIDs still \Recent (not claimed by any session): claim_recent is O(claimed), not O(folder);
        #: EMPTY when there are none
        self._recent: set[int] | frozenset[int] = EMPTY  # type: ignore[assignment]
        #: Bumped by changes that move neither HIGHESTMODSEQ nor UIDNEXT (a size corrected from the file)
        self._gen = 0
        #: The last SELECT snapshot; dropped when the folder changes (sessions hold their own copies then)
        self._view: MailboxView | None = None
        self._memos: dict[tuple, HeaderMemo] = _VACANT  # in the process-wide pool _MEMOS
        #: Messages of a big first scan (as found) whose index rows are not written yet (see
        #: _first_scan), and the folder fields to write with the last of them.
        self._bulk_rows: list[MessageInfo] | None = None
        self._bulk_fields: dict[str, object] = _VACANT
        self._unsaved: _Unsaved | None = None

    @property
    def dir(self) -> Path:
        """The folder's directory (made on demand: the folder keeps it as a string)."""
        return Path(self._dir_str)

    def _add_recent(self, uid: int) -> None:
        if self._recent:
            self._recent.add(uid)  # type: ignore[union-attr]
        else:
            self._recent = {uid}

    def _drop_recent(self, uid: int) -> None:
        if uid in self._recent:
            self._recent.discard(uid)  # type: ignore[union-attr]

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Load from the index, or build the folder's index on its first open.  Caller holds the lock."""
        clean_tmp(Path(self._dir_str))
        row = self._index.get_folder(self.name)
        if row is None:
            self._first_open()
            return
        self._apply_row(row)
        make = MessageInfo
        d = self._dir_str
        msgs = self._msgs
        by_name = self._by_name
        total = 0
        recent_uids: list[int] = []
        with _no_gc():  # 100k+ new objects: no collections of a growing heap while they are made
            for uid, name, subdir, suffix, flags, kw, modseq, size, idate, recent in self._index.load_messages(self.fid):
                msgs[uid] = make(uid, name, _flags_of(flags), _keywords_of(kw) if kw else EMPTY, modseq, size, idate,
                                 recent == 1, subdir, name + suffix if suffix else name, d)
                by_name[name] = uid
                total += size
                if recent:
                    recent_uids.append(uid)
        self._total_size = total
        if recent_uids:
            self._recent = set(recent_uids)
        self._sync_locked()

    def _apply_row(self, row: FolderRow) -> None:
        self.fid = row.id
        self.uidvalidity = row.uidvalidity
        self.uidnext = row.uidnext
        self.highestmodseq = row.highestmodseq
        self._set_kwtable(row.keywords)
        self._state = {"new": (row.new_mtime, row.new_scanned), "cur": (row.cur_mtime, row.cur_scanned)}

    def _set_kwtable(self, table: list[str | None]) -> None:
        """Take a keyword table (never changed in place later: a new keyword makes a new one)."""
        if any(table):
            self._suffix_cache = {}
            self._kwtable = list(table)
            self._kwletter = {k: chr(ord("a") + i) for i, k in enumerate(self._kwtable) if k}
        else:  # no keywords: suffixes decode as in every such folder
            self._suffix_cache = _PLAIN_SUFFIXES
            self._kwtable = list(table) if table else _NO_KEYWORDS
            self._kwletter = _VACANT

    def _first_open(self) -> None:
        """First open (or index rebuild): import Dovecot's UIDs if present, then scan everything."""
        folder = Path(self._dir_str)
        uidlist = dovecot.read_uidlist(folder)
        kwtable = dovecot.read_keywords(folder)
        if uidlist is not None:
            uidvalidity, uidnext = uidlist.uidvalidity, uidlist.nextuid
            self._index.note_uidvalidity(uidvalidity)
        else:
            uidvalidity, uidnext = self._index.next_uidvalidity(), 1
        row = self._index.create_folder(self.name, uidvalidity, uidnext, kwtable)
        self._apply_row(row)
        self._rescan(set(_SUBDIRS), first=True, imported=uidlist.uids if uidlist else None)
        if uidlist is not None:
            # Import once: re-importing later (after an index loss) could give an old UID to a
            # different message under the same UIDVALIDITY.
            try:
                os.replace(folder / dovecot.UIDLIST, folder / (dovecot.UIDLIST + ".mailsuite-imported"))
            except OSError as e:
                log.warn("mailsuite store: could not rename {p}: {e}", p=str(folder / dovecot.UIDLIST), e=e)

    # -- sync ---------------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._gone:
            raise MailboxNotFound(self.name)

    def _stat_subdirs(self) -> dict[str, int]:
        out = {}
        for sub in _SUBDIRS:
            path = f"{self._dir_str}/{sub}"
            try:
                out[sub] = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                if not os.path.isdir(self._dir_str):
                    self._gone = True
                    raise MailboxNotFound(self.name) from None
                make_maildir(Path(self._dir_str), subfolder=self.name != "INBOX")
                out[sub] = os.stat(path).st_mtime_ns
        return out

    def _needs_scan(self, sub: str, mtime_ns: int, now_ns: int) -> bool:
        """Must ``sub`` be listed?  Yes if its mtime moved.  If the last scan was too close to the
        mtime (a later change in the same timestamp tick would not move it), list again: at once for
        small folders, else once that window has passed since the scan (Dovecot's "delayed refresh"),
        so a burst of our own changes does not rescan a huge ``cur/`` on every command."""
        old_mtime, scanned = self._state[sub]
        if old_mtime != mtime_ns:
            return True
        if _settled(old_mtime, scanned):
            return False
        return len(self._msgs) <= _EAGER_RESCAN_LIMIT or now_ns - scanned >= _window(old_mtime)

    def sync(self) -> bool:
        """Pick up changes made by other Maildir tools; return True if anything changed.

        Costs two ``stat()`` calls when nothing changed.  New files get UIDs (recent), renamed files
        update flags/keywords (new modseq), vanished files are expunged.  Listeners are notified.
        """
        with self._lock:
            self._check_alive()
            changed = self._sync_locked()
        if changed:
            self._user.notify(self.name)
        return changed

    def _sync_locked(self) -> bool:
        mtimes = self._stat_subdirs()
        now = time.time_ns()
        subs = {s for s in _SUBDIRS if self._needs_scan(s, mtimes[s], now)}
        return self._rescan(subs) if subs else False

    def _decode_suffix(self, suffix: str, old_keywords: frozenset[str] = EMPTY) -> tuple[frozenset[str], frozenset[str]]:
        """Flags and keywords named by a file's info letters (keywords without a letter are kept)."""
        cached = self._suffix_cache.get(suffix)
        if cached is None:
            if len(self._suffix_cache) >= _PLAIN_SUFFIXES_MAX:
                self._suffix_cache.clear()  # a cache: names made by odd tools must not grow it forever
            letters = info_letters(suffix)
            table = self._kwtable
            kws = frozenset(
                table[ord(c) - 97] for c in letters if "a" <= c <= "z" and ord(c) - 97 < len(table) and table[ord(c) - 97]
            )
            cached = self._suffix_cache[suffix] = (_flags_of(letters), kws or EMPTY)
        if old_keywords and any(k not in self._kwletter for k in old_keywords):
            return cached[0], cached[1] | {k for k in old_keywords if k not in self._kwletter}
        return cached

    def _rescan(self, subs: set[str], first: bool = False, imported: dict[str, int] | None = None) -> bool:
        """List ``subs`` (one ``scandir`` each, symlinks left out) and reconcile them with the index.  Caller
        holds the lock.

        Only the differences between the listed names and the known file names are handled in Python:
        a known base under a new name is a flag change or a new->cur move (same UID); an unknown base
        is a new message; a known file gone without a new name is expunged.  A new message's size comes
        from the ``,S=<size>`` of its name when there is one (as Dovecot does: no ``stat`` per file, which
        is most of the first open of a big folder), else from a ``stat``; its INTERNALDATE (the file's
        mtime) is then learnt on first use (:meth:`internaldate`; 0 in the index means "not known yet").
        New messages get UIDs in the order of their base names (Maildir names start with the delivery
        time), after those imported from ``dovecot-uidlist``.
        """
        files: dict[str, set[str]] = {}
        states: dict[str, tuple[int, int]] = {}
        whole = first and not imported and not self._msgs and len(subs) == 2
        for sub in ("new", "cur"):
            if sub in subs:
                scanned = time.time_ns()
                path = os.path.join(self._dir_str, sub)
                mtime = os.stat(path).st_mtime_ns  # before listing: a change during it moves the mtime
                # symlinks are never messages (DESIGN §4)
                files[sub] = _list_names(path) if whole else _list_files(path)  # type: ignore[assignment]
                states[sub] = (mtime, scanned)
        if whole:
            with _no_gc():
                return self._first_scan(files, states)  # type: ignore[arg-type]
        known: dict[str, set[str]] = {sub: set() for sub in files}
        if len(files) == 2:
            for m in self._msgs.values():
                known[m.subdir].add(m.filename)
        elif files:
            (only,) = files
            known[only] = {m.filename for m in self._msgs.values() if m.subdir == only}

        by_name = self._by_name
        appeared: dict[str, tuple[str, str]] = {}
        vanished: dict[str, str] = {}
        for sub, names in files.items():  # "new" first, so "cur" wins for a base present in both
            for fn in known[sub] - names:
                vanished[fn.split(":", 1)[0]] = sub
            for fn in names - known[sub]:
                if fn[0] != ".":
                    appeared[fn.split(":", 1)[0]] = (sub, fn)

        relocated: list[MessageInfo] = []
        modseq = self.highestmodseq + 1
        flag_changed = False
        new_files: list[tuple[int, int, str, str, str, int, float]] = []
        for base, (sub, fn) in appeared.items():
            uid = by_name.get(base)
            if uid is None:
                size = _name_size(base)
                when = 0.0  # not known yet: learnt from the file on first use
                if size is None:
                    found = _file_size_date(f"{self._dir_str}/{sub}/{fn}")
                    if found is None:
                        continue
                    size, when = found
                pre = imported.get(base, 0) if imported else 0
                new_files.append((0 if pre else 1, pre, base, sub, fn, size, when))
            elif base in vanished:
                m = self._msgs[uid]
                flags, kws = self._decode_suffix(fn[len(base):], m.keywords)
                if flags != m.flags or kws != m.keywords:
                    relocated.append(m._replace(subdir=sub, filename=fn, flags=flags, keywords=kws, modseq=modseq))
                    flag_changed = True
                else:
                    relocated.append(m._replace(subdir=sub, filename=fn))
            # else: a second file with a known base (a copy made outside): ignored
        removed = [by_name[base] for base in vanished if base not in appeared]
        new_files.sort(key=lambda t: t[:3])

        added: list[MessageInfo] = []
        uidnext = self.uidnext
        used: set[int] = set()
        if imported:
            top = max((t[1] for t in new_files if t[0] == 0), default=0)
            uidnext = max(uidnext, top + 1)
        suffixes = self._suffix_cache
        d = self._dir_str
        make = MessageInfo
        msgs = self._msgs
        append = added.append
        for is_new, key, base, sub, fn, size, when in new_files:
            if is_new == 0 and key not in msgs and key not in used:
                uid = key
            else:
                uid = uidnext
                uidnext += 1
            used.add(uid)
            suffix = fn[len(base):]
            decoded = suffixes.get(suffix) or self._decode_suffix(suffix)
            append(make(uid, base, decoded[0], decoded[1], modseq, size, when,
                        sub == "new" if first else True, sub, fn, d))
        if imported:
            added.sort(key=lambda m: m.uid)

        changed = bool(removed or relocated or added)
        highest = modseq if (removed or added or flag_changed) else self.highestmodseq
        if not changed and uidnext == self.uidnext:
            # Nothing to write: no transaction, so no COMMIT (an fsync with synchronous=FULL).  The
            # index keeps the older scan state; at worst a later open lists the directory once more.
            self._state.update(states)
            return False
        idx = self._index
        with self._txn():
            self._flush_headers()
            if removed:
                idx.delete_messages(self.fid, removed)
            if relocated:
                idx.update_locations(self.fid, (_location_row(m) for m in relocated))
            if added:
                idx.insert_messages(
                    self.fid,
                    ((m.uid, m.name, m.subdir, m.suffix, _letters_of(m.flags), _keywords_text(m.keywords), m.modseq,
                      m.size, m.internaldate, int(m.recent), None) for m in added),
                )
            fields: dict[str, object] = {"uidnext": uidnext, "highestmodseq": highest}
            for sub, (mt, sc) in states.items():
                fields[f"{sub}_mtime"] = mt
                fields[f"{sub}_scanned"] = sc
            idx.update_folder(self.fid, **fields)
        # Memory follows the committed index.
        for uid in removed:
            m = self._msgs.pop(uid)
            by_name.pop(m.name, None)
            self._total_size -= m.size
            self._pending_headers.pop(uid, None)
            self._drop_recent(uid)
            for memo in self._memos.values():
                memo.discard(uid)
        for m in relocated:
            self._msgs[m.uid] = m
        if added:
            if self._msgs and added[0].uid < next(reversed(self._msgs)):
                merged = sorted([*self._msgs.values(), *added], key=lambda m: m.uid)
                self._msgs = {m.uid: m for m in merged}
            else:
                for m in added:
                    self._msgs[m.uid] = m
            for m in added:
                by_name[m.name] = m.uid
                self._total_size += m.size
                if m.recent:
                    self._add_recent(m.uid)
        self.uidnext = uidnext
        self.highestmodseq = highest
        self._state.update(states)
        self._view = None
        return changed

    def _first_scan(self, files: dict[str, list[str]], states: dict[str, tuple[int, int]]) -> bool:
        """:meth:`_rescan` of a folder its index knows nothing about (first open without
        ``dovecot-uidlist``): every file is new.  The same result as the general path (UIDs in base
        name order, ``cur/`` winning over ``new/``, recent = in ``new/``), built column by column in C
        loops (``map``/``zip``: no Python frame per message), with one ``executemany`` for the index
        rows: this is the first SELECT of a big folder.  From :data:`_BULK_DEFER` messages on (with a
        running reactor) the rows are written after the answer, in the store's thread pool
        (:meth:`_write_bulk_rows`); UIDNEXT is committed at once."""
        names, bases, in_new = _first_scan_order(files["cur"], files["new"])
        d = self._dir_str
        digits = _size_digits(bases)
        dates: Iterable[float] = itertools.repeat(0.0)  # not known yet: learnt from the file on first use
        if all(map(str.isdigit, digits)) and all(map(str.isascii, digits)):
            sizes = list(map(int, digits))
        else:  # names without a usable ",S=": a stat each (as _name_size / _file_size_date)
            sizes, dates, keep = [], [], []
            for i, text in enumerate(digits):
                if text.isdigit() and text.isascii():
                    sizes.append(int(text))
                    dates.append(0.0)
                    keep.append(True)
                    continue
                found = _file_size_date(f"{d}/{_SUBDIR_OF(bool(in_new and in_new[i]))}/{names[i]}")
                keep.append(found is not None)
                if found is not None:
                    sizes.append(found[0])
                    dates.append(found[1])
            if not all(keep):  # vanished meanwhile
                names = list(itertools.compress(names, keep))
                bases = list(itertools.compress(bases, keep))
                in_new = list(itertools.compress(in_new, keep)) if in_new else in_new
        n = len(names)
        suffixes = list(map(str.removeprefix, names, bases))
        decoded = {suffix: self._decode_suffix(suffix) for suffix in set(suffixes)}
        pairs = list(map(decoded.__getitem__, suffixes))
        del suffixes
        modseq = self.highestmodseq + 1
        first_uid = self.uidnext
        uids = range(first_uid, first_uid + n)
        rep = itertools.repeat
        infos: list[MessageInfo] = list(map(tuple.__new__, rep(MessageInfo), zip(
            uids, bases, map(_FIRST, pairs), map(_SECOND, pairs), rep(modseq), sizes, dates,
            in_new if in_new else rep(False), map(_SUBDIR_OF, in_new) if in_new else rep("cur"), names, rep(d),
        )))
        del pairs
        msgs = dict(zip(uids, infos))
        uid = first_uid + n
        fields: dict[str, object] = {"uidnext": uid, "highestmodseq": modseq if n else self.highestmodseq}
        scan_fields: dict[str, object] = {}
        for sub, (mt, sc) in states.items():
            scan_fields[f"{sub}_mtime"] = mt
            scan_fields[f"{sub}_scanned"] = sc
        idx = self._index
        fid = self.fid
        defer = n >= _BULK_DEFER and _reactor_running()
        # more new UIDs than a crash epoch skips: this commit must survive a power cut (index.CRASH_UID_GAP)
        sync = idx.full_sync() if n >= CRASH_UID_GAP // 2 else contextlib.nullcontext()
        with sync, self._txn():
            self._flush_headers()
            if defer:
                # UIDNEXT now, so no UID handed out from memory can be given again after a crash
                # (rows not written by then make their files new messages again, with new UIDs);
                # the scan state only with the last rows, so the next open scans what is missing.
                idx.update_folder(fid, **fields)
            else:
                if n:
                    idx.insert_message_rows(self._rows_of(infos))
                idx.update_folder(fid, **fields, **scan_fields)
        if defer:
            self._bulk_rows = infos
            self._bulk_fields = scan_fields
            _call_later(self._start_bulk_writer)
        if in_new and any(in_new):
            self._recent = set(itertools.compress(uids, in_new))
        self._msgs = msgs
        self._by_name = dict(zip(bases, uids))
        self._total_size = sum(sizes)
        self.uidnext = uid
        self.highestmodseq = fields["highestmodseq"]  # type: ignore[assignment]
        self._state.update(states)
        return bool(n)

    # -- index writes -------------------------------------------------------------------------

    def _put_off(self) -> _Unsaved:
        """The put-off index writes of this folder, registered with :meth:`UserIndex.defer` when first
        needed.  A delivery or a \\Recent claim for a user whose index the cache closed must not reopen it
        (the reopen and the close that evicts it again cost fsyncs; bench 7b): the change is made in
        memory and recorded here, compactly, until the index is next used.  Caller holds the lock."""
        unsaved = self._unsaved
        if unsaved is None:
            unsaved = self._unsaved = _Unsaved(self.fid)
            self._index.defer(self._write_unsaved)
        return unsaved

    def _write_unsaved(self) -> None:
        """Apply what :meth:`_put_off` recorded (called by the index before anything else uses it)."""
        unsaved, self._unsaved = self._unsaved, None
        if unsaved is None:
            return
        fid = unsaved.fid
        msgs = self._msgs
        first = unsaved.first_new or self.uidnext
        with self._txn():
            if unsaved.first_new:
                self._index.insert_messages(fid, [
                    (m.uid, m.name, m.subdir, m.suffix, _letters_of(m.flags), _keywords_text(m.keywords), m.modseq,
                     m.size, m.internaldate, int(m.recent), None)
                    for m in map(msgs.get, range(first, self.uidnext)) if m is not None
                ])
            if unsaved.claimed:  # those of the new rows above are written as they are now already
                older = [u for u in unsaved.claimed if u < first and u in msgs]
                self._index.clear_recent(fid, older)
                self._index.update_locations(fid, [_location_row(msgs[u]) for u in older])
            if unsaved.fields:
                self._index.update_folder(fid, **unsaved.fields)

    @contextlib.contextmanager
    def _txn(self) -> Iterator[object]:
        """A transaction of the user's index for this folder; index rows of the first scan that are
        still unwritten go first (so every later change finds its rows).  Caller holds the lock."""
        rows, fields = self._bulk_rows, self._bulk_fields
        self._bulk_rows, self._bulk_fields = None, _VACANT
        try:
            with self._index.transaction() as db:
                if rows:
                    self._index.insert_message_rows(self._rows_of(rows))
                if rows is not None and fields:
                    self._index.update_folder(self.fid, **fields)
                yield db
        except BaseException:
            if rows is not None and self._bulk_rows is None:
                self._bulk_rows, self._bulk_fields = rows, fields
            raise

    def _rows_of(self, msgs: list[MessageInfo]) -> Iterable[tuple]:
        """Index rows (:meth:`UserIndex.insert_message_rows`) of messages as the first scan found them.

        Column by column (``zip(*msgs)`` transposes in C; flags and keywords looked up per distinct
        value): no Python frame per message, as this runs in the background writer while the reactor
        thread wants the GIL."""
        if not msgs:
            return iter(())
        uid, name, flags, kws, modseq, size, idate, recent, subdir, filename, _d = zip(*msgs)
        letters = {f: _letters_of(f) for f in set(flags)}
        texts = {k: _keywords_text(k) for k in set(kws)}
        # recent as an exact int: the sqlite3 module binds a bool through its adapter lookup (~1 us)
        return zip(itertools.repeat(self.fid), uid, name, subdir, map(str.removeprefix, filename, name),
                   map(letters.__getitem__, flags), map(texts.__getitem__, kws), modseq, size, idate,
                   map(_AS_INT, recent))

    def _start_bulk_writer(self) -> None:
        """Write the unwritten index rows of a big first scan in the store's thread pool (SQLite
        releases the GIL while it works, so the reactor thread goes on serving the other sessions)."""
        d = self._user.store._runner(self._write_bulk_rows)
        d.addErrback(lambda f: log.failure("mailsuite store: writing the index rows of {mb}", f, mb=self))

    def _write_bulk_rows(self) -> None:
        """The unwritten rows of a big first scan, :data:`_BULK_CHUNK` per transaction, the user's lock
        taken per chunk (a session of this user waits for one chunk at most; any transaction of the
        folder meanwhile writes all that is left first, see :meth:`_txn`).

        Between chunks the writer pauses (:data:`_BULK_PAUSE`, lock and GIL released): a lock is not
        fair, and without the pause the writer took the lock back at once, a SELECT waiting for the
        whole write (~1 s for 100k rows).  Its commits do not checkpoint the WAL under the lock; a
        second connection does, every :data:`_BULK_CHECKPOINT` rows and at the end, without it."""
        checkpointer = self._index.checkpointer()
        since = 0
        try:
            while True:
                with self._lock:
                    rows = self._bulk_rows
                    if rows is None or self._gone:
                        break
                    last = len(rows) <= _BULK_CHUNK
                    with self._index.no_autocheckpoint():
                        if last:
                            with self._txn():
                                pass
                        else:
                            head = rows[:_BULK_CHUNK]
                            del rows[:_BULK_CHUNK]   # in place (under the lock): no copy of the rest per chunk
                            try:
                                with self._index.transaction():
                                    self._index.insert_message_rows(self._rows_of(head))
                            except BaseException:
                                if self._bulk_rows is rows:
                                    rows[:0] = head
                                raise
                since += _BULK_CHUNK
                if last:
                    break
                if since >= _BULK_CHECKPOINT:
                    checkpointer.checkpoint()
                    since = 0
                time.sleep(_BULK_PAUSE)
            if since:
                checkpointer.checkpoint()
        finally:
            checkpointer.close()

    # -- own changes --------------------------------------------------------------------------

    def _own_begin(self) -> dict[str, bool]:
        """Before changing the directories ourselves: which of them match the index (same mtime as
        at the last scan; an unsettled scan stays unsettled, so its check still happens)."""
        mtimes = self._stat_subdirs()
        return {s: self._state[s][0] == mtimes[s] for s in _SUBDIRS}

    def _own_end(self, before: dict[str, bool]) -> dict[str, object]:
        """After our own changes: directories that were in sync stay so (new mtime recorded).

        Returns the folder fields to store.
        """
        fields: dict[str, object] = {}
        for sub, in_sync in before.items():
            if in_sync:
                mtime = os.stat(f"{self._dir_str}/{sub}").st_mtime_ns
                state = (mtime, time.time_ns())
                self._state[sub] = state
                fields[f"{sub}_mtime"], fields[f"{sub}_scanned"] = state
        return fields

    def _with_file(self, uid: int, op: Callable[[MessageInfo], object]) -> tuple[MessageInfo | None, object]:
        """Run ``op(info)``; if the file vanished (renamed outside), rescan once and retry."""
        m = self._msgs.get(uid)
        if m is None:
            return None, None
        try:
            return m, op(m)
        except FileNotFoundError:
            self._rescan(set(_SUBDIRS))
            m = self._msgs.get(uid)
            if m is None:
                return None, None
            try:
                return m, op(m)
            except FileNotFoundError:
                return None, None

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._msgs)

    def messages(self) -> list[MessageInfo]:
        """All messages, sorted by UID (the index's view; call :meth:`sync` first to see outside changes)."""
        with self._lock:
            return list(self._msgs.values())

    def uids(self) -> list[int]:
        with self._lock:
            return list(self._msgs)

    def _view_locked(self) -> MailboxView:
        stamp = (self.fid, self.uidvalidity, self.highestmodseq, self.uidnext, len(self._msgs), self._gen)
        view = self._view
        if view is not None and view.stamp == stamp:
            return view
        infos = dict(self._msgs)
        uids = list(infos)
        messages = infos.values()
        # C loops (no Python frame per message): the first SELECT of a big folder builds this
        sets = set(map(_KEYWORDS_FIELD, messages))
        sets.discard(EMPTY)
        keywords = EMPTY.union(*sets) if sets else EMPTY
        try:
            seen = map(operator.contains, map(_FLAGS_FIELD, messages), itertools.repeat("\\Seen"))
            first_unseen = operator.indexOf(seen, False) + 1
        except ValueError:
            first_unseen = 0
        view = self._view = MailboxView(stamp, uids, infos, keywords, first_unseen)
        return view

    def forget_memos(self) -> None:
        """Drop this folder's header memos from the process-wide pool (the folder is closed or gone)."""
        for memo in self._memos.values():
            _MEMOS.forget(memo)
        self._memos = _VACANT

    def header_memo(self, key: tuple) -> HeaderMemo:
        """The folder's memo for data derived from message headers under ``key`` (the caller's name
        for the derivation).  At most four keys per folder; a fifth starts afresh."""
        full = (self.uidvalidity, key)
        memo = self._memos.get(full)
        if memo is None:
            if len(self._memos) >= 4:
                for old in self._memos.values():
                    _MEMOS.forget(old)
                self._memos = _VACANT
            if self._memos is _VACANT:
                self._memos = {}
            memo = self._memos[full] = HeaderMemo(_MEMOS)
        _MEMOS.touch(memo)
        return memo

    def select_view(self, claim: bool) -> tuple[MailboxView, set[int]]:
        """The folder for SELECT (``claim``: take its \\Recent messages, RFC 3501 §2.3.2) or EXAMINE
        (see them without taking them), both under one lock so the \\Recent set matches the view."""
        with self._lock:
            self._check_alive()
            if claim:
                recent = self._claim_recent_locked()
            else:
                recent = {u for u in self._recent if u in self._msgs}
            return self._view_locked(), recent

    def message(self, uid: int) -> MessageInfo:
        """The :class:`MessageInfo` of ``uid``; raises :class:`MessageNotFound`."""
        try:
            return self._msgs[uid]
        except KeyError:
            raise MessageNotFound(uid) from None

    def total_size(self) -> int:
        """Sum of message sizes in this folder (bytes)."""
        return self._total_size

    def unseen_count(self) -> int:
        with self._lock:
            return sum(1 for m in self._msgs.values() if "\\Seen" not in m.flags)

    def recent_count(self) -> int:
        with self._lock:
            return len(self._recent)

    def changed_since(self, modseq: int) -> list[MessageInfo]:
        """Messages whose modseq is greater than ``modseq`` (RFC 7162 CHANGEDSINCE), UID order."""
        with self._lock:
            self._check_alive()
            if self._bulk_rows is not None:
                with self._txn():
                    pass
            uids = self._index.modseq_uids(self.fid, modseq)
            return [self._msgs[u] for u in uids if u in self._msgs]

    def open_message(self, uid: int) -> BinaryIO:
        """Open the message file for reading (binary).  Raises :class:`MessageNotFound`."""
        with self._lock:
            self._check_alive()
            m, f = self._with_file(uid, lambda m: open(m.fspath, "rb"))
            if f is None:
                raise MessageNotFound(uid)
            if not m.internaldate:  # type: ignore[union-attr]
                self._learn(m, os.fstat(f.fileno()))  # type: ignore[arg-type, union-attr]
        return f  # type: ignore[return-value]

    def read_range(self, uid: int, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)`` of the message file (fewer if it is shorter), read with ``pread``
        on a bare descriptor: a third of the cost of :meth:`open_message` + ``read`` for the small
        messages of a whole-folder FETCH (bench 4: 10,000 of them).  Raises :class:`MessageNotFound`."""
        with self._lock:
            self._check_alive()
            m, fd = self._with_file(uid, lambda m: os.open(m.fspath, os.O_RDONLY | os.O_CLOEXEC))
            if fd is None:
                raise MessageNotFound(uid)
            try:
                if not m.internaldate:  # type: ignore[union-attr]
                    self._learn(m, os.fstat(fd))  # type: ignore[arg-type]
            except BaseException:
                os.close(fd)  # type: ignore[arg-type]
                raise
        try:
            parts: list[bytes] = []
            got = 0
            while got < length:
                data = os.pread(fd, length - got, start + got)  # type: ignore[arg-type]
                if not data:
                    break
                parts.append(data)
                got += len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)  # type: ignore[arg-type]

    def internaldate(self, uid: int) -> float:
        """The INTERNALDATE of ``uid`` (Unix time, the file's mtime).  The first open of a folder takes
        sizes from the file names and leaves dates unknown (0); the first call learns the date with a
        ``stat`` (checking the size on the way).  Raises :class:`MessageNotFound`."""
        with self._lock:
            self._check_alive()
            m = self._msgs.get(uid)
            if m is None:
                raise MessageNotFound(uid)
            if m.internaldate:
                return m.internaldate
            m2, st = self._with_file(uid, lambda m: os.stat(m.fspath))
            if st is None:
                raise MessageNotFound(uid)
            return self._learn(m2, st).internaldate  # type: ignore[arg-type]

    def _learn(self, m: MessageInfo, st: os.stat_result) -> MessageInfo:
        """Record the date (and true size) of ``m`` read from its file.  Caller holds the lock.

        A size that differs from the one taken from the name (``,S=`` wrong: a file changed or named
        by a broken tool) is corrected; sessions see the new size at their next SELECT."""
        when = st.st_mtime
        size = st.st_size
        if size != m.size:
            log.warn("mailsuite store: {path} has {real} bytes, its name says {size}", path=m.fspath,
                     real=size, size=m.size)
            self._total_size += size - m.size
            self._gen += 1
            self._view = None
        m = m._replace(internaldate=when, size=size)
        if self._msgs.get(m.uid) is not None:
            self._msgs[m.uid] = m
            if self._pending_dates is _VACANT:
                self._pending_dates = {}
            self._pending_dates[m.uid] = (when, size)
            if len(self._pending_dates) >= _DATES_FLUSH:
                with self._txn():
                    self._flush_headers()
        return m

    def read_message(self, uid: int) -> bytes:
        """The whole message (CRLF line ends for messages stored by this server)."""
        with self.open_message(uid) as f:
            return f.read()

    def header_bytes(self, uid: int) -> bytes:
        """The raw header block including the blank line that ends it; cached in the index."""
        return self.headers([uid])[uid]

    def headers(self, uids: Iterable[int]) -> dict[int, bytes]:
        """Header blocks of several messages at once (one index query; missing ones read and cached).

        Raises :class:`MessageNotFound` if any UID does not exist.
        """
        uids = list(uids)
        with self._lock:
            self._check_alive()
            for u in uids:
                if u not in self._msgs:
                    raise MessageNotFound(u)
            out = {u: self._pending_headers[u] for u in uids if u in self._pending_headers}
            missing = [u for u in uids if u not in out]
            if missing:
                out.update(self._index.get_headers(self.fid, missing))
            for u in uids:
                if u in out:
                    continue

                def read(m: MessageInfo) -> bytes:
                    with open(m.fspath, "rb") as f:
                        return read_header_block(f)

                _m, header = self._with_file(u, read)
                if header is None:
                    raise MessageNotFound(u)
                out[u] = header  # type: ignore[assignment]
                if self._pending_headers is _VACANT:
                    self._pending_headers = {}
                self._pending_headers[u] = header  # type: ignore[assignment]
            if len(self._pending_headers) >= _HEADER_FLUSH:
                with self._txn():
                    self._flush_headers()
            return out

    def _flush_headers(self) -> None:
        """Write the header blocks and dates learnt from files.  Caller holds the lock, in a transaction."""
        if self._pending_headers:
            for uid, header in self._pending_headers.items():
                self._index.set_header(self.fid, uid, header)
            self._pending_headers = _VACANT
        if self._pending_dates:
            self._index.set_dates(self.fid, ((u, d, s) for u, (d, s) in self._pending_dates.items()))
            self._pending_dates = _VACANT

    def flush(self) -> None:
        """Write cached headers (and learnt dates) still held in memory to the index."""
        with self._lock:
            if (self._pending_headers or self._pending_dates or self._bulk_rows is not None) and not self._gone:
                with self._txn():
                    self._flush_headers()

    def status(self) -> dict[str, int]:
        """Counters for IMAP STATUS (RFC 3501 §6.3.10; HIGHESTMODSEQ RFC 7162 §3.1.7; SIZE RFC 8438;
        DELETED RFC 9051 §6.3.11), in one pass over the messages."""
        with self._lock:
            unseen = deleted = 0
            for m in self._msgs.values():
                if "\\Seen" not in m.flags:
                    unseen += 1
                if "\\Deleted" in m.flags:
                    deleted += 1
            recent = len(self._recent)
            return {
                "MESSAGES": len(self._msgs),
                "RECENT": recent,
                "UIDNEXT": self.uidnext,
                "UIDVALIDITY": self.uidvalidity,
                "UNSEEN": unseen,
                "DELETED": deleted,
                "HIGHESTMODSEQ": self.highestmodseq,
                "SIZE": self._total_size,
            }

    # -- \Recent ------------------------------------------------------------------------------

    def claim_recent(self) -> set[int]:
        """Take the \\Recent messages for the calling session (RFC 3501 §2.3.2).

        Returns the UIDs that were recent; afterwards no other session sees them as recent.  Like
        Dovecot, claimed files in ``new/`` move to ``cur/`` (no flag change, no modseq change).
        """
        with self._lock:
            self._check_alive()
            return self._claim_recent_locked()

    def _claim_recent_locked(self) -> set[int]:
        if not self._recent:
            return set()
        uids = sorted(u for u in self._recent if u in self._msgs)
        self._recent = EMPTY  # type: ignore[assignment]
        if not uids:
            return set()
        before = self._own_begin()
        moved: list[MessageInfo] = []
        for u in uids:
            m = self._msgs[u]
            if m.subdir == "new":
                fn = m.name + make_suffix(info_letters(m.suffix))
                try:
                    os.rename(m.fspath, f"{self._dir_str}/cur/{fn}")
                except FileNotFoundError:
                    self._msgs[u] = m._replace(recent=False)
                    continue
                m = m._replace(subdir="cur", filename=fn)
                moved.append(m)
            self._msgs[u] = m._replace(recent=False)
        fields = self._own_end(before)
        rows = self._bulk_rows
        if rows and uids[0] >= rows[0].uid:
            # The first scan's rows are not written yet (the first SELECT of a folder with new mail): they
            # will be written as the messages are now, with these directory states; a transaction here
            # would write them all first, before the SELECT is answered.
            self._bulk_rows = list(map(self._msgs.__getitem__, map(_UID_FIELD, rows)))
            if fields:
                self._bulk_fields = {**self._bulk_fields, **fields}
            return set(uids)
        if self._index.is_open:
            with self._txn():
                self._index.clear_recent(self.fid, uids)
                if moved:
                    self._index.update_locations(self.fid, [_location_row(m) for m in moved])
                if fields:
                    self._index.update_folder(self.fid, **fields)
        else:
            unsaved = self._put_off()
            if unsaved.claimed is None:
                unsaved.claimed = uids
            else:
                unsaved.claimed.extend(uids)
            unsaved.note_fields(fields)
        return set(uids)

    # -- flags --------------------------------------------------------------------------------

    def _keyword_letter(self, kw: str, assign: bool) -> str | None:
        letter = self._kwletter.get(kw)
        if letter is not None or not assign:
            return letter
        table = list(self._kwtable)  # a new table: the old one may be shared (_NO_KEYWORDS)
        try:
            i = table.index(None)
        except ValueError:
            if len(table) >= dovecot.MAX_KEYWORD_LETTERS:
                return None  # kept in the index only
            table.append(None)
            i = len(table) - 1
        table[i] = kw
        letter = chr(97 + i)
        self._kwtable = table
        self._kwletter = {**self._kwletter, kw: letter}
        self._suffix_cache = {}
        dovecot.write_file_atomic(self.dir / dovecot.KEYWORDS, dovecot.format_keywords(table))
        self._index.update_folder(self.fid, keywords=table)
        return letter

    def _letters_for(self, flags: frozenset[str], keywords: frozenset[str], old_suffix: str = "") -> str:
        """Info letters for flags+keywords, keeping letters we do not manage (e.g. ``P`` passed)."""
        key = (flags, keywords, old_suffix[3:] if old_suffix.startswith(":2,") else "")
        cached = self._suffix_cache.get(key)  # type: ignore[call-overload]
        if cached is None:
            cached = self._suffix_cache[key] = self._compute_letters(flags, keywords, old_suffix)  # type: ignore[index]
        return cached  # type: ignore[return-value]

    def _compute_letters(self, flags: frozenset[str], keywords: frozenset[str], old_suffix: str) -> str:
        letters = [FLAG_LETTERS[f] for f in flags]
        for kw in keywords:
            letter = self._keyword_letter(kw, assign=True)
            if letter:
                letters.append(letter)
        for c in info_letters(old_suffix):
            if c in LETTER_FLAGS:
                continue
            if "a" <= c <= "z" and ord(c) - 97 < len(self._kwtable) and self._kwtable[ord(c) - 97]:
                continue
            letters.append(c)
        return "".join(sorted(set(letters)))

    def set_flags(
        self,
        uids: Iterable[int],
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        mode: str = "+",
        unchangedsince: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """Add (``+``), remove (``-``) or replace (``=``) flags and keywords (RFC 3501 §6.4.6).

        Renames each changed file to ``cur/<base>:2,<letters>`` and gives all changed messages one new
        modseq.  With ``unchangedsince`` (RFC 7162 §3.1.3) messages whose modseq is greater are left
        alone and returned in the second list.  Unknown UIDs are ignored.  Returns
        ``(changed_uids, failed_modified_uids)``.
        """
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad mode {mode!r}")
        fset = normalize_flags(flags)
        kset = validate_keywords(keywords)
        changed_msgs: list[MessageInfo] = []
        pending: list[tuple[MessageInfo, str, frozenset[str], frozenset[str]]] = []
        failed: list[int] = []

        def compute(m: MessageInfo) -> tuple[frozenset[str], frozenset[str]]:
            if mode == "+":
                return m.flags | fset, m.keywords | kset
            if mode == "-":
                return m.flags - fset, m.keywords - kset
            return fset, kset

        with self._lock:
            self._check_alive()
            before = self._own_begin()
            for uid in sorted(set(uids)):
                m = self._msgs.get(uid)
                if m is None:
                    continue
                if unchangedsince is not None and m.modseq > unchangedsince:
                    failed.append(uid)
                    continue
                nf, nk = compute(m)
                if nf == m.flags and nk == m.keywords:
                    continue

                def rename(m: MessageInfo) -> tuple[str, frozenset[str], frozenset[str]]:
                    # Recomputed from m: after a rescan (file renamed outside) m is the fresh state.
                    nf, nk = compute(m)
                    fn = m.name + make_suffix(self._letters_for(nf, nk, m.suffix))
                    if (m.subdir, m.filename) != ("cur", fn):
                        os.rename(m.fspath, f"{self._dir_str}/cur/{fn}")
                    return fn, nf, nk

                m2, res = self._with_file(uid, rename)
                if m2 is None:
                    continue
                fn, nf, nk = res  # type: ignore[misc]
                if nf == m2.flags and nk == m2.keywords and (m2.subdir, m2.filename) == ("cur", fn):
                    continue
                pending.append((m2, fn, nf, nk))
            if pending:
                modseq = self.highestmodseq + 1
                changed_msgs = [
                    MessageInfo(m.uid, m.name, nf, nk, modseq, m.size, m.internaldate, m.recent, "cur", fn, m.folder_dir)
                    for m, fn, nf, nk in pending
                ]
                fields = self._own_end(before)
                fields["highestmodseq"] = modseq
                with self._txn():
                    self._index.update_locations(
                        self.fid,
                        (_location_row(m) for m in changed_msgs),
                    )
                    self._index.update_folder(self.fid, **fields)
                for m in changed_msgs:
                    self._msgs[m.uid] = m
                self.highestmodseq = modseq
                self._view = None
        if changed_msgs:
            self._user.notify(self.name)
        return [m.uid for m in changed_msgs], failed

    # -- removing -----------------------------------------------------------------------------

    def _remove_locked(self, uids: list[int]) -> list[int]:
        """Unlink the files of ``uids`` and drop them from the index.  Caller holds the lock."""
        before = self._own_begin()
        gone: list[int] = []
        for uid in uids:
            m, ok = self._with_file(uid, lambda m: os.unlink(m.fspath) or True)
            if m is not None or uid in self._msgs:
                gone.append(uid)
        gone = sorted(set(gone))
        if not gone:
            return []
        fields = self._own_end(before)
        modseq = self.highestmodseq + 1
        fields["highestmodseq"] = modseq
        with self._txn():
            self._index.delete_messages(self.fid, gone)
            self._index.update_folder(self.fid, **fields)
        for uid in gone:
            m = self._msgs.pop(uid, None)
            if m is not None:
                self._by_name.pop(m.name, None)
                self._total_size -= m.size
            self._pending_headers.pop(uid, None)
            self._drop_recent(uid)
            for memo in self._memos.values():
                memo.discard(uid)
        self.highestmodseq = modseq
        self._view = None
        return gone

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged ``\\Deleted`` (only among ``uids`` if given: UID EXPUNGE, RFC 4315
        §2.1).  Returns the expunged UIDs in ascending order."""
        with self._lock:
            self._check_alive()
            wanted = None if uids is None else set(uids)
            targets = [
                u for u, m in self._msgs.items() if "\\Deleted" in m.flags and (wanted is None or u in wanted)
            ]
            gone = self._remove_locked(targets) if targets else []
        if gone:
            self._user.notify(self.name)
        return gone

    # -- adding -------------------------------------------------------------------------------

    def _register(
        self,
        written: WrittenMessage,
        keywords: frozenset[str] = EMPTY,
        header: bytes | None = None,
        internaldate: float | None = None,
        own: dict[str, bool] | None = None,
    ) -> int:
        """Index a file we just wrote into this folder (idempotent by base name).  Caller holds the lock."""
        base = written.base
        known = self._by_name.get(base)
        if known is not None:
            return known
        flags, kws = self._decode_suffix(written.filename[len(base):])
        kws = kws | keywords if keywords else kws
        uid = self.uidnext
        modseq = self.highestmodseq + 1
        filename = base if written.filename == base else written.filename  # one string when no suffix
        m = MessageInfo(uid, base, flags, kws, modseq, written.size,
                        written.mtime if internaldate is None else internaldate, True,
                        written.subdir, filename, self._dir_str)
        fields = self._own_end(own) if own else {}
        fields.update(uidnext=uid + 1, highestmodseq=modseq)
        if self._index.is_open:
            with self._txn():
                self._index.insert_messages(
                    self.fid,
                    [(uid, base, m.subdir, m.suffix, _letters_of(flags), _keywords_text(kws), modseq, m.size,
                      m.internaldate, 1, header)],
                )
                self._index.update_folder(self.fid, **fields)
        else:
            # put off; the row is written from self._msgs then, and no copy of the header is kept (it is
            # read from the file when first needed)
            unsaved = self._put_off()
            if not unsaved.first_new:
                unsaved.first_new = uid
            unsaved.note_fields(fields)
        self._msgs[uid] = m
        self._by_name[base] = uid
        self._total_size += m.size
        self._add_recent(uid)
        self.uidnext = uid + 1
        self.highestmodseq = modseq
        self._view = None
        return uid

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> int:
        """Store a message (IMAP APPEND, RFC 3501 §6.3.11) durably and return its UID.

        Bare LF line ends become CRLF.  ``internaldate`` (Unix time) becomes the file's mtime.  The
        fsyncs run on the calling thread; see :meth:`Store.append` for the variant that writes in a
        thread.
        """
        fset = normalize_flags(flags)
        kset = validate_keywords(keywords)
        data = normalize_line_ends(data)
        with self._lock:
            self._check_alive()
            letters = self._letters_for(fset, kset) if (fset or kset) else None
            own = self._own_begin()
            written = write_message(self.dir, data, letters, mtime=internaldate)
            uid = self._register(written, kset, header_block(data), internaldate, own)
        self._user.notify(self.name)
        return uid

    def _copy_locked(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        pairs: list[tuple[int, int]] = []
        own = dest._own_begin()
        wanted = sorted(u for u in set(uids) if u in self._msgs)
        headers = self._index.get_headers(self.fid, wanted)
        headers.update({u: h for u, h in self._pending_headers.items() if u in wanted})
        to_register: list[tuple[int, WrittenMessage, MessageInfo]] = []
        for uid in wanted:
            def link(m: MessageInfo) -> WrittenMessage:
                if not m.internaldate:  # not known yet: the copy keeps the date (RFC 3501 §6.4.7)
                    m = self._learn(m, os.stat(m.fspath))
                letters = dest._letters_for(m.flags, m.keywords)
                return _link_or_copy(m, dest.dir, letters)

            m, written = self._with_file(uid, link)
            if m is None:
                continue
            to_register.append((uid, written, m))  # type: ignore[arg-type]
        if to_register:
            fsync_dir(dest.dir / "cur")
        for uid, written, m in to_register:
            extra = frozenset(k for k in m.keywords if k not in dest._kwletter)
            new_uid = dest._register(written, extra, headers.get(uid), written.mtime, own)
            pairs.append((uid, new_uid))
        return pairs

    def copy(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy messages to ``dest`` (same user) keeping flags, keywords and internal date
        (RFC 3501 §6.4.7).  Hard links when possible.  Returns ``[(source uid, new uid)]`` for
        COPYUID (RFC 4315 §3)."""
        if dest._user is not self._user:
            raise StoreError("copy between different users is not supported")
        with self._lock:
            self._check_alive()
            dest._check_alive()
            pairs = self._copy_locked(uids, dest)
        if pairs:
            dest._user.notify(dest.name)
        return pairs

    def move(self, uids: Iterable[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Move messages to ``dest`` (RFC 6851): copy, then remove the sources without needing
        ``\\Deleted``.  Returns ``[(source uid, new uid)]``."""
        if dest._user is not self._user:
            raise StoreError("move between different users is not supported")
        if dest is self:
            return []
        with self._lock:
            self._check_alive()
            dest._check_alive()
            pairs = self._copy_locked(uids, dest)
            if pairs:
                self._remove_locked([src for src, _ in pairs])
        if pairs:
            dest._user.notify(dest.name)
            self._user.notify(self.name)
        return pairs

    def __repr__(self) -> str:
        return f"<Mailbox {self.name!r} of {self._user.user!r}: {len(self._msgs)} messages>"


def _link_or_copy(m: MessageInfo, dest_dir: Path, letters: str) -> WrittenMessage:
    """Hard-link ``m`` into ``dest_dir/cur`` under a new unique name (copy durably if linking fails)."""
    suffix = make_suffix(letters)
    for _attempt in range(100):
        base = unique_base(m.size)
        dst = dest_dir / "cur" / (base + suffix)
        try:
            os.link(m.fspath, dst)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise
        except OSError:
            with open(m.fspath, "rb") as f:
                data = f.read()
            return write_message(dest_dir, data, letters, mtime=m.internaldate)
        return WrittenMessage(base + suffix, "cur", m.size, m.internaldate)
    raise OSError("could not find a unique Maildir file name")
