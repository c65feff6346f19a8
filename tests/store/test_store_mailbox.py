"""Mailbox operations (flags, modseq, expunge, copy/move, append, \\Recent) and folder management."""

from __future__ import annotations

import os
import time

import pytest

from mailsuite.store import (
    InvalidFlag,
    MailboxExists,
    MailboxNotFound,
    MessageNotFound,
    Store,
    StoreError,
)

from .store_helpers import USER, make_message, result_of


@pytest.fixture
def inbox(store: Store):
    for i in range(5):
        result_of(store.deliver(USER, make_message(i)))
    return store.mailbox(USER, "INBOX")


def test_set_flags_modes_and_modseq(inbox) -> None:
    start = inbox.highestmodseq
    changed, failed = inbox.set_flags([1, 2, 99], ["\\Seen", "\\flagged"], mode="+")
    assert (changed, failed) == ([1, 2], [])
    m1 = inbox.message(1)
    assert m1.flags == {"\\Seen", "\\Flagged"}
    assert m1.modseq == inbox.highestmodseq > start
    assert m1.subdir == "cur" and m1.filename == m1.name + ":2,FS"
    assert m1.path.exists()
    # No change -> no new modseq (RFC 7162 §3.1.3).
    hm = inbox.highestmodseq
    assert inbox.set_flags([1], ["\\Seen"], mode="+") == ([], [])
    assert inbox.highestmodseq == hm
    inbox.set_flags([1], ["\\Seen"], mode="-")
    assert inbox.message(1).flags == {"\\Flagged"} and inbox.highestmodseq == hm + 1
    inbox.set_flags([1], ["\\Answered", "\\Draft", "\\Deleted", "\\Recent"], ["$Label1"], mode="=")
    m = inbox.message(1)
    assert m.flags == {"\\Answered", "\\Draft", "\\Deleted"} and m.keywords == {"$Label1"}
    assert m.filename.endswith(":2,DRTa")
    with pytest.raises(InvalidFlag):
        inbox.set_flags([1], ["\\Bogus"])
    with pytest.raises(InvalidFlag):
        inbox.set_flags([1], keywords=["two words"])


def test_set_flags_unchangedsince(inbox) -> None:
    inbox.set_flags([2], ["\\Seen"])
    m2 = inbox.message(2).modseq
    m3 = inbox.message(3).modseq
    assert m3 < m2
    changed, failed = inbox.set_flags([2, 3], ["\\Flagged"], unchangedsince=m3)
    assert (changed, failed) == ([3], [2])
    assert "\\Flagged" not in inbox.message(2).flags


def test_changed_since(inbox) -> None:
    hm = inbox.highestmodseq
    inbox.set_flags([4, 2], ["\\Seen"])
    assert [m.uid for m in inbox.changed_since(hm)] == [2, 4]


def test_expunge(inbox) -> None:
    inbox.set_flags([1, 3, 4], ["\\Deleted"])
    paths = {u: inbox.message(u).path for u in (1, 3, 4)}
    hm = inbox.highestmodseq
    assert inbox.expunge([3, 4, 5]) == [3, 4]  # UID EXPUNGE: only the listed ones
    assert [m.uid for m in inbox.messages()] == [1, 2, 5]
    assert not paths[3].exists() and paths[1].exists()
    assert inbox.highestmodseq > hm
    assert inbox.expunge() == [1]
    assert [m.uid for m in inbox.messages()] == [2, 5]
    with pytest.raises(MessageNotFound):
        inbox.read_message(1)


def test_copy_keeps_flags_date_and_links(store: Store, inbox) -> None:
    inbox.set_flags([2], ["\\Seen"], ["work"])
    src = inbox.message(2)
    trash = store.mailbox(USER, "Trash")
    calls: list[int] = []
    store.add_listener(USER, "Trash", lambda: calls.append(1))
    pairs = inbox.copy([2, 3, 42], trash)
    assert pairs == [(2, 1), (3, 2)] and calls == [1]
    copy = trash.message(1)
    assert copy.flags == {"\\Seen"} and copy.keywords == {"work"} and copy.recent
    # the source's date may not be known yet (first scan: 0); the copy keeps the file's mtime
    assert copy.internaldate == inbox.internaldate(2) == os.stat(src.path).st_mtime and copy.size == src.size
    assert os.stat(copy.path).st_ino == os.stat(src.path).st_ino  # hard link
    assert copy.name != src.name
    assert trash.read_message(1) == inbox.read_message(2)
    assert trash.header_bytes(2) == inbox.header_bytes(3)
    assert len(inbox) == 5  # source untouched
    # Copy into the same mailbox works too.
    assert inbox.copy([1], inbox) == [(1, 6)]


def test_move(store: Store, inbox) -> None:
    archive = store.mailbox(USER, "Archive")
    inbox.set_flags([1], ["\\Flagged"])
    data = inbox.read_message(1)
    pairs = inbox.move([1, 4], archive)
    assert pairs == [(1, 1), (4, 2)]
    assert [m.uid for m in inbox.messages()] == [2, 3, 5]
    assert archive.read_message(1) == data and archive.message(1).flags == {"\\Flagged"}
    assert sorted(os.listdir(store.user_dir(USER) / ".Archive" / "cur")) == sorted(
        m.filename for m in archive.messages())


def test_append(store: Store) -> None:
    drafts = store.mailbox(USER, "Drafts")
    when = 1_500_000_000.0
    uid = drafts.append(b"Subject: d\n\nline1\nline2\r\n", ["\\Draft", "\\Seen"], ["$MDNSent"], internaldate=when)
    m = drafts.message(uid)
    assert drafts.read_message(uid) == b"Subject: d\r\n\r\nline1\r\nline2\r\n"
    assert m.flags == {"\\Draft", "\\Seen"} and m.keywords == {"$MDNSent"}
    assert m.internaldate == when and m.path.stat().st_mtime == when
    assert m.size == m.path.stat().st_size
    assert m.recent
    uid2 = drafts.append(b"Subject: plain\r\n\r\n")
    assert uid2 == uid + 1 and drafts.message(uid2).subdir == "new"


def test_store_append_deferred(store: Store) -> None:
    uid = result_of(store.append(USER, "Sent", b"Subject: s\r\n\r\nx\r\n", ("\\Seen",), ("done",)))
    sent = store.mailbox(USER, "Sent")
    assert sent.message(uid).flags == {"\\Seen"} and sent.message(uid).keywords == {"done"}
    with pytest.raises(MailboxNotFound):
        result_of(store.append(USER, "Missing", b"x"))


def test_claim_recent_once(store: Store, inbox) -> None:
    assert inbox.recent_count() == 5
    assert inbox.claim_recent() == {1, 2, 3, 4, 5}
    assert inbox.claim_recent() == set()
    assert all(not m.recent and m.subdir == "cur" for m in inbox.messages())
    assert os.listdir(store.user_dir(USER) / "new") == []
    result_of(store.deliver(USER, make_message(9)))
    assert inbox.claim_recent() == {6}


def test_status_and_usage(store: Store, inbox) -> None:
    inbox.set_flags([1], ["\\Seen"])
    inbox.set_flags([2, 3], ["\\Deleted"])
    st = inbox.status()
    assert st["MESSAGES"] == 5 and st["UNSEEN"] == 4 and st["RECENT"] == 5 and st["UIDNEXT"] == 6
    assert st["DELETED"] == 2 and st["UIDVALIDITY"] == inbox.uidvalidity
    total = sum(m.size for m in inbox.messages())
    assert store.usage(USER) == total
    store.mailbox(USER, "Sent").append(b"Subject: x\r\n\r\n12345")
    assert store.usage(USER) == total + len(b"Subject: x\r\n\r\n12345")


def test_open_message_and_headers(inbox) -> None:
    with inbox.open_message(3) as f:
        assert f.read() == make_message(2)  # UID 3 is the third delivery
    hdrs = inbox.headers([1, 2])
    assert hdrs[2] == make_message(1).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    with pytest.raises(MessageNotFound):
        inbox.header_bytes(77)


def test_read_range(inbox) -> None:
    whole = make_message(2)
    assert inbox.read_range(3, 0, len(whole)) == whole
    assert inbox.read_range(3, 5, 10) == whole[5:15]
    assert inbox.read_range(3, len(whole) - 4, 100) == whole[-4:]      # short at the end of the file
    assert inbox.read_range(3, len(whole) + 10, 5) == b""
    inbox.set_flags([3], ["\\Seen"])                                   # renamed into cur/: still found
    assert inbox.read_range(3, 0, 4) == whole[:4]
    with pytest.raises(MessageNotFound):
        inbox.read_range(77, 0, 10)


def test_create_user_layout_and_list(store: Store) -> None:
    udir = store.user_dir(USER)
    for d in ("cur", "new", "tmp", ".Sent/cur", ".Drafts/new", ".Trash/tmp", ".Junk/cur", ".Archive/cur"):
        assert (udir / d).is_dir()
    assert (udir / ".Sent" / "maildirfolder").exists()
    infos = {i.name: i for i in store.list_mailboxes(USER)}
    assert list(infos)[0] == "INBOX"
    assert infos["Sent"].special_use == "\\Sent" and infos["Junk"].special_use == "\\Junk"
    assert all(infos[n].subscribed for n in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"))
    store.unsubscribe(USER, "Junk")
    store.create_user(USER)  # idempotent: does not re-subscribe
    assert "Junk" not in store.subscriptions(USER)


def test_create_list_delete_mailboxes(store: Store) -> None:
    assert store.create_mailbox(USER, "Work.Projects.") == "Work.Projects"
    store.create_mailbox(USER, "Entwürfe")
    assert (store.user_dir(USER) / ".Entw&APw-rfe" / "cur").is_dir()
    with pytest.raises(MailboxExists):
        store.create_mailbox(USER, "Work.Projects")
    with pytest.raises(MailboxExists):
        store.create_mailbox(USER, "inbox")
    infos = {i.name: i for i in store.list_mailboxes(USER)}
    assert infos["Work"].selectable is False and infos["Work"].has_children
    assert infos["Work.Projects"].selectable and not infos["Work.Projects"].has_children
    assert "Entwürfe" in infos
    mb = store.mailbox(USER, "Work.Projects")
    calls: list[int] = []
    store.add_listener(USER, "Work.Projects", lambda: calls.append(1))
    store.delete_mailbox(USER, "Work.Projects")
    assert calls == [1]
    with pytest.raises(MailboxNotFound):
        mb.messages() if mb.sync() else None
    with pytest.raises(MailboxNotFound):
        store.mailbox(USER, "Work.Projects")
    with pytest.raises(MailboxNotFound):
        store.delete_mailbox(USER, "Work.Projects")
    with pytest.raises(StoreError):
        store.delete_mailbox(USER, "INBOX")
    # Re-created: a new UIDVALIDITY (RFC 3501 §2.3.1.1).
    store.create_mailbox(USER, "Work.Projects")
    assert store.mailbox(USER, "Work.Projects").uidvalidity != mb.uidvalidity


def test_rename_mailbox_with_children_and_subscriptions(store: Store) -> None:
    store.create_mailbox(USER, "A")
    store.create_mailbox(USER, "A.B")
    store.subscribe(USER, "A.B")
    a = store.mailbox(USER, "A")
    uid = a.append(make_message("a"))
    validity = a.uidvalidity
    assert store.rename_mailbox(USER, "A", "Z") == "Z"
    names = {i.name for i in store.list_mailboxes(USER)}
    assert {"Z", "Z.B"} <= names and not {"A", "A.B"} & names
    assert "Z.B" in store.subscriptions(USER) and "A.B" not in store.subscriptions(USER)
    z = store.mailbox(USER, "Z")
    assert z.uidvalidity == validity and z.read_message(uid) == make_message("a")
    with pytest.raises(MailboxExists):
        store.rename_mailbox(USER, "Z", "Sent")
    with pytest.raises(MailboxNotFound):
        store.rename_mailbox(USER, "Nope", "Other")
    with pytest.raises(StoreError):
        store.rename_mailbox(USER, "Z", "Z.Inner")


def test_rename_inbox_moves_messages(store: Store, inbox) -> None:
    store.create_mailbox(USER, "INBOX.Child")
    store.rename_mailbox(USER, "INBOX", "Old")
    old = store.mailbox(USER, "Old")
    assert len(old) == 5 and len(inbox) == 0
    assert store.mailbox(USER, "INBOX.Child") is not None
    assert "INBOX" in {i.name for i in store.list_mailboxes(USER)}


def test_outside_change_during_flag_update(store: Store, inbox) -> None:
    """A file renamed by another tool between our sync and our STORE is found, not lost."""
    m = inbox.message(1)
    os.rename(m.path, store.user_dir(USER) / "cur" / (m.name + ":2,F"))
    changed, _ = inbox.set_flags([1], ["\\Seen"])
    assert changed == [1]
    assert inbox.message(1).flags == {"\\Seen", "\\Flagged"}
    assert inbox.message(1).path.exists()


def test_expunge_after_outside_rename_does_not_resurrect(store: Store, inbox) -> None:
    inbox.set_flags([2], ["\\Deleted"])
    m = inbox.message(2)
    os.rename(m.path, m.path.with_name(m.name + ":2,ST"))
    assert inbox.expunge() == [2]
    time.sleep(0)  # no waiting needed: the next sync must not bring it back
    inbox.sync()
    assert 2 not in inbox.uids() and len(inbox) == 4


def test_list_ignores_non_folders(store: Store) -> None:
    udir = store.user_dir(USER)
    (udir / ".Bad&x" / "cur").mkdir(parents=True)  # not valid modified UTF-7
    (udir / ".inbox.x" / "cur").mkdir(parents=True)  # not the canonical directory of INBOX.x
    (udir / ".hidden-file").write_text("x")
    (udir / "mailsuite-deleted-123").mkdir()
    names = [i.name for i in store.list_mailboxes(USER)]
    assert names == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    store.mailbox(USER, "INBOX")
    assert (udir / "mailsuite-index.sqlite").stat().st_mode & 0o777 == 0o600
