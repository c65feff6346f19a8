"""The index rows of a big first scan (bench 6a/6b): multi-row INSERTs, the background writer's chunks,
pauses and checkpoints made without the user's lock."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from mailsuite.store import index as index_mod
from mailsuite.store import mailbox as mailbox_mod
from mailsuite.store.index import ROWS_PER_INSERT, Checkpointer, UserIndex

from .store_helpers import USER, defer_bulk_rows, fresh_folder
from .test_store_first_open import BODY

ROW_SQL = ("SELECT uid, name, subdir, suffix, flags, keywords, modseq, size, internaldate, recent, header,"
           " typeof(recent), typeof(internaldate) FROM messages WHERE folder = ? ORDER BY uid")


def _rows(n: int) -> list[tuple]:
    """Varied message rows (uid, name, subdir, suffix, flags, keywords, modseq, size, internaldate, recent)."""
    return [
        (i + 1, f"17000{i:05d}.M{i}P1Q1.host,S={100 + i}", "new" if i % 3 == 0 else "cur",
         "" if i % 3 == 0 else ":2," + "FS"[: i % 3], "FS"[: i % 3] if i % 3 else "", "$Junk" if i % 7 == 0 else "",
         1 + i % 4, 100 + i, 0.0 if i % 2 else 1_600_000_000.5 + i, int(i % 3 == 0))
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, ROWS_PER_INSERT - 1, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 3 * ROWS_PER_INSERT + 17])
def test_multi_row_insert_writes_what_executemany_writes(tmp_path: Path, n: int) -> None:
    idx = UserIndex(tmp_path)
    a = idx.create_folder("A", 1, 1, []).id
    b = idx.create_folder("B", 2, 1, []).id
    rows = _rows(n)
    with idx.transaction():
        idx.insert_message_rows((a, *r) for r in rows)                   # multi-row statements
        idx.insert_messages(b, [(*r, None) for r in rows])               # one step per row
    got_a = idx.db.execute(ROW_SQL, (a,)).fetchall()
    assert got_a == idx.db.execute(ROW_SQL, (b,)).fetchall()
    assert len(got_a) == n
    assert all(r[10] is None and r[11] == "integer" and r[12] == "real" for r in got_a)
    assert [r[:10] for r in got_a] == rows
    idx.close()


def test_multi_row_insert_checks_the_row_width_and_is_atomic(tmp_path: Path) -> None:
    idx = UserIndex(tmp_path)
    fid = idx.create_folder("A", 1, 1, []).id
    with pytest.raises(ValueError):
        idx.insert_message_rows([(fid, 1, "x")])
    rows = [(fid, *r) for r in _rows(ROWS_PER_INSERT + 3)]
    rows[-1] = (fid, 1, *rows[-1][2:])  # a duplicate UID in the rest
    with pytest.raises(sqlite3.IntegrityError):
        with idx.transaction():
            idx.insert_message_rows(rows)
    assert idx.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    idx.close()


def _big_folder(root: Path) -> list[tuple[str, str, bytes, float]]:
    files = []
    for i in range(53):
        if i % 5 == 0:
            files.append(("new", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}", BODY, 1_600_000_000.0))
        else:
            flags = ["", "S", "FS", "RS"][i % 4]
            files.append(("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,{flags}", BODY, 1_600_000_000.0))
    files.append(("cur", "1700099999.M99P1Q1.host:2,S", BODY, 1_600_000_123.0))  # no ,S=: stat'ed, dated
    return files


def test_background_rows_equal_the_rows_of_a_synchronous_first_scan(tmp_path: Path, monkeypatch) -> None:
    files = _big_folder(tmp_path)
    sync_store = fresh_folder(tmp_path / "sync", files)
    sync_mb = sync_store.mailbox(USER, "INBOX")   # no reactor: rows written before answering
    later = defer_bulk_rows(monkeypatch, chunk=7, checkpoint=14)
    bg_store = fresh_folder(tmp_path / "bg", files)
    bg_mb = bg_store.mailbox(USER, "INBOX")
    bg_idx = bg_store._state(USER).index
    assert bg_idx.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    later.pop()()
    assert bg_mb._bulk_rows is None
    sync_rows = sync_store._state(USER).index.db.execute(ROW_SQL, (sync_mb.fid,)).fetchall()
    bg_rows = bg_idx.db.execute(ROW_SQL, (bg_mb.fid,)).fetchall()
    assert len(bg_rows) == len(files) and bg_rows == sync_rows
    assert sum(r[9] for r in bg_rows) == 11 and {r[11] for r in bg_rows} == {"integer"}
    assert [m[:-1] for m in bg_mb.messages()] == [m[:-1] for m in sync_mb.messages()]  # but folder_dir
    sync_store.close()
    bg_store.close()


def test_bulk_writer_pauses_and_checkpoints_without_the_lock(root: Path, reopen, monkeypatch) -> None:
    n = 45
    files = [("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,", BODY, 1_600_000_000.0) for i in range(n)]
    store = fresh_folder(root, files)
    later = defer_bulk_rows(monkeypatch, chunk=10, checkpoint=20)
    mb = store.mailbox(USER, "INBOX")
    idx = store._state(USER).index
    lock = store._state(USER).lock
    events: list[tuple[str, object]] = []
    real_insert = idx.insert_message_rows
    real_txn = mb._txn

    def insert(rows) -> None:
        rows = list(rows)
        autocheckpoint = idx.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        events.append(("insert", (len(rows), autocheckpoint, lock._is_owned())))
        real_insert(rows)

    monkeypatch.setattr(idx, "insert_message_rows", insert)
    monkeypatch.setattr(mb, "_txn", real_txn)
    real_checkpoint = Checkpointer.checkpoint
    monkeypatch.setattr(Checkpointer, "checkpoint",
                        lambda self: (events.append(("checkpoint", lock._is_owned())), real_checkpoint(self))[1])
    monkeypatch.setattr(mailbox_mod.time, "sleep", lambda s: events.append(("sleep", lock._is_owned())))
    later.pop()()
    assert events == [
        ("insert", (10, 0, True)), ("sleep", False),
        ("insert", (10, 0, True)), ("checkpoint", False), ("sleep", False),
        ("insert", (10, 0, True)), ("sleep", False),
        ("insert", (10, 0, True)), ("checkpoint", False), ("sleep", False),
        ("insert", (5, 0, True)), ("checkpoint", False),   # the last rows, with the scan state
    ]
    assert idx.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == index_mod.WAL_AUTOCHECKPOINT
    assert idx.db.execute("SELECT count(*) FROM messages").fetchone()[0] == n
    assert idx.get_folder("INBOX").cur_mtime != 0
    store.close()
    assert [m.uid for m in reopen().mailbox(USER, "INBOX").messages()] == list(range(1, n + 1))


def test_checkpointer_copies_the_wal_into_the_database_without_the_main_connection(tmp_path: Path) -> None:
    idx = UserIndex(tmp_path)
    fid = idx.create_folder("A", 1, 1, []).id
    idx.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(idx.path)
    with idx.no_autocheckpoint():
        assert idx.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for start in range(0, 4000, 500):   # more than the 1000 pages of an autocheckpoint
            with idx.transaction():
                idx.insert_message_rows((fid, uid, f"m{uid:08d}" + "x" * 200, "cur", ":2,", "", "", 1, 10, 0.0, 0)
                                        for uid in range(start + 1, start + 501))
    assert idx.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == index_mod.WAL_AUTOCHECKPOINT
    assert os.path.getsize(idx.path) == size   # all still in the WAL
    cp = idx.checkpointer()
    cp.checkpoint()
    cp.close()
    assert os.path.getsize(idx.path) > size + 500_000
    assert idx.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4000
    idx.close()


def test_checkpointer_of_a_vanished_index_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gone" / index_mod.INDEX_FILE
    cp = Checkpointer(str(path))
    cp.checkpoint()   # logged, not raised
    cp.close()
    assert not path.exists()
