"""The SQLite index: stable UIDs, rebuilds, outside Maildir changes, Dovecot import, cheap reopen."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsuite.store import Store
from mailsuite.store.index import INDEX_FILE

from .store_helpers import USER, make_message, result_of


def _deliver(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        result_of(store.deliver(USER, make_message(i)))


def _age_dirs(folder: Path, seconds: float = 10) -> None:
    """Make new/ and cur/ look untouched for a while, so a scan can trust their mtimes."""
    past = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(folder / sub, (past, past))


def _drop_index(udir: Path) -> None:
    for ext in ("", "-wal", "-shm"):
        try:
            os.unlink(str(udir / INDEX_FILE) + ext)
        except FileNotFoundError:
            pass


def test_uids_stable_across_restart(store: Store, reopen) -> None:
    _deliver(store, 5)
    mb = store.mailbox(USER, "INBOX")
    mb.set_flags([2], ["\\Seen"], ["work"])
    mb.set_flags([3], ["\\Deleted"])
    mb.expunge()
    before = {m.name: (m.uid, m.flags, m.keywords, m.modseq) for m in mb.messages()}
    state = (mb.uidvalidity, mb.uidnext, mb.highestmodseq)
    store.close()
    s2 = reopen()
    mb2 = s2.mailbox(USER, "INBOX")
    assert {m.name: (m.uid, m.flags, m.keywords, m.modseq) for m in mb2.messages()} == before
    assert (mb2.uidvalidity, mb2.uidnext, mb2.highestmodseq) == state
    result_of(s2.deliver(USER, make_message(99)))
    assert mb2.messages()[-1].uid == 6  # expunged UID 3 is never reused; 6 follows uidnext


def test_rescan_of_same_files_keeps_uids(store: Store) -> None:
    _deliver(store, 4)
    mb = store.mailbox(USER, "INBOX")
    before = [(m.uid, m.name) for m in mb.messages()]
    mb._rescan({"new", "cur"})  # a full rescan (as after an mtime change) finds the same files
    assert [(m.uid, m.name) for m in mb.messages()] == before


def test_index_deleted_rebuilt_with_new_uidvalidity(store: Store, reopen) -> None:
    _deliver(store, 3)
    mb = store.mailbox(USER, "INBOX")
    old_validity = mb.uidvalidity
    names = [m.name for m in mb.messages()]
    store.close()
    udir = store.user_dir(USER)
    _drop_index(udir)
    s2 = reopen()
    mb2 = s2.mailbox(USER, "INBOX")
    assert mb2.uidvalidity != old_validity and mb2.uidvalidity > old_validity
    assert sorted(m.name for m in mb2.messages()) == sorted(names)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_schema"])
def test_corrupt_index_rebuilt_without_crash(store: Store, reopen, damage: str) -> None:
    _deliver(store, 3)
    sent = store.mailbox(USER, "Sent")
    sent.append(make_message("s"), flags=["\\Seen"])
    old = (store.mailbox(USER, "INBOX").uidvalidity, sent.uidvalidity)
    store.close()
    path = store.user_dir(USER) / INDEX_FILE
    for ext in ("-wal", "-shm"):
        Path(str(path) + ext).unlink(missing_ok=True)
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 500)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] + b"\xff" * 100)
    else:
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version=999")
        db.commit()
        db.close()
    s2 = reopen()
    inbox = s2.mailbox(USER, "INBOX")
    sent2 = s2.mailbox(USER, "Sent")
    assert len(inbox) == 3 and len(sent2) == 1
    assert "\\Seen" in sent2.messages()[0].flags  # flags come back from the file names
    assert inbox.uidvalidity not in old and sent2.uidvalidity not in old
    assert (path.parent / (INDEX_FILE + ".corrupt")).exists() or damage == "wrong_schema"


def test_uidvalidity_unique_per_folder(store: Store) -> None:
    values = {store.mailbox(USER, n).uidvalidity for n in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive")}
    assert len(values) == 6


def test_outside_flag_rename_seen_by_sync(store: Store) -> None:
    _deliver(store, 2)
    mb = store.mailbox(USER, "INBOX")
    mb.claim_recent()  # moves new/ -> cur/ with ":2,"
    m = mb.message(1)
    assert m.subdir == "cur" and m.filename.endswith(":2,")
    modseq = mb.highestmodseq
    os.rename(m.path, m.path.with_name(m.name + ":2,FS"))  # mv cur/x:2, cur/x:2,FS
    assert mb.sync() is True
    m2 = mb.message(1)
    assert m2.flags == {"\\Seen", "\\Flagged"} and m2.uid == 1
    assert m2.modseq > modseq and mb.highestmodseq == m2.modseq
    assert mb.sync() is False


def test_file_moved_new_to_cur_keeps_uid(store: Store) -> None:
    _deliver(store, 3)
    mb = store.mailbox(USER, "INBOX")
    m = mb.message(2)
    assert m.subdir == "new"
    os.rename(m.path, store.user_dir(USER) / "cur" / (m.name + ":2,S"))
    mb.sync()
    m2 = mb.message(2)
    assert (m2.uid, m2.name, m2.subdir) == (2, m.name, "cur")
    assert m2.flags == {"\\Seen"}
    assert [x.uid for x in mb.messages()] == [1, 2, 3]


def test_outside_deletion_and_new_file_seen(store: Store) -> None:
    _deliver(store, 3)
    mb = store.mailbox(USER, "INBOX")
    events: list[int] = []
    store.add_listener(USER, "INBOX", lambda: events.append(1))
    os.unlink(mb.message(2).path)
    store.deliver_sync(USER, make_message("outside"))  # e.g. another delivery agent
    assert mb.sync() is True
    assert [m.uid for m in mb.messages()] == [1, 3, 4]
    assert mb.message(4).recent
    assert events == [1]


def test_vanished_file_found_again_on_read(store: Store) -> None:
    _deliver(store, 1)
    mb = store.mailbox(USER, "INBOX")
    m = mb.message(1)
    os.rename(m.path, store.user_dir(USER) / "cur" / (m.name + ":2,S"))
    # No sync by the caller: reading notices the rename and rescans.
    assert mb.read_message(1) == make_message(0)
    assert mb.message(1).flags == {"\\Seen"}


def test_warm_open_does_not_list_or_stat_message_files(store: Store, reopen, monkeypatch) -> None:
    _deliver(store, 50)
    udir = store.user_dir(USER)
    _age_dirs(udir)
    mb = store.mailbox(USER, "INBOX")
    mb.sync()  # records the (old) mtimes as settled
    store.close()

    listed: list[str] = []
    stated: list[str] = []
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path="."):
        listed.append(str(path))
        return real_scandir(path)

    def stat(path, *a, **kw):
        stated.append(str(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    s2 = reopen()
    mb2 = s2.mailbox(USER, "INBOX")
    assert len(mb2) == 50
    mb2.sync()
    assert not [p for p in listed if p.endswith(("/new", "/cur"))]
    assert not [p for p in stated if "/new/" in p or "/cur/" in p]
    # A change is still noticed: the mtime moves.
    monkeypatch.setattr(os, "scandir", real_scandir)
    monkeypatch.setattr(os, "stat", real_stat)
    store.deliver_sync(USER, make_message(51))
    mb2.sync()
    assert len(mb2) == 51


def _dovecot_folder(folder: Path) -> dict[str, str]:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    files = {
        "a": "1600000000.M1P1.old,S=40:2,Sa",
        "b": "1600000001.M2P1.old,S=41:2,RSb",
        "c": "1600000002.M3P1.old,S=42:2,",
        "d": "1600000003.M4P1.old,S=43",
    }
    for key, fn in files.items():
        sub = "new" if key == "d" else "cur"
        (folder / sub / fn).write_bytes(make_message(key))
    (folder / "dovecot-uidlist").write_text(
        "3 V1234567 N20 G0123456789abcdef0123456789abcdef\n"
        "5 :1600000000.M1P1.old,S=40\n"
        "9 W44 S43 :1600000001.M2P1.old,S=41\n"
        "12 :1600000002.M3P1.old,S=42\n"
    )
    (folder / "dovecot-keywords").write_text("0 $Junk\n1 work\n")
    return files


def test_dovecot_uidlist_and_keywords_imported(store: Store, reopen) -> None:
    udir = store.user_dir(USER)
    _dovecot_folder(udir / ".Imported")
    mb = store.mailbox(USER, "Imported")
    assert mb.uidvalidity == 1234567
    by_uid = {m.uid: m for m in mb.messages()}
    assert sorted(by_uid) == [5, 9, 12, 20]  # the unlisted file gets N
    assert by_uid[5].flags == {"\\Seen"} and by_uid[5].keywords == {"$Junk"}
    assert by_uid[9].flags == {"\\Seen", "\\Answered"} and by_uid[9].keywords == {"work"}
    assert by_uid[12].flags == frozenset() and by_uid[12].keywords == frozenset()
    assert mb.uidnext == 21
    # Imported once: the list is renamed so a later index loss cannot resurrect old UIDs.
    assert not (udir / ".Imported" / "dovecot-uidlist").exists()
    assert (udir / ".Imported" / "dovecot-uidlist.mailsuite-imported").exists()
    # New keywords take the next free letter and are written to dovecot-keywords.
    mb.set_flags([12], keywords=["later"])
    assert mb.message(12).filename.endswith(":2,c")
    assert "2 later" in (udir / ".Imported" / "dovecot-keywords").read_text()
    # After an index loss the same letters map to the same keywords (new UIDVALIDITY though).
    store.close()
    _drop_index(udir)
    mb2 = reopen().mailbox(USER, "Imported")
    assert mb2.uidvalidity != 1234567
    assert {m.keywords for m in mb2.messages()} == {frozenset({"$Junk"}), frozenset({"work"}),
                                                     frozenset({"later"}), frozenset()}


def test_dovecot_uidlist_v1_format(store: Store) -> None:
    udir = store.user_dir(USER)
    files = _dovecot_folder(udir / ".Old")
    (udir / ".Old" / "dovecot-uidlist").write_text(
        f"1 777 10\n3 {files['a'].split(':')[0]}\n4 {files['b'].split(':')[0]}\n"
    )
    mb = store.mailbox(USER, "Old")
    assert mb.uidvalidity == 777
    assert [m.uid for m in mb.messages()] == [3, 4, 10, 11]


def test_export_then_reimport_keeps_uids(store: Store, reopen) -> None:
    _deliver(store, 4)
    mb = store.mailbox(USER, "INBOX")
    mb.set_flags([4], ["\\Deleted"])
    mb.expunge()
    before = {m.name: m.uid for m in mb.messages()}
    validity = mb.uidvalidity
    assert "INBOX" in store.export_dovecot(USER)
    store.close()
    _drop_index(store.user_dir(USER))
    mb2 = reopen().mailbox(USER, "INBOX")
    assert mb2.uidvalidity == validity
    assert {m.name: m.uid for m in mb2.messages()} == before
    assert mb2.uidnext == 5


def test_many_keywords_beyond_26_letters_persist(store: Store, reopen) -> None:
    _deliver(store, 1)
    mb = store.mailbox(USER, "INBOX")
    kws = [f"kw{i}" for i in range(30)]
    mb.set_flags([1], keywords=kws)
    assert mb.message(1).keywords == set(kws)
    letters = mb.message(1).filename.split(":2,")[1]
    assert len(letters) == 26
    store.close()
    mb2 = reopen().mailbox(USER, "INBOX")
    assert mb2.message(1).keywords == set(kws)
    mb2.set_flags([1], keywords=["kw29", "kw0"], mode="-")
    assert mb2.message(1).keywords == set(kws) - {"kw29", "kw0"}


@pytest.mark.parametrize("eager_limit", [0, 10_000])
def test_change_in_same_timestamp_tick_is_found(store: Store, monkeypatch, eager_limit: int) -> None:
    """A change that left the directory mtime unchanged (same clock tick as the last scan) is found
    by the re-check of an unsettled scan: at once for small folders, later for big ones."""
    import mailsuite.store.mailbox as mailbox_mod

    monkeypatch.setattr(mailbox_mod, "_EAGER_RESCAN_LIMIT", eager_limit)
    _deliver(store, 2)
    mb = store.mailbox(USER, "INBOX")
    new_dir = store.user_dir(USER) / "new"
    old = time.time_ns() - 10 * 1_000_000_000 + 123
    os.utime(new_dir, ns=(old, old))
    # The index believes it listed new/ 1 µs after that mtime: too close to trust.
    mb._state["new"] = (old, old + 1000)
    store.deliver_sync(USER, make_message("same tick"))
    os.utime(new_dir, ns=(old, old))  # as if written in the same tick
    assert mb.sync() is True
    assert len(mb) == 3
    # Now the scan is settled (the mtime is old): nothing more to do, no listing.
    assert mb.sync() is False


def test_header_cache_persisted_on_close(store: Store, reopen) -> None:
    _deliver(store, 3)
    store.close()
    s2 = reopen()
    mb = s2.mailbox(USER, "INBOX")
    db = mb._index.db
    db.execute("UPDATE messages SET header = NULL")  # as for messages found by a scan
    assert mb.header_bytes(2) == make_message(1).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    s2.close()
    check = sqlite3.connect(store.user_dir(USER) / INDEX_FILE)
    rows = dict(check.execute("SELECT uid, header FROM messages"))
    check.close()
    assert rows[2] is not None and rows[1] is None


_OPS = st.lists(
    st.tuples(st.sampled_from(["add", "delete", "flags", "to_cur", "sync", "store_flags"]), st.integers(0, 50),
              st.sampled_from(["", "S", "FS", "RT", "DS"])),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_sync_property_outside_changes(ops) -> None:
    """Any mix of outside changes and our own: after sync() the index is exactly the directory, and a
    file that survives keeps its UID; new files get UIDs above every UID seen before."""
    import tempfile

    from mailsuite.store.maildir import LETTER_FLAGS

    from .store_helpers import inline_runner

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "mail", runner=inline_runner)
        try:
            store.create_user(USER)
            udir = store.user_dir(USER)
            mb = store.mailbox(USER, "INBOX")
            uid_of: dict[str, int] = {}
            max_uid = 0
            for op, n, letters in ops:
                files = sorted((sub, f) for sub in ("new", "cur") for f in os.listdir(udir / sub))
                pick = files[n % len(files)] if files else None
                if op == "add":
                    store.deliver_sync(USER, make_message(n))
                elif op == "delete" and pick:
                    os.unlink(udir / pick[0] / pick[1])
                elif op in ("flags", "to_cur") and pick:
                    base = pick[1].split(":", 1)[0]
                    os.rename(udir / pick[0] / pick[1], udir / "cur" / f"{base}:2,{letters}")
                elif op == "store_flags" and len(mb):
                    uid = mb.uids()[n % len(mb)]
                    mb.set_flags([uid], [LETTER_FLAGS[c] for c in letters], mode="=")
                else:
                    mb.sync()
                mb.sync()
                on_disk = {f for sub in ("new", "cur") for f in os.listdir(udir / sub)}
                msgs = mb.messages()
                assert {m.filename for m in msgs} == on_disk
                seen_max = max_uid
                for m in msgs:
                    if m.name in uid_of:
                        assert uid_of[m.name] == m.uid  # survivors keep their UID
                    else:
                        assert m.uid > seen_max  # UIDs are never reused
                        uid_of[m.name] = m.uid
                    max_uid = max(max_uid, m.uid)
                    letters_now = m.filename.split(":2,")[1] if ":2," in m.filename else ""
                    assert m.flags == {LETTER_FLAGS[c] for c in letters_now if c in LETTER_FLAGS}
                assert [m.uid for m in msgs] == sorted(m.uid for m in msgs)
                assert mb.uidnext > max_uid
        finally:
            store.close()
