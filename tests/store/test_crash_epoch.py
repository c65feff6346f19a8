"""Index commits do not fsync (synchronous=NORMAL); the crash epoch keeps UIDs from ever being reused.

A power cut can roll the index back to an older state while the fsynced Maildir files stay.  After such an
unclean stop every folder's UIDNEXT moves on by CRASH_UID_GAP before any UID is handed out, so a message
whose row was lost gets a new UID above every UID a client may have seen (RFC 3501 §2.3.1.1).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from mailsuite.store import Store
from mailsuite.store.index import CRASH_UID_GAP, INDEX_FILE
from mailsuite.store.store import RUN_FILE

from .store_helpers import USER, inline_runner, make_message, result_of


def _started(root: Path) -> Store:
    s = Store(root, runner=inline_runner)
    s.start_run()
    s.create_user(USER)
    return s


def _deliver(store: Store, *ids: object) -> None:
    for i in ids:
        result_of(store.deliver(USER, make_message(i)))


def _run_state(root: Path) -> dict:
    return json.loads((root / RUN_FILE).read_text())


def test_clean_stop_keeps_epoch_and_uids(root: Path) -> None:
    s = _started(root)
    first = _run_state(root)
    assert first["running"] is True and first["epoch"] == s.epoch > 0
    _deliver(s, 1, 2)
    assert s.mailbox(USER, "INBOX").uidnext == 3
    s.close()
    assert _run_state(root) == {"epoch": first["epoch"], "running": False}
    s2 = _started(root)
    try:
        assert s2.epoch == first["epoch"]
        mb = s2.mailbox(USER, "INBOX")
        assert [m.uid for m in mb.messages()] == [1, 2] and mb.uidnext == 3
    finally:
        s2.close()


def test_unclean_stop_moves_uidnext_once(root: Path) -> None:
    s = _started(root)
    _deliver(s, 1, 2)
    hms = s.mailbox(USER, "INBOX").highestmodseq
    # no close(): the process died (the connection is simply abandoned)
    s2 = _started(root)
    try:
        assert s2.epoch > s.epoch
        mb = s2.mailbox(USER, "INBOX")
        assert [m.uid for m in mb.messages()] == [1, 2], "existing UIDs stay"
        assert mb.uidnext == 3 + CRASH_UID_GAP
        assert mb.highestmodseq >= hms + CRASH_UID_GAP
        _deliver(s2, 3)
        assert mb.messages()[-1].uid == 3 + CRASH_UID_GAP
    finally:
        s2.close()
    s3 = _started(root)   # after the clean stop: no second jump
    try:
        assert s3.epoch == s2.epoch
        assert s3.mailbox(USER, "INBOX").uidnext == 4 + CRASH_UID_GAP
    finally:
        s3.close()


def test_lost_commits_never_reuse_a_uid(root: Path) -> None:
    """Roll the index back behind the files (what a power cut may do) and check the UIDs."""
    s = _started(root)
    _deliver(s, 1)
    udir = s.user_dir(USER)
    s.mailbox(USER, "INBOX")
    s.close()
    saved = root.parent / "index-copy"
    shutil.copy(udir / INDEX_FILE, saved)                 # checkpointed by close: the whole index
    s = _started(root)
    _deliver(s, 2, 3)                                     # UIDs 2 and 3 handed out, then the power goes
    seen = {m.name: m.uid for m in s.mailbox(USER, "INBOX").messages()}
    assert sorted(seen.values()) == [1, 2, 3]
    epoch = s.epoch
    s.close()
    for ext in ("-wal", "-shm"):
        assert not os.path.exists(str(udir / INDEX_FILE) + ext)
    shutil.copy(saved, udir / INDEX_FILE)                 # the commits of UIDs 2 and 3 are lost ...
    (root / RUN_FILE).write_text(json.dumps({"epoch": epoch, "running": True}))   # ... in a power cut
    with sqlite3.connect(udir / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    s2 = _started(root)
    try:
        mb = s2.mailbox(USER, "INBOX")
        now = {m.name: m.uid for m in mb.messages()}
        assert set(now) == set(seen), "every file is still there"
        for name, uid in now.items():
            if seen[name] != 1:
                assert uid > 3, "a lost UID is never handed out again, to any message"
        assert now[min(seen, key=seen.get)] == 1
        assert len(set(now.values())) == 3
    finally:
        s2.close()


def test_unreadable_run_file_counts_as_unclean(root: Path) -> None:
    s = _started(root)
    _deliver(s, 1)
    assert s.mailbox(USER, "INBOX").uidnext == 2
    s.close()
    (root / RUN_FILE).write_text("{not json")
    s2 = _started(root)
    try:
        assert s2.epoch > s.epoch
        assert s2.mailbox(USER, "INBOX").uidnext == 2 + CRASH_UID_GAP
    finally:
        s2.close()


def test_untracked_store_leaves_uidnext(root: Path) -> None:
    """Tools that open the store without start_run (epoch 0) never move UIDs."""
    s = Store(root, runner=inline_runner)
    s.create_user(USER)
    _deliver(s, 1)
    s2 = Store(root, runner=inline_runner)
    try:
        assert s2.mailbox(USER, "INBOX").uidnext == 2
        assert not (root / RUN_FILE).exists()
    finally:
        s2.close()
        s.close()


def _rows(udir: Path) -> int:
    with sqlite3.connect(udir / INDEX_FILE) as db:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_writes_for_a_closed_index_are_put_off_then_applied(root: Path) -> None:
    """A delivery or \\Recent claim for a user whose index the cache closed does not reopen it (no
    checkpoint fsyncs per delivery); the next use, or the clean stop, applies them in order."""
    other = "bob@example.org"
    s = Store(root, runner=inline_runner, max_open_indexes=1)
    s.start_run()
    s.create_user(USER)
    s.create_user(other)
    mb = s.mailbox(USER, "INBOX")
    s.mailbox(other, "INBOX")                          # evicts alice's index
    idx = s._state(USER)._index
    assert idx is not None and not idx.is_open
    _deliver(s, 1, 2)
    assert [m.uid for m in mb.messages()] == [1, 2]    # in memory at once
    assert idx.deferred == 1 and not idx.is_open      # one compact record per folder
    assert mb.claim_recent() == {1, 2}
    assert idx.deferred == 1
    udir = s.user_dir(USER)
    assert _rows(udir) == 0
    s.close()                                           # applies them
    assert _rows(udir) == 2
    s2 = _started(root)
    try:
        mb2 = s2.mailbox(USER, "INBOX")
        assert [(m.uid, m.recent) for m in mb2.messages()] == [(1, False), (2, False)]
        assert mb2.uidnext == 3
    finally:
        s2.close()


def test_put_off_writes_go_first_when_the_index_is_used(root: Path) -> None:
    other = "bob@example.org"
    s = Store(root, runner=inline_runner, max_open_indexes=1)
    try:
        s.create_user(USER)
        s.create_user(other)
        mb = s.mailbox(USER, "INBOX")
        s.mailbox(other, "INBOX")
        _deliver(s, 1)
        idx = s._state(USER).index
        assert idx.deferred == 1
        mb.set_flags([1], ["\\Seen"])                   # uses the index: the delivery row is written first
        assert idx.deferred == 0
        assert idx.db.execute("SELECT uid, flags FROM messages").fetchall() == [(1, "S")]
    finally:
        s.close()


def test_apply_deferred_writes_them_and_closes_the_index_again(root: Path) -> None:
    other = "bob@example.org"
    s = Store(root, runner=inline_runner, max_open_indexes=1)
    try:
        s.create_user(USER)
        s.create_user(other)
        mb = s.mailbox(USER, "INBOX")
        s.mailbox(other, "INBOX")
        _deliver(s, 1, 2)
        idx = s._state(USER)._index
        assert s.deferred_writes() == 1 and not idx.is_open
        assert result_of(s.apply_deferred_in_thread()) == 1
        assert s.deferred_writes() == 0 and not idx.is_open   # written, and closed again
        assert _rows(s.user_dir(USER)) == 2
        assert [m.uid for m in mb.messages()] == [1, 2]
        assert s.apply_deferred() == 0
    finally:
        s.close()
