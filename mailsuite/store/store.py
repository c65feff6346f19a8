"""The :class:`Store`: users' Maildir++ trees, folders, durable delivery and change listeners."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from ..memory import trim_malloc
from . import dovecot
from .errors import InvalidMailboxName, InvalidUser, MailboxExists, MailboxNotFound, StoreError
from .dovecot import write_file_atomic
from .groupcommit import GroupCommit, ThreadGroupCommit
from .index import UserIndex
from .mailbox import Mailbox, normalize_flags, validate_keywords
from .maildir import (
    LETTER_FLAGS,
    STALE_TMP_SECONDS,
    clean_tmp,
    WrittenMessage,
    fsync_dir,
    header_block,
    is_maildir,
    link_message,
    make_maildir,
    normalize_line_ends,
    read_header_block,
    write_message,
    write_messages,
)
from .names import DELIMITER, INBOX, folder_dirname, name_from_dirname, validate_name

__all__ = ["Store", "MailboxInfo", "SPECIAL_USE", "Runner"]

log = Logger()
T = TypeVar("T")

#: Runs a blocking callable off the reactor thread and fires with its result.
Runner = Callable[[Callable[[], Any]], defer.Deferred]

#: Folders made with every account and their RFC 6154 special-use attributes.
SPECIAL_USE: dict[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
SUBSCRIPTIONS_FILE = "subscriptions"
#: In the store root: the crash epoch and whether a server is running (a leading "." is never a domain).
RUN_FILE = ".mailsuite-run"
_WILDCARDS = "*%"


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One LIST entry.  ``name`` is the canonical Unicode name (``.`` delimiter); the IMAP layer
    encodes it (modified UTF-7 or UTF-8).  ``selectable`` is False for a hierarchy level that only
    exists because it has children (``\\Noselect``/``\\NonExistent``, RFC 5258 §3)."""

    name: str
    special_use: str | None
    subscribed: bool
    has_children: bool
    selectable: bool = True


def _default_runner(fn: Callable[[], T]) -> defer.Deferred:
    from twisted.internet import threads

    # deferToThread uses reactor.getThreadPool(): bounded (10 threads by default); the result fires
    # on the reactor thread.
    return threads.deferToThread(fn)


def _check_user_part(part: str, what: str) -> None:
    if (
        not part
        or len(part) > 255
        or part in (".", "..")
        or part.startswith(".")
        or any(ord(c) < 0x20 or ord(c) == 0x7F or c in "/\\" for c in part)
    ):
        raise InvalidUser(f"invalid {what} in user name")


@functools.lru_cache(maxsize=4096)
def _canonical_user(user: str) -> str:
    """:meth:`Store.canonical_user` of a str (cached: it runs several times per delivery; a failure raises
    and so is never cached)."""
    local, at, domain = user.rpartition("@")
    if not at:
        raise InvalidUser(f"user {user!r} has no domain")
    domain = domain.lower()
    _check_user_part(local, "local part")
    _check_user_part(domain, "domain")
    if "@" in local:
        raise InvalidUser("'@' in local part")
    return f"{local}@{domain}"


#: Group commit of deliveries: batches of at most DELIVERY_BATCH.  The server's worker thread runs one batch
#: at a time (a batch of many users' deliveries costs two ``syncfs`` calls, :func:`maildir.write_messages`,
#: and the copies of one message in it share one file); with an injected runner (tests) at most
#: DELIVERY_THREADS batches run at once.  64: one message to 100 users (bench 7b) is two batches, two files.
DELIVERY_BATCH = 64
DELIVERY_THREADS = 4
#: The server's delivery worker threads.  Alternated runs of bench 1-2 (bench/RESULTS.md): one worker had
#: the lowest CPU per message in every run and the most msg/s in most; two (one writing while the other
#: waits for the disk) won one run in a slow-disk phase; a second worker that only helps with jobs that
#: waited 2 ms still cost 15% more CPU per message than one worker.
DELIVERY_WORKERS = 1
#: A queued delivery: (user, data, folder, Maildir flag letters, data known to be CRLF-only).
_DeliveryJob = tuple[str, bytes, str, str, bool]
#: How long a delivery reuses its folder checks (:meth:`Store._delivery_target`).
TARGET_CHECK_SECONDS = 1.0

#: Default bound on open per-user SQLite connections (bench 7a: one per user otherwise).
MAX_OPEN_INDEXES = 64


class _UserState:
    """Per-user shared state: the lock, the index, the open mailboxes.  One per user who connected since
    the start (bench 7a: 2000), hence ``__slots__`` and the directory kept as a string."""

    __slots__ = ("store", "user", "_dir", "lock", "_index", "mailboxes")

    def __init__(self, store: Store, user: str, user_dir: Path | str) -> None:
        self.store = store
        self.user = user
        self._dir = os.fspath(user_dir)
        self.lock = threading.RLock()
        self._index: UserIndex | None = None
        self.mailboxes: dict[str, Mailbox] = {}

    @property
    def dir(self) -> Path:
        """The user's directory (made on demand)."""
        return Path(self._dir)

    @property
    def index(self) -> UserIndex:
        if self._index is None:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            self._index = UserIndex(self._dir, on_open=self._index_opened, epoch=self.store.epoch)
            self.store._index_opened(self)
        return self._index

    def _index_opened(self, _index: UserIndex) -> None:
        self.store._index_opened(self)

    def notify(self, name: str) -> None:
        self.store._notify(self.user, name)

    def close(self) -> None:
        with self.lock:
            for mb in self.mailboxes.values():
                try:
                    mb.flush()
                except Exception:  # noqa: BLE001 - closing must go on
                    log.failure("mailsuite store: flushing {mb}", mb=mb)
                mb._gone = True
                mb.forget_memos()
            self.mailboxes.clear()
            if self._index is not None:
                self._index.close()
                self._index = None
        self.store._index_closed(self)


class Store:
    """All users' mail under ``root`` (``<data_dir>/mail``).  One instance per process.

    ``runner`` runs blocking delivery work off the reactor thread (default: ``deferToThread``,
    i.e. the reactor's bounded thread pool); tests may pass ``lambda f: defer.execute(f)``.
    """

    def __init__(
        self, root: Path | str, *, runner: Runner | None = None, max_open_indexes: int = MAX_OPEN_INDEXES
    ) -> None:
        self.root = Path(root)
        self._runner: Runner = runner or _default_runner
        self._lock = threading.RLock()
        self._users: dict[str, _UserState] = {}
        self._listeners: dict[tuple[str, str], list[Callable[[], object]]] = {}
        #: Users whose index connection is open; at most ``max_open_indexes`` stay so.
        self._max_open = max(1, max_open_indexes)
        self._open_indexes: set[_UserState] = set()
        #: Deliveries arriving together share their disk flushes (group commit): in the server one worker
        #: thread of their own; with an injected runner (tests) batches through it.
        self._deliveries: GroupCommit[_DeliveryJob] | ThreadGroupCommit[_DeliveryJob]
        if runner is None:
            self._deliveries = ThreadGroupCommit(self._write_deliveries, max_batch=DELIVERY_BATCH,
                                                 threads=DELIVERY_WORKERS)
        else:
            self._deliveries = GroupCommit(runner, self._write_deliveries, max_inflight=DELIVERY_THREADS,
                                           max_batch=DELIVERY_BATCH)
        #: (user, folder) -> (valid until, folder used, its directory): see :meth:`_delivery_target`.
        self._targets: dict[tuple[str, str], tuple[float, str, str]] = {}
        #: Crash epoch (:meth:`start_run`); 0 = not tracked (tools and tests that open the store briefly).
        self.epoch = 0

    # -- runs -----------------------------------------------------------------------------------

    @property
    def _run_file(self) -> Path:
        return self.root / RUN_FILE

    def start_run(self) -> int:
        """Mark the store in use by a server process; return the crash epoch.

        A new, larger epoch begins when the previous run did not reach :meth:`close` (SIGKILL, power
        cut) or the file is unreadable: each user's index then moves its UIDNEXT/HIGHESTMODSEQ past what lost commits may have
        handed out (``UserIndex._sync_epoch``), because index commits do not fsync (synchronous=NORMAL).
        """
        previous = {"epoch": 0, "running": False}
        try:
            previous.update(json.loads(self._run_file.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warn("mailsuite store: {path} unreadable ({err}); treating the last stop as unclean",
                     path=str(self._run_file), err=str(e))
            previous["running"] = True
        epoch = int(previous.get("epoch") or 0)
        if previous.get("running") or epoch == 0:
            # time based and increasing: greater than any epoch an index may hold, even when the run
            # file was lost or unreadable
            epoch = max(epoch + 1, time.time_ns() // 1000)
        self.root.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self._run_file, json.dumps({"epoch": epoch, "running": True}) + "\n")
        fsync_dir(self.root)
        self.epoch = epoch
        return epoch

    # -- index connections ----------------------------------------------------------------------

    def _index_opened(self, st: _UserState) -> None:
        """Keep at most ``max_open_indexes`` SQLite connections (~150 KB each): close the least
        recently used ones.  A released index reopens itself on its next use, so shared Mailbox
        objects stay valid.  A user busy in another thread (lock held) is skipped."""
        with self._lock:
            self._open_indexes.add(st)
            excess = len(self._open_indexes) - self._max_open
            if excess <= 0:
                return
            victims = sorted(
                (o for o in self._open_indexes if o is not st),
                key=lambda o: o._index.last_used if o._index is not None else 0,
            )
            for other in victims:
                if excess <= 0:
                    break
                if not other.lock.acquire(blocking=False):
                    continue
                try:
                    idx = other._index
                    if idx is None or idx.release():
                        self._open_indexes.discard(other)
                        excess -= 1
                finally:
                    other.lock.release()

    def _index_closed(self, st: _UserState) -> None:
        with self._lock:
            self._open_indexes.discard(st)

    def open_index_count(self) -> int:
        """How many users' index connections are open now."""
        with self._lock:
            return sum(1 for st in self._open_indexes if st._index is not None and st._index.is_open)

    # -- users --------------------------------------------------------------------------------

    @staticmethod
    def canonical_user(user: str) -> str:
        """``"Alice@Example.ORG"`` -> ``"Alice@example.org"`` after validation (raises InvalidUser)."""
        if not isinstance(user, str):
            raise InvalidUser("user must be a string")
        return _canonical_user(user)

    def user_dir(self, user: str) -> Path:
        """``"alice@example.org"`` -> ``root/example.org/alice`` (validated: no ``/``, ``..``, NUL)."""
        local, _, domain = self.canonical_user(user).rpartition("@")
        return self.root / domain / local

    def _state(self, user: str) -> _UserState:
        key = self.canonical_user(user)
        with self._lock:
            st = self._users.get(key)
            if st is None:
                st = self._users[key] = _UserState(self, key, self.user_dir(key))
            return st

    def _make_user_files(self, udir: Path) -> list[str]:
        """Create the Maildir++ tree; return the special folders that were newly created."""
        created = [INBOX] if make_maildir(udir, subfolder=False) else []
        for name in SPECIAL_USE:
            if make_maildir(udir / folder_dirname(name), subfolder=True, sync_parent=False):
                created.append(name)
        if len(created) > (1 if created[:1] == [INBOX] else 0):
            fsync_dir(udir)
        return created

    def create_user(self, user: str) -> None:
        """Create the user's INBOX and the special-use folders (subscribed).  Idempotent: folders
        that already exist keep their subscription state."""
        st = self._state(user)
        created = self._make_user_files(st.dir)
        if created:
            self._update_subscriptions(st, add=created)

    def _ensure_user(self, st: _UserState) -> None:
        if not (st.dir / "cur").is_dir():
            self.create_user(st.user)

    def usage(self, user: str) -> int:
        """Bytes used by all the user's messages (IMAP QUOTA, RFC 9208 STORAGE)."""
        total = 0
        for info in self.list_mailboxes(user):
            if info.selectable:
                try:
                    total += self.mailbox(user, info.name).total_size()
                except MailboxNotFound:
                    continue
        return total

    # -- delivery -----------------------------------------------------------------------------

    def _delivery_target(self, user: str, folder: str, fresh: bool) -> tuple[str, str]:
        """(folder used, its directory) for a delivery: the account tree made if missing, a missing or unsafe
        folder replaced by INBOX (DESIGN §4: no symlinked Maildir).  The checks cost three ``lstat`` calls
        for INBOX and four more for another folder, each a GIL hand-off in the delivery thread (bench 1-2),
        so a result is reused for ``TARGET_CHECK_SECONDS``; ``fresh`` checks again (a delivery whose cached
        folder vanished)."""
        key = (user, folder)
        now = time.monotonic()
        hit = None if fresh else self._targets.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        st = self._state(user)
        name = validate_name(folder)
        udir = st._dir
        # plain strings and os.lstat: three calls for an INBOX delivery (bench 7b: 20% of the worker's time
        # went to these checks through pathlib, one delivery per user each round)
        if not is_maildir(udir, top_may_link=True):
            if not os.path.isdir(f"{udir}/cur"):
                self.create_user(user)
            if not is_maildir(udir, top_may_link=True):
                self._targets.pop(key, None)
                raise OSError(errno.ELOOP, "INBOX is not a plain Maildir (symlinked cur/new/tmp?)", udir)
        fdir = udir
        if name != INBOX:
            fdir = f"{udir}/{folder_dirname(name)}"
            if not is_maildir(fdir):
                name, fdir = INBOX, udir
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[key] = (now + TARGET_CHECK_SECONDS, name, fdir)
        return name, fdir

    def _prepare_delivery(self, user: str, data: bytes, folder: str, flags: str, fresh: bool = False,
                          crlf: bool = False) -> tuple[str, str, bytes, str | None]:
        """Checks and folder creation of a delivery (any thread): (folder used, its directory, CRLF data, letters).
        ``crlf``: the caller vouches that ``data`` has CRLF line ends only (SMTP content; saves two scans)."""
        if any(c not in LETTER_FLAGS for c in flags):
            raise ValueError(f"bad Maildir flag letters {flags!r}")
        name, fdir = self._delivery_target(user, folder, fresh)
        return name, fdir, data if crlf else normalize_line_ends(data), flags or None

    def _write_delivery(self, user: str, data: bytes, folder: str, flags: str) -> tuple[str, WrittenMessage]:
        """File work of a delivery (any thread): returns the folder used and the written file."""
        result = self._write_deliveries([(user, data, folder, flags, False)], index=False)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _write_deliveries(self, jobs: list[_DeliveryJob], index: bool = True) -> list[Any]:
        """File work of a group of deliveries (one thread task; see :mod:`.groupcommit`), then (``index``)
        indexing them where a session has the folder open."""
        results: list[Any] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        for fresh in (False, True):
            prepared: list[tuple[int, str, tuple[str, bytes, str | None, None]]] = []
            for i in todo:
                user, data, folder, flags, crlf = jobs[i]
                try:
                    name, fdir, data, letters = self._prepare_delivery(user, data, folder, flags, fresh, crlf)
                except BaseException as e:  # noqa: BLE001 - this delivery fails, the others go on
                    results[i] = e
                    continue
                prepared.append((i, name, (fdir, data, letters, None)))
            written = write_messages([job for _i, _n, job in prepared])
            todo = []
            for (i, name, job), result in zip(prepared, written, strict=True):
                if isinstance(result, FileNotFoundError) and not fresh:
                    todo.append(i)          # the folder went away since it was checked: check again
                    continue
                if isinstance(result, BaseException):
                    results[i] = result
                    continue
                # index it here too, off the reactor thread: with many users the index connection is often
                # closed (at most MAX_OPEN_INDEXES stay open), and reopening / closing them means fsyncs
                # (bench 7b: 2000 IDLE users, 80 % of the reactor thread before this)
                if index:
                    self._index_delivery(jobs[i][0], name, result, job[1])
                results[i] = (name, result)
            if not todo:
                break
        return results

    def deliver_sync(self, user: str, data: bytes, folder: str = INBOX, flags: str = "") -> str:
        """Blocking, thread-safe delivery; returns the file name.  Does not touch the index (the
        next :meth:`Mailbox.sync` finds the file).  ``flags`` are Maildir letters (``"S"``); with
        flags the file goes to ``cur/``, else to ``new/``.  A missing folder means INBOX."""
        return self._write_delivery(user, data, folder, flags)[1].filename

    def deliver(self, user: str, data: bytes, folder: str = INBOX, flags: str = "", *,
                crlf: bool = False) -> defer.Deferred:
        """Durable delivery (SMTP: answer 250 only once this fires).  The file work (write, flush, rename,
        flush; :func:`maildir.write_messages`) and the indexing run in the delivery worker (or the injected
        runner), grouped with other deliveries (:mod:`.groupcommit`); then, on the calling (reactor) thread,
        listeners are told.  ``crlf``: ``data`` has CRLF line ends only, no need to check.  Fires with
        the file name."""
        try:
            self.canonical_user(user)
            validate_name(folder)
        except (InvalidUser, InvalidMailboxName):
            return defer.fail()
        d = self._deliveries.submit((user, data, folder, flags, crlf))
        d.addCallback(lambda res: self._delivered(user, res[0], res[1]))
        return d

    def _delivered(self, user: str, name: str, written: WrittenMessage) -> str:
        """On the reactor thread, once a delivery is written and indexed: tell the listeners."""
        self._notify(self._state(user).user, name)
        return written.filename

    def _index_delivery(self, user: str, name: str, written: WrittenMessage, data: bytes) -> None:
        """Index a written delivery (any thread; the user's lock serialises it with everything else)."""
        st = self._state(user)
        mb = st.mailboxes.get(name)
        if mb is None or mb._gone:
            # Nobody has the folder open: its next open finds the file (the delivery changed new/'s mtime)
            # and indexes it, with every other file that arrived meanwhile, in one transaction and in
            # arrival order (names sort in creation order).  Indexing each delivery here cost an index
            # open and five SQLite calls per message, each a GIL hand-off that stalled the reactor thread
            # (bench 1-2, py-spy --gil).
            return
        header = normalize_line_ends(header_block(data))
        with st.lock:
            mb = st.mailboxes.get(name)
            try:
                if mb is not None and not mb._gone:
                    mb._register(written, header=header)
            except Exception:  # noqa: BLE001 - the file is safe; the next sync indexes it
                log.failure("mailsuite store: indexing delivered {f}", f=written.filename)

    def append(
        self,
        user: str,
        name: str,
        data: bytes,
        flags: tuple[str, ...] | frozenset[str] = (),
        keywords: tuple[str, ...] | frozenset[str] = (),
        internaldate: float | None = None,
    ) -> defer.Deferred:
        """IMAP APPEND with the file work in the runner's thread; fires with the new UID.

        Raises (in the Deferred) MailboxNotFound (APPEND needs ``[TRYCREATE]``, RFC 3501 §6.3.11).
        """
        try:
            mb = self.mailbox(user, name)
            fset = normalize_flags(flags)
            kset = validate_keywords(keywords)
            with mb._lock:
                letters = mb._letters_for(fset, kset) if (fset or kset) else None
        except Exception:  # noqa: BLE001 - handed to the Deferred
            return defer.fail()
        data = normalize_line_ends(data)
        d = self._runner(lambda: write_message(mb.dir, data, letters, mtime=internaldate))

        def register(written: WrittenMessage) -> int:
            with mb._lock:
                mb._check_alive()
                uid = mb._register(written, kset, header_block(data), internaldate)
            mb._user.notify(mb.name)
            return uid

        d.addCallback(register)
        return d

    def append_file(
        self,
        user: str,
        name: str,
        path: Path,
        flags: tuple[str, ...] | frozenset[str] = (),
        keywords: tuple[str, ...] | frozenset[str] = (),
        internaldate: float | None = None,
    ) -> defer.Deferred:
        """:meth:`append` for a message already spooled to ``path`` (CRLF line ends, on the user's file
        system, e.g. in its ``tmp/``): linked in, never read whole (a big IMAP APPEND stays out of
        memory).  The store owns ``path``: it is removed if the append fails.  Fires with the new UID."""

        def drop() -> None:
            try:
                os.unlink(path)
            except OSError:
                pass

        try:
            mb = self.mailbox(user, name)
            fset = normalize_flags(flags)
            kset = validate_keywords(keywords)
            with mb._lock:
                letters = mb._letters_for(fset, kset) if (fset or kset) else None
        except Exception:  # noqa: BLE001 - handed to the Deferred
            drop()
            return defer.fail()

        def work() -> tuple[bytes, WrittenMessage]:
            try:
                with open(path, "rb") as f:
                    header = read_header_block(f)
                return header, link_message(mb.dir, Path(path), letters, mtime=internaldate)
            except BaseException:
                drop()
                raise

        def register(result: tuple[bytes, WrittenMessage]) -> int:
            header, written = result
            with mb._lock:
                mb._check_alive()
                uid = mb._register(written, kset, header, internaldate)
            mb._user.notify(mb.name)
            return uid

        return self._runner(work).addCallback(register)

    # -- mailboxes ----------------------------------------------------------------------------

    def mailbox(self, user: str, name: str) -> Mailbox:
        """The shared, synced :class:`Mailbox` for ``name`` (``INBOX`` case-insensitive).

        Raises InvalidMailboxName or MailboxNotFound.  Opening INBOX creates a missing account tree.
        """
        name = validate_name(name)
        st = self._state(user)
        with st.lock:
            mb = st.mailboxes.get(name)
            if mb is None:
                if name == INBOX:
                    self._ensure_user(st)
                fdir = st.dir / folder_dirname(name)
                if not is_maildir(fdir, top_may_link=name == INBOX):   # no symlinked folders (DESIGN §4)
                    raise MailboxNotFound(name)
                mb = Mailbox(st, name, fdir)
                mb._open()
                st.mailboxes[name] = mb
                return mb
        try:
            mb.sync()
        except MailboxNotFound:
            with st.lock:
                if st.mailboxes.get(name) is mb:
                    del st.mailboxes[name]
            raise
        return mb

    def _folder_names(self, st: _UserState) -> tuple[list[str], set[str]]:
        """(all folder names incl. INBOX, the selectable ones) from the user's directory."""
        names = [INBOX]
        selectable = {INBOX}
        try:
            entries = list(os.scandir(st.dir))
        except FileNotFoundError:
            return names, selectable
        for e in entries:
            if not e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                continue
            try:
                name = name_from_dirname(e.name)
            except InvalidMailboxName:
                continue
            names.append(name)
            if os.path.isdir(os.path.join(e.path, "cur")):
                selectable.add(name)
        return names, selectable

    def list_mailboxes(self, user: str) -> list[MailboxInfo]:
        """Every folder (INBOX first, then by name), plus implied parents of nested folders
        (``selectable=False``).  Creates a missing account tree."""
        st = self._state(user)
        self._ensure_user(st)
        names, selectable = self._folder_names(st)
        everything = set(names)
        for n in names:
            parts = n.split(DELIMITER)
            for i in range(1, len(parts)):
                everything.add(DELIMITER.join(parts[:i]))
        subs = set(self._read_subscriptions(st))
        parents = set()
        for n in everything:
            parts = n.split(DELIMITER)
            for i in range(1, len(parts)):
                parents.add(DELIMITER.join(parts[:i]))
        out = [
            MailboxInfo(n, SPECIAL_USE.get(n), n in subs, n in parents, n in selectable)
            for n in everything
        ]
        out.sort(key=lambda i: (i.name != INBOX, i.name))
        return out

    def create_mailbox(self, user: str, name: str) -> str:
        """CREATE (RFC 3501 §6.3.3): a trailing delimiter is dropped; returns the canonical name.

        Raises MailboxExists (also for INBOX) or InvalidMailboxName (``*``/``%`` are refused).
        """
        self._targets.clear()     # deliveries check their folder again
        if name.endswith(DELIMITER):
            name = name[:-1]
        name = validate_name(name)
        if any(c in name for c in _WILDCARDS):
            raise InvalidMailboxName("mailbox names may not contain * or %")
        if name == INBOX:
            raise MailboxExists(name)
        st = self._state(user)
        with st.lock:
            self._ensure_user(st)
            fdir = st.dir / folder_dirname(name)
            if (fdir / "cur").is_dir():
                raise MailboxExists(name)
            make_maildir(fdir, subfolder=True)
            st.index.delete_folder(name)  # a stale row would carry an old UIDVALIDITY
            st.mailboxes.pop(name, None)
        return name

    def delete_mailbox(self, user: str, name: str) -> None:
        """DELETE (RFC 3501 §6.3.4): removes the folder and its messages; children are kept.
        INBOX cannot be deleted."""
        self._targets.clear()     # deliveries check their folder again
        name = validate_name(name)
        if name == INBOX:
            raise StoreError("INBOX cannot be deleted")
        st = self._state(user)
        with st.lock:
            fdir = st.dir / folder_dirname(name)
            if fdir.is_symlink() or not fdir.is_dir():
                raise MailboxNotFound(name)
            mb = st.mailboxes.pop(name, None)
            if mb is not None:
                mb._gone = True
                mb.forget_memos()
            # Rename first (atomic: readers never see a half-deleted folder), then remove.
            trash = st.dir / f"mailsuite-deleted-{uuid.uuid4().hex}"
            os.rename(fdir, trash)
            st.index.delete_folder(name)
            shutil.rmtree(trash, ignore_errors=True)
        self._notify(st.user, name)

    def rename_mailbox(self, user: str, old: str, new: str) -> str:
        """RENAME (RFC 3501 §6.3.5); children move along.  Renaming INBOX moves all its messages
        into a new folder ``new`` and leaves INBOX empty (its children stay).  Returns the new name."""
        self._targets.clear()     # deliveries check their folder again
        old = validate_name(old)
        new = validate_name(new)
        if any(c in new for c in _WILDCARDS):
            raise InvalidMailboxName("mailbox names may not contain * or %")
        if new == INBOX:
            raise MailboxExists(new)
        st = self._state(user)
        if old == INBOX:
            self.create_mailbox(user, new)
            src = self.mailbox(user, INBOX)
            dest = self.mailbox(user, new)
            src.move(src.uids(), dest)
            return new
        if new == old or new.startswith(old + DELIMITER):
            raise InvalidMailboxName("cannot rename a mailbox into itself")
        with st.lock:
            names, _sel = self._folder_names(st)
            moving = [n for n in names if n == old or n.startswith(old + DELIMITER)]
            if not moving:
                raise MailboxNotFound(old)
            pairs = [(n, new + n[len(old):]) for n in moving]
            for _n, target in pairs:
                if (st.dir / folder_dirname(target)).exists():
                    raise MailboxExists(target)
            for n, target in pairs:
                mb = st.mailboxes.pop(n, None)
                if mb is not None:
                    mb.flush()
                    mb._gone = True
                    mb.forget_memos()
                os.rename(st.dir / folder_dirname(n), st.dir / folder_dirname(target))
                st.index.rename_folder(n, target)
            subs = self._read_subscriptions(st)
            renamed = {n: t for n, t in pairs}
            if any(s in renamed for s in subs):
                self._write_subscriptions(st, [renamed.get(s, s) for s in subs])
        for n, target in pairs:
            self._notify(st.user, n)
            self._notify(st.user, target)
        return new

    # -- subscriptions (Dovecot's "subscriptions" file, one modified UTF-7 name per line) --------

    def _read_subscriptions(self, st: _UserState) -> list[str]:
        from .names import decode_mutf7

        try:
            lines = (st.dir / SUBSCRIPTIONS_FILE).read_text("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out: list[str] = []
        for i, line in enumerate(lines):
            if i == 0 and line.startswith("V\t"):
                continue  # Dovecot v2 header
            line = line.replace("\t", DELIMITER).strip()
            if not line:
                continue
            try:
                name = validate_name(decode_mutf7(line))
            except InvalidMailboxName:
                continue
            if name not in out:
                out.append(name)
        return out

    def _write_subscriptions(self, st: _UserState, names: list[str]) -> None:
        from .names import encode_mutf7

        st.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dovecot.write_file_atomic(st.dir / SUBSCRIPTIONS_FILE, "".join(encode_mutf7(n) + "\n" for n in names))

    def _update_subscriptions(self, st: _UserState, add: list[str] = (), remove: list[str] = ()) -> None:  # type: ignore[assignment]
        with st.lock:
            subs = self._read_subscriptions(st)
            new = [s for s in subs if s not in remove] + [a for a in add if a not in subs]
            if new != subs:
                self._write_subscriptions(st, new)

    def subscribe(self, user: str, name: str) -> None:
        """SUBSCRIBE (RFC 3501 §6.3.6); the mailbox need not exist."""
        self._update_subscriptions(self._state(user), add=[validate_name(name)])

    def unsubscribe(self, user: str, name: str) -> None:
        """UNSUBSCRIBE (RFC 3501 §6.3.7)."""
        self._update_subscriptions(self._state(user), remove=[validate_name(name)])

    def subscriptions(self, user: str) -> list[str]:
        """Subscribed names (existing or not: LSUB lists both, RFC 3501 §6.3.9)."""
        return self._read_subscriptions(self._state(user))

    # -- listeners ----------------------------------------------------------------------------

    def add_listener(self, user: str, name: str, callback: Callable[[], object]) -> None:
        """Call ``callback()`` after every change made through this Store to that folder (delivery,
        append, flags, expunge, copy/move, a sync that found outside changes, delete/rename)."""
        key = (self.canonical_user(user), validate_name(name))
        with self._lock:
            self._listeners.setdefault(key, []).append(callback)

    def remove_listener(self, user: str, name: str, callback: Callable[[], object]) -> None:
        key = (self.canonical_user(user), validate_name(name))
        with self._lock:
            cbs = self._listeners.get(key, [])
            if callback in cbs:
                cbs.remove(callback)
            if not cbs:
                self._listeners.pop(key, None)

    def _notify(self, user: str, name: str) -> None:
        with self._lock:
            cbs = list(self._listeners.get((user, name), ()))
        for cb in cbs:
            try:
                cb()
            except Exception:  # noqa: BLE001 - one bad listener must not break the others
                log.failure("mailsuite store: listener {cb} failed", cb=cb)

    # -- maintenance / export / shutdown ------------------------------------------------------

    def clean_stale_tmp(self, max_age: float = STALE_TMP_SECONDS) -> int:
        """Remove leftovers of crashed deliveries (tmp/ files older than 36 h) in every folder of
        every user; returns how many.  Meant for server start (folders opened later are cleaned on
        their first open anyway).  Blocking."""
        removed = 0
        try:
            domains = [d for d in os.scandir(self.root) if d.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return 0
        for domain in domains:
            for udir in os.scandir(domain.path):
                if not udir.is_dir(follow_symlinks=False) or udir.name.startswith("."):
                    continue
                removed += clean_tmp(Path(udir.path), max_age)
                for sub in os.scandir(udir.path):
                    if sub.name.startswith(".") and sub.is_dir(follow_symlinks=False):
                        removed += clean_tmp(Path(sub.path), max_age)
        return removed


    def export_dovecot(self, user: str) -> list[str]:
        """Write ``dovecot-uidlist`` (and ``dovecot-keywords``) in every folder from our index, so the
        account can move to Dovecot keeping UIDs.  Returns the folders written.  Run it with the server
        stopped (it opens the index) and switch right after: while mailsuite keeps running these files
        go stale, and an index rebuild would import them again."""
        done = []
        for info in self.list_mailboxes(user):
            if not info.selectable:
                continue
            mb = self.mailbox(user, info.name)
            with mb._lock:
                records = [(m.uid, m.name) for m in mb._msgs.values()]
                dovecot.write_file_atomic(
                    mb.dir / dovecot.UIDLIST, dovecot.format_uidlist(mb.uidvalidity, mb.uidnext, records)
                )
                if any(mb._kwtable):
                    dovecot.write_file_atomic(mb.dir / dovecot.KEYWORDS, dovecot.format_keywords(mb._kwtable))
            done.append(info.name)
        return done

    # -- put-off index writes -------------------------------------------------------------------

    def deferred_writes(self) -> int:
        """Index writes put off for users whose index is closed (:meth:`UserIndex.defer`)."""
        with self._lock:
            states = list(self._users.values())
        return sum(st._index.deferred for st in states if st._index is not None)

    def apply_deferred(self, max_users: int = 200) -> int:
        """Apply the put-off index writes of up to ``max_users`` users: reopen each index, write, close it
        again (blocking: run it in a thread; the server does every few seconds, so put-off writes reach the
        disk soon and their memory stays bounded).  A user busy in another thread is skipped.  Returns
        how many users were done."""
        with self._lock:
            states = [st for st in self._users.values() if st._index is not None and st._index.deferred]
        done = 0
        for st in states[:max_users]:
            if not st.lock.acquire(blocking=False):
                continue
            try:
                idx = st._index
                if idx is None or not idx.deferred:
                    continue
                was_open = idx.is_open
                try:
                    idx.db                        # applies them
                except Exception:  # noqa: BLE001 - logged; the files are safe, a rescan indexes them
                    log.failure("mailsuite store: applying put-off index writes of {user}", user=st.user)
                    continue
                if not was_open and idx.release():
                    self._index_closed(st)
                done += 1
            finally:
                st.lock.release()
        if done:
            trim_malloc()    # the closures and the SQLite connections just freed: give the pages back
        return done

    @property
    def delivering(self) -> bool:
        """True while deliveries are being written."""
        return self._deliveries.busy

    def apply_deferred_in_thread(self) -> defer.Deferred:
        """:meth:`apply_deferred` through the store's runner (a pool thread in the server)."""
        return self._runner(self.apply_deferred)

    def close(self) -> None:
        """Flush caches and close every index (the Store can be reopened with a new instance).  After a
        :meth:`start_run`, a close that closed every index (each checkpointed and fsynced by SQLite)
        records the clean stop."""
        stop = getattr(self._deliveries, "stop", None)
        if stop is not None:
            stop()          # the deliveries the worker has are written first
        with self._lock:
            states = list(self._users.values())
            self._users.clear()
        clean = True
        for st in states:
            try:
                st.close()
            except Exception:  # noqa: BLE001 - close the others; the next start counts this as a crash
                clean = False
                log.failure("mailsuite store: closing the index of {user}", user=st.user)
        if self.epoch and clean:
            try:
                write_file_atomic(self._run_file, json.dumps({"epoch": self.epoch, "running": False}) + "\n")
            except OSError as e:
                log.warn("mailsuite store: cannot record the clean stop in {path}: {err}",
                         path=str(self._run_file), err=str(e))
