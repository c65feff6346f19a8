"""The first open of a folder the index does not know (bench 6a) and warm SELECT snapshots (6b):
sizes from ``,S=`` names, INTERNALDATE learnt on first use, index rows of a big scan written after
answering, \\Recent kept as a set, the shared SELECT view."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailsuite.store import Store
from mailsuite.store import mailbox as mailbox_mod

from .store_helpers import USER, defer_bulk_rows, fresh_folder

BODY = b"From: a@example.com\r\nSubject: s\r\n\r\nhello\r\n"


def _user_dir(store: Store) -> Path:
    return store.mailbox(USER, "INBOX").dir


def test_first_open_takes_sizes_from_names_and_learns_dates_on_use(root: Path, reopen) -> None:
    files = [("cur", f"17000000{i:02d}.M{i}P1Q1.host,S={len(BODY)}:2,S", BODY, 1_600_000_000.0 + i)
             for i in range(5)]
    files.append(("new", "1700000099.M9P1Q1.host,S=%d" % len(BODY), BODY, 1_600_000_099.0))
    store = fresh_folder(root, files)
    calls: list[str] = []
    real_stat = os.stat
    try:
        os.stat = lambda p, *a, **k: (calls.append(str(p)), real_stat(p, *a, **k))[1]  # type: ignore[assignment]
        mb = store.mailbox(USER, "INBOX")
    finally:
        os.stat = real_stat  # type: ignore[assignment]
    assert not [c for c in calls if "M" in os.path.basename(c)]  # no stat of a message file
    msgs = mb.messages()
    assert [m.name.split(".")[0] for m in msgs] == [f"17000000{i:02d}" for i in range(5)] + ["1700000099"]
    assert all(m.size == len(BODY) for m in msgs)
    assert all(m.internaldate == 0 for m in msgs)  # not known yet
    assert [m.recent for m in msgs] == [False] * 5 + [True]
    assert mb.internaldate(3) == 1_600_000_002.0
    assert mb.message(3).internaldate == 1_600_000_002.0
    with mb.open_message(1) as f:  # opening a file learns its date on the way
        assert f.read() == BODY
    assert mb.message(1).internaldate == 1_600_000_000.0
    assert mb.read_range(4, 0, 3) == BODY[:3] and mb.message(4).internaldate == 1_600_000_003.0  # learnt too
    store.close()  # writes what was learnt
    store2 = reopen()
    mb2 = store2.mailbox(USER, "INBOX")
    assert [m.uid for m in mb2.messages()] == [1, 2, 3, 4, 5, 6]
    assert mb2.message(3).internaldate == 1_600_000_002.0 and mb2.message(1).internaldate == 1_600_000_000.0
    assert mb2.message(2).internaldate == 0 and mb2.internaldate(2) == 1_600_000_001.0


def test_first_open_without_or_with_a_wrong_size_in_the_name(root: Path) -> None:
    files = [
        ("cur", "1700000001.M1P1Q1.host:2,", BODY, 1_600_000_001.0),                   # no ,S=
        ("cur", "1700000002.M2P1Q1.host,S=12x:2,", BODY, 1_600_000_002.0),             # not a number
        ("cur", "1700000003.M3P1Q1.host,S=9999,W=10010:2,", BODY, 1_600_000_003.0),    # wrong
    ]
    store = fresh_folder(root, files)
    mb = store.mailbox(USER, "INBOX")
    m1, m2, m3 = mb.messages()
    assert (m1.size, m1.internaldate) == (len(BODY), 1_600_000_001.0)  # stat'ed at once
    assert (m2.size, m2.internaldate) == (len(BODY), 1_600_000_002.0)
    assert (m3.size, m3.internaldate) == (9999, 0)  # trusted, as Dovecot does ...
    assert mb.total_size() == 2 * len(BODY) + 9999
    view, _ = mb.select_view(claim=False)
    assert mb.internaldate(3) == 1_600_000_003.0  # ... until the file is looked at
    assert mb.message(3).size == len(BODY) and mb.total_size() == 3 * len(BODY)
    view2, _ = mb.select_view(claim=False)
    assert view2 is not view and view2.infos[3].size == len(BODY)  # a new SELECT sees the true size
    store.close()


def test_big_first_scan_writes_its_rows_after_answering(root: Path, reopen, monkeypatch) -> None:
    n = 25
    files = [("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,", BODY, 1_600_000_000.0) for i in range(n)]
    store = fresh_folder(root, files)
    later = defer_bulk_rows(monkeypatch, chunk=10)
    mb = store.mailbox(USER, "INBOX")
    assert len(mb) == n and mb.uidnext == n + 1
    idx = store._state(USER).index
    count = lambda: idx.db.execute("SELECT count(*) FROM messages WHERE folder = ?", (mb.fid,)).fetchone()[0]  # noqa: E731
    assert count() == 0
    # UIDNEXT is in the index already: rows lost now (a crash) could never give UIDs 1..n again
    assert idx.get_folder("INBOX").uidnext == n + 1
    assert idx.get_folder("INBOX").cur_mtime == 0  # the scan state goes with the last rows
    # the writer (in the store's thread pool) goes chunk by chunk, giving the lock back in between
    chunks: list[int] = []
    real_insert = idx.insert_message_rows

    def insert(rows) -> None:
        rows = list(rows)
        chunks.append(len(rows))
        real_insert(rows)

    monkeypatch.setattr(idx, "insert_message_rows", insert)
    later.pop()()
    assert chunks == [10, 10, 5] and count() == n and mb._bulk_rows is None
    assert idx.get_folder("INBOX").cur_mtime != 0
    store.close()
    mb2 = reopen().mailbox(USER, "INBOX")
    assert [m.uid for m in mb2.messages()] == list(range(1, n + 1))


def test_a_change_before_the_rows_are_written_writes_them_first(root: Path, reopen, monkeypatch) -> None:
    n = 25
    files = [("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,", BODY, 1_600_000_000.0) for i in range(n)]
    store = fresh_folder(root, files)
    later = defer_bulk_rows(monkeypatch)
    mb = store.mailbox(USER, "INBOX")
    idx = store._state(USER).index
    count = lambda: idx.db.execute("SELECT count(*) FROM messages WHERE folder = ?", (mb.fid,)).fetchone()[0]  # noqa: E731
    assert count() == 0
    changed, _ = mb.set_flags([25], ["\\Flagged"])  # in its transaction, after all the rows
    assert changed == [25] and count() == n and mb._bulk_rows is None
    assert mb.changed_since(1) == mb.messages()
    later.pop()()  # nothing left: no-op
    assert count() == n
    store.close()
    mb2 = reopen().mailbox(USER, "INBOX")
    assert [m.uid for m in mb2.messages()] == list(range(1, n + 1))
    assert mb2.message(25).flags == {"\\Flagged"} and mb2.message(24).flags == set()


def test_rows_not_written_before_a_crash_give_new_uids(root: Path, reopen, monkeypatch) -> None:
    n = 12
    files = [("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,", BODY, 1_600_000_000.0) for i in range(n)]
    store = fresh_folder(root, files)
    defer_bulk_rows(monkeypatch, later=lambda fn: None)  # the writer never runs: "crash"
    mb = store.mailbox(USER, "INBOX")
    assert mb.uids() == list(range(1, n + 1))
    uidvalidity = mb.uidvalidity
    monkeypatch.setattr(mailbox_mod, "_reactor_running", lambda: False)
    mb2 = reopen().mailbox(USER, "INBOX")  # another process on the same files; the first never wrote
    assert mb2.uidvalidity == uidvalidity
    assert min(mb2.uids()) > n and len(mb2) == n  # no UID of the first process is given to a message again


def test_recent_is_claimed_once_and_expunged_recent_is_forgotten(store: Store) -> None:
    mb = store.mailbox(USER, "INBOX")
    for i in range(3):
        mb.append(BODY + b"%d\r\n" % i)
    assert mb.recent_count() == 3 and mb.status()["RECENT"] == 3
    view, recent = mb.select_view(claim=False)  # EXAMINE looks only
    assert recent == {1, 2, 3} and mb.recent_count() == 3
    mb.set_flags([2], ["\\Deleted"])
    assert mb.expunge() == [2]
    assert mb.claim_recent() == {1, 3}
    assert mb.claim_recent() == set() and mb.recent_count() == 0
    mb.append(BODY)
    _view, recent = mb.select_view(claim=True)
    assert recent == {4}
    assert mb.select_view(claim=True)[1] == set()


def test_select_view_is_shared_until_something_changes(store: Store) -> None:
    mb = store.mailbox(USER, "INBOX")
    for i in range(3):
        mb.append(BODY, ["\\Seen"] if i == 0 else [], ["$Work"] if i == 2 else [])
    v1, _ = mb.select_view(claim=True)
    v2, _ = mb.select_view(claim=True)
    assert v1 is v2 and v1.uids == [1, 2, 3] and v1.first_unseen == 2 and v1.keywords == {"$Work"}
    infos_before = dict(v1.infos)
    mb.set_flags([2], ["\\Seen"])
    v3, _ = mb.select_view(claim=True)
    assert v3 is not v1 and v3.first_unseen == 3
    assert v1.infos == infos_before  # the old snapshot was not changed under its sessions


def test_header_memo_is_bounded_and_forgets_expunged(store: Store, monkeypatch) -> None:
    # a pool of its own: the process-wide one holds other tests' memos, which would be evicted first
    monkeypatch.setattr(mailbox_mod, "_MEMOS", mailbox_mod._MemoPool(mailbox_mod._MEMO_BUDGET))
    mb = store.mailbox(USER, "INBOX")
    for _ in range(3):
        mb.append(BODY)
    memo = mb.header_memo(("k",))
    assert mb.header_memo(("k",)) is memo
    memo.put(1, b"x" * 10)
    memo.put(2, b"y" * 10)
    mb.set_flags([1], ["\\Deleted"])
    mb.expunge()
    assert memo.get(1) is None and memo.get(2) == b"y" * 10
    pool = mailbox_mod._MEMOS
    # one budget for the whole process: a memo used more recently pushes out the others
    monkeypatch.setattr(pool, "budget", pool.used + 100)
    other = store.mailbox(USER, "Trash").header_memo(("k",))
    other.put(5, b"z" * 50)
    assert other.get(5) == b"z" * 50 and memo.get(2) is None and memo.size == 0
    other.put(6, b"w" * 500)  # more than the whole budget: not kept
    assert other.get(6) is None and pool.used <= pool.budget


@pytest.mark.parametrize("name", ["1700000001.M1P1Q1.host,S=44", "1700000001.M1P1Q1.host,S=44,W=46"])
def test_name_size(name: str) -> None:
    assert mailbox_mod._name_size(name) == 44
    assert mailbox_mod._name_size("1700000001.M1P1Q1.host") is None
    assert mailbox_mod._name_size("1700000001.M1P1Q1.host,S=") is None
    assert mailbox_mod._name_size("1700000001.M1P1Q1.host,S=٣") is None  # a non-ASCII digit
