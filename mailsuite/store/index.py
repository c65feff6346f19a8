"""The per-user SQLite index (``<user_dir>/mailsuite-index.sqlite``).

One database per user, WAL mode, written only by the server process (DESIGN §3).  It caches what the
Maildir does not say cheaply: UIDs, UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ, keywords beyond the 26 letters,
modseqs, the header block of each message, and the directory mtimes seen at the last scan.  The Maildir
stays the source of truth: a lost, corrupt or unknown-version database is moved aside and rebuilt (new
UIDVALIDITY for every folder, RFC 3501 §2.3.1.1).

UIDVALIDITY values come from a per-user counter file (``mailsuite-uidvalidity``) that survives the loss
of the database, so a rebuilt folder never reuses a UIDVALIDITY that clients may have cached.

Not thread-safe by itself: :class:`~mailsuite.store.Store` serialises all calls with a per-user lock.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from twisted.logger import Logger

from .dovecot import write_file_atomic

__all__ = ["UserIndex", "Checkpointer", "FolderRow", "INDEX_FILE", "UIDVALIDITY_FILE", "SCHEMA_VERSION"]

log = Logger()

INDEX_FILE = "mailsuite-index.sqlite"
UIDVALIDITY_FILE = "mailsuite-uidvalidity"
SCHEMA_VERSION = 1
#: How far UIDNEXT and HIGHESTMODSEQ move after an unclean stop: more than the UIDs that commits lost to a
#: power cut can have handed out (synchronous=NORMAL loses at most what the kernel had not written back,
#: ~30 s of commits), and small against the 2**32 UID space.
CRASH_UID_GAP = 100_000
#: SQLite page cache per connection, in KiB (negative PRAGMA cache_size): one connection per user,
#: so the default 2 MiB each would dominate the memory of a server with many idle sessions.
CACHE_KIB = 256

_use_clock = itertools.count(1)

_SCHEMA = """
CREATE TABLE folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    keywords TEXT NOT NULL DEFAULT '[]',
    new_mtime INTEGER NOT NULL DEFAULT 0,
    new_scanned INTEGER NOT NULL DEFAULT 0,
    cur_mtime INTEGER NOT NULL DEFAULT 0,
    cur_scanned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    name TEXT NOT NULL,
    subdir TEXT NOT NULL,
    suffix TEXT NOT NULL,
    flags TEXT NOT NULL,
    keywords TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    recent INTEGER NOT NULL,
    header BLOB,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_name ON messages(folder, name);
CREATE INDEX messages_modseq ON messages(folder, modseq);
"""

#: Column order of message rows exchanged with :class:`~mailsuite.store.mailbox.Mailbox`.
MESSAGE_COLUMNS = "uid, name, subdir, suffix, flags, keywords, modseq, size, internaldate, recent"

#: Rows per statement of :meth:`UserIndex.insert_message_rows`: one multi-row ``INSERT ... VALUES (...),
#: (...)`` instead of one ``executemany`` step per row.  The statement stays compiled in the connection's
#: statement cache (~1 KiB per row, so ~50 KiB; compiling costs ~12 us a row, so it must be reused, not
#: rebuilt), hence the modest size; 50 x 11 = 550 variables is below even the old limit of 999
#: (SQLITE_MAX_VARIABLE_NUMBER before SQLite 3.32).
ROWS_PER_INSERT = 50
#: SQLite's default ``wal_autocheckpoint`` (pages), restored after :meth:`UserIndex.no_autocheckpoint`.
WAL_AUTOCHECKPOINT = 1000
_ROW_WIDTH = 11
_INSERT_ROWS = (
    "INSERT INTO messages (folder, uid, name, subdir, suffix, flags, keywords, modseq, size,"
    " internaldate, recent) VALUES "
)
_INSERT_ONE = _INSERT_ROWS + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_MANY = _INSERT_ROWS + ", ".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * ROWS_PER_INSERT)


@dataclass
class FolderRow:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    keywords: list[str | None]
    new_mtime: int
    new_scanned: int
    cur_mtime: int
    cur_scanned: int


class UserIndex:
    """The SQLite index of one user.  Opening never fails on a bad database: it is rebuilt."""

    def __init__(
        self, user_dir: Path | str, on_open: Callable[[UserIndex], object] | None = None, epoch: int = 0
    ) -> None:
        #: The user's directory, a string: one index object per user stays for the process's life
        #: (bench 7a), a Path would cost three objects more; ``path`` etc. make Paths on demand.
        self._dir = os.fspath(user_dir)
        #: True when this open created a fresh database (first use, or after loss/corruption).
        self.fresh = False
        #: Called after the connection is (re)opened, e.g. to evict other users' connections.
        self._on_open = on_open
        #: Logical time of the last use of the connection (for least-recently-used eviction).
        self.last_used = next(_use_clock)
        #: Writes put off while the connection was closed (:meth:`defer`), oldest first.
        self._deferred: list[Callable[[], object]] | tuple[()] = ()  # a list once something is put off
        self._flushing = False
        self._db: sqlite3.Connection | None = self._open()
        self._sync_epoch(epoch)

    @property
    def user_dir(self) -> Path:
        return Path(self._dir)

    @property
    def path(self) -> Path:
        """The database file."""
        return Path(self._dir, INDEX_FILE)

    @property
    def _uidvalidity_path(self) -> Path:
        return Path(self._dir, UIDVALIDITY_FILE)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, reopened on demand after :meth:`release`; writes put off by :meth:`defer` are
        applied before anything else sees the database."""
        db = self._db
        if db is None:
            db = self._reopen()
        self.last_used = next(_use_clock)
        if self._deferred and not self._flushing:
            self._flush_deferred(db)
        return db

    def defer(self, write: Callable[[], object]) -> None:
        """Put off ``write`` (index writes for a change already made in memory) until the connection is
        next used, instead of reopening a closed index now.  Reopening and the close that later evicts
        it cost fsyncs (WAL header, checkpoint): bench 7b delivers one message to each of 2000 users, far
        more than the open indexes kept.  A crash before the write loses only what the crash epoch
        covers anyway (:meth:`_sync_epoch`); :meth:`close` applies what is pending."""
        if self._deferred:
            self._deferred.append(write)  # type: ignore[union-attr]
        else:
            self._deferred = [write]

    @property
    def deferred(self) -> int:
        """How many writes are put off."""
        return len(self._deferred)

    def _flush_deferred(self, db: sqlite3.Connection) -> None:
        self._flushing = True
        try:
            writes, self._deferred = self._deferred, ()
            with self.transaction():
                for write in writes:
                    try:
                        write()
                    except sqlite3.Error as e:   # e.g. its folder was deleted meanwhile; the others go on
                        log.warn("mailsuite store: {path}: a put-off index write failed: {err}",
                                 path=str(self.path), err=str(e))
        finally:
            self._flushing = False

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def release(self) -> bool:
        """Close the connection to free its memory (the next use reopens it).  Refused (False)
        inside a transaction."""
        db = self._db
        if db is None:
            return True
        if db.in_transaction:
            return False
        db.close()
        self._db = None
        return True

    def _reopen(self) -> sqlite3.Connection:
        """Reconnect to the database checked by the first open of this process (no quick_check)."""
        if not self.path.exists():
            # Lost while we were running: the mailboxes built on it hold stale folder ids, so do
            # not silently start an empty index under them.
            raise sqlite3.DatabaseError(f"index {self.path} vanished while in use")
        db = self._connect()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            db.close()
            raise sqlite3.DatabaseError(f"index {self.path} replaced while in use (version {version})")
        self._db = db
        if self._on_open is not None:
            self._on_open(self)
        return db

    # -- opening -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a COMMIT is not an fsync, yet it survives a crash of the process; only a
        # power cut / kernel crash can lose the last commits.  The Maildir (fsynced) stays the truth, and
        # a start after an unclean stop moves every UIDNEXT and HIGHESTMODSEQ past anything that may
        # have been handed out and lost (:meth:`_sync_epoch`), so no UID is ever reused
        # (RFC 3501 §2.3.1.1).  docs/architecture.md "Index durability" has the measurements.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return db

    def _open(self) -> sqlite3.Connection:
        existed = self.path.exists()
        db = None
        try:
            db = self._connect()
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
                db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
                self.fresh = True
                return db
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"unknown index schema version {version}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute("SELECT count(*) FROM folders").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            log.warn("mailsuite store: index {path} unusable ({err}); rebuilding", path=str(self.path), err=str(e))
            self._move_aside(existed)
            db = self._connect()
            db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
            self.fresh = True
            return db

    def _move_aside(self, existed: bool) -> None:
        if existed and self.path.exists():
            os.replace(self.path, self.path.with_name(INDEX_FILE + ".corrupt"))
        for ext in ("-wal", "-shm", "-journal"):
            try:
                os.unlink(str(self.path) + ext)
            except FileNotFoundError:
                pass

    def _sync_epoch(self, epoch: int) -> None:
        """Catch up with the store's crash epoch (:meth:`Store.start_run`): if the server stopped
        uncleanly since this index was last used, move every folder's UIDNEXT and HIGHESTMODSEQ on by
        :data:`CRASH_UID_GAP`, durably (synchronous=FULL for this one commit), before any UID is handed
        out.  Messages whose rows were lost are found again by the next rescan and get new UIDs above
        the gap; clients see the old UIDs expunged (RFC 3501 §2.3.1.1: a UID is never reused)."""
        if epoch <= 0:
            return
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is not None and row[0] >= epoch:
            return
        bump = 0 if self.fresh else CRASH_UID_GAP
        db.execute("PRAGMA synchronous=FULL")
        try:
            with self.transaction():
                if bump:
                    db.execute(
                        "UPDATE folders SET uidnext = min(uidnext + ?, 4294967295),"
                        " highestmodseq = highestmodseq + ?",
                        (bump, bump),
                    )
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        if bump:
            log.info("mailsuite store: {path}: unclean stop before; UIDNEXT moved on by {gap}",
                     path=str(self.path), gap=bump)

    def close(self) -> None:
        if self._deferred:
            self.db    # reopen and apply what was put off
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- helpers ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).  Nested use joins the outer transaction."""
        db = self.db
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def full_sync(self) -> Iterator[None]:
        """Commits inside are fsynced (synchronous=FULL): for a commit that hands out more UIDs than
        :data:`CRASH_UID_GAP` would cover if a power cut lost it (the first scan of a huge folder)."""
        db = self.db
        if db.in_transaction:      # the PRAGMA cannot change inside a transaction; the outer one decides
            yield
            return
        db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            if self._db is db:
                db.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def no_autocheckpoint(self) -> Iterator[sqlite3.Connection]:
        """Commits inside do not checkpoint the WAL: for the background writer of a big first scan,
        whose commits are made under the user's lock: a checkpoint there (copying ~1,000 pages and two
        fsyncs, 10-40 ms) made a session of the user wait for it.  The writer checkpoints with a
        :class:`Checkpointer` instead, without the lock."""
        db = self.db
        db.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield db
        finally:
            if self._db is db:
                db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(os.path.join(self._dir, INDEX_FILE))

    def next_uidvalidity(self) -> int:
        """A UIDVALIDITY never handed out before for this user (time based, strictly increasing)."""
        last = 0
        try:
            last = int(self._uidvalidity_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            pass
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        write_file_atomic(self._uidvalidity_path, f"{value}\n")
        return value

    def note_uidvalidity(self, value: int) -> None:
        """Record an imported UIDVALIDITY so later ones are greater."""
        try:
            last = int(self._uidvalidity_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        if value > last:
            write_file_atomic(self._uidvalidity_path, f"{value}\n")

    # -- folders ------------------------------------------------------------------------------

    @staticmethod
    def _folder(row: tuple) -> FolderRow:
        (fid, name, uidvalidity, uidnext, hms, kw, nm, ns, cm, cs) = row
        return FolderRow(fid, name, uidvalidity, uidnext, hms, json.loads(kw), nm, ns, cm, cs)

    def get_folder(self, name: str) -> FolderRow | None:
        row = self.db.execute(
            "SELECT id, name, uidvalidity, uidnext, highestmodseq, keywords, new_mtime, new_scanned,"
            " cur_mtime, cur_scanned FROM folders WHERE name = ?",
            (name,),
        ).fetchone()
        return self._folder(row) if row else None

    def create_folder(self, name: str, uidvalidity: int, uidnext: int, keywords: list[str | None]) -> FolderRow:
        with self.transaction() as db:
            db.execute("DELETE FROM folders WHERE name = ?", (name,))
            cur = db.execute(
                "INSERT INTO folders (name, uidvalidity, uidnext, highestmodseq, keywords) VALUES (?, ?, ?, 1, ?)",
                (name, uidvalidity, uidnext, json.dumps(keywords)),
            )
            fid = cur.lastrowid
        folder = self.get_folder(name)
        assert folder is not None and folder.id == fid
        return folder

    def update_folder(self, fid: int, **fields: object) -> None:
        if "keywords" in fields:
            fields["keywords"] = json.dumps(fields["keywords"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE folders SET {cols} WHERE id = ?", (*fields.values(), fid))

    def delete_folder(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM folders WHERE name = ?", (name,))

    def rename_folder(self, old: str, new: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM folders WHERE name = ?", (new,))
            db.execute("UPDATE folders SET name = ? WHERE name = ?", (new, old))

    def folder_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM folders")]

    # -- messages -----------------------------------------------------------------------------

    def load_messages(self, fid: int) -> Iterable[tuple]:
        return self.db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE folder = ? ORDER BY uid", (fid,)
        )

    def insert_messages(self, fid: int, rows: Iterable[tuple]) -> None:
        """Rows: (uid, name, subdir, suffix, flags, keywords, modseq, size, internaldate, recent, header)."""
        self.db.executemany(
            "INSERT INTO messages (folder, uid, name, subdir, suffix, flags, keywords, modseq, size,"
            " internaldate, recent, header) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((fid, *r) for r in rows),
        )

    def insert_message_rows(self, rows: Iterable[tuple]) -> None:
        """Rows of new messages without a header yet (it stays NULL): (folder, uid, name, subdir, suffix,
        flags, keywords, modseq, size, internaldate, recent), the first scan of a folder, whose rows a
        pool thread writes while the reactor thread wants the GIL (bench 6a/6b).

        :data:`ROWS_PER_INSERT` rows per statement, the parameters flattened in C (``chain``): no Python
        code per row here, and SQLite's own work (GIL released) is most of the cost: 100,000 rows took
        ~1 s of CPU with ``executemany``, ~0.4 s so.  Values should be exact ``int``/``float``/``str``:
        the sqlite3 module looks up an adapter for anything else (``bool``, ``None``), ~1 us each."""
        params = list(itertools.chain.from_iterable(rows))
        n = len(params)
        if n % _ROW_WIDTH:
            raise ValueError(f"message rows must have {_ROW_WIDTH} columns")
        step = ROWS_PER_INSERT * _ROW_WIDTH
        full = n - n % step
        db = self.db
        if full:
            execute = db.execute
            for i in range(0, full, step):
                execute(_INSERT_MANY, params[i : i + step])
        if full < n:   # the rest, fewer than ROWS_PER_INSERT rows: one step each
            rest = iter(params[full:])
            db.executemany(_INSERT_ONE, zip(*[rest] * _ROW_WIDTH))

    def update_locations(self, fid: int, rows: Iterable[tuple]) -> None:
        """Rows: (subdir, suffix, flags, keywords, modseq, uid)."""
        self.db.executemany(
            "UPDATE messages SET subdir = ?, suffix = ?, flags = ?, keywords = ?, modseq = ?"
            " WHERE folder = ? AND uid = ?",
            ((s, x, f, k, m, fid, u) for (s, x, f, k, m, u) in rows),
        )

    def clear_recent(self, fid: int, uids: Iterable[int]) -> None:
        self.db.executemany(
            "UPDATE messages SET recent = 0 WHERE folder = ? AND uid = ?", ((fid, u) for u in uids)
        )

    def delete_messages(self, fid: int, uids: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", ((fid, u) for u in uids))

    def get_header(self, fid: int, uid: int) -> bytes | None:
        row = self.db.execute("SELECT header FROM messages WHERE folder = ? AND uid = ?", (fid, uid)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def get_headers(self, fid: int, uids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for i in range(0, len(uids), 500):
            chunk = uids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for uid, header in self.db.execute(
                f"SELECT uid, header FROM messages WHERE folder = ? AND uid IN ({marks}) AND header IS NOT NULL",
                (fid, *chunk),
            ):
                out[uid] = header if type(header) is bytes else bytes(header)
        return out

    def set_header(self, fid: int, uid: int, header: bytes) -> None:
        self.db.execute("UPDATE messages SET header = ? WHERE folder = ? AND uid = ?", (header, fid, uid))

    def set_dates(self, fid: int, rows: Iterable[tuple[int, float, int]]) -> None:
        """Rows: (uid, internaldate, size) learnt from the files (see Mailbox.internaldate)."""
        self.db.executemany(
            "UPDATE messages SET internaldate = ?, size = ? WHERE folder = ? AND uid = ?",
            ((d, s, fid, u) for (u, d, s) in rows),
        )

    def modseq_uids(self, fid: int, since: int) -> list[int]:
        """UIDs whose modseq is greater than ``since`` (RFC 7162 CHANGEDSINCE), via the (folder, modseq) index."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT uid FROM messages WHERE folder = ? AND modseq > ? ORDER BY uid", (fid, since)
            )
        ]


class Checkpointer:
    """A second connection to a user's index that checkpoints its WAL (PASSIVE: it never waits, nor
    blocks the writer or readers of the main connection) from a pool thread, without the user's lock.
    Errors are logged and ignored: the main connection's own checkpoints still happen later."""

    __slots__ = ("_path", "_db")

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def checkpoint(self) -> None:
        try:
            if self._db is None:   # mode=rw: never create a database that vanished meanwhile
                self._db = sqlite3.connect(f"file:{quote(self._path)}?mode=rw", uri=True, isolation_level=None,
                                           check_same_thread=False)
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            log.warn("mailsuite store: {path}: checkpoint failed: {err}", path=self._path, err=str(e))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
