"""The first scan built column by column gives the same folder as the rules say (UIDs in base name order,
``cur/`` winning, dot files and symlinks left out, sizes from ``,S=`` else a stat), the SELECT view
computed in C loops gives the same answers, and the per-folder objects kept small (shared empty dicts,
put-off rows written from the folder's messages) change nothing the index or a session sees."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from mailsuite.store import Store
from mailsuite.store import mailbox as mailbox_mod
from mailsuite.store.index import INDEX_FILE

from .store_helpers import USER, defer_bulk_rows, fresh_folder, inline_runner, make_message, result_of

BODY = b"From: a@example.com\r\nSubject: s\r\n\r\nhello\r\n"


def _expected(files: list[tuple[str, str]]) -> list[tuple[str, str, str, bool]]:
    """(base, subdir, filename, recent) in UID order, by the rules of a first scan."""
    chosen: dict[str, tuple[str, str]] = {}
    for sub, fn in sorted(files, key=lambda f: f[0] != "new"):  # new/ first: cur/ wins
        if not fn.startswith("."):
            chosen[fn.split(":", 1)[0]] = (sub, fn)
    return [(base, sub, fn, sub == "new") for base, (sub, fn) in sorted(chosen.items())]


def test_first_scan_order_matches_the_rules(root: Path) -> None:
    rng = random.Random(7)
    files: list[tuple[str, str]] = []
    for i in range(300):
        base = f"17000{rng.randrange(100000):05d}.M{i}P1Q1.host,S={len(BODY)}"
        if rng.random() < 0.3:
            files.append(("new", base))
        else:
            files.append(("cur", base + rng.choice([":2,", ":2,S", ":2,FS", ":2,T"])))
    # a base that is a prefix of another (":" sorts after ","), one in both cur/ and new/, dot files
    files += [("cur", f"1700000001.M1P1Q1.host,S={len(BODY)}:2,S"),
              ("cur", f"1700000001.M1P1Q1.host,S={len(BODY)},W=99:2,"),
              ("new", f"1700000002.M2P1Q1.host,S={len(BODY)}"),
              ("cur", f"1700000002.M2P1Q1.host,S={len(BODY)}:2,F"),
              ("cur", ".hidden:2,"), ("new", ".tmpfile")]
    store = fresh_folder(root, files, BODY)
    try:
        mb = store.mailbox(USER, "INBOX")
        got = [(m.name, m.subdir, m.filename, m.recent) for m in mb.messages()]
        assert got == _expected(files)
        assert [m.uid for m in mb.messages()] == list(range(1, len(got) + 1))
        assert mb.recent_count() == sum(1 for g in got if g[3])
        assert mb.total_size() == len(got) * len(BODY)
        flagged = mb.message(next(m.uid for m in mb.messages() if m.name.startswith("1700000002.")))
        assert flagged.flags == {"\\Flagged"} and flagged.subdir == "cur"
    finally:
        store.close()


def test_first_scan_without_sizes_in_names_and_with_symlinks(root: Path) -> None:
    files = [("cur", "1700000003.M3P1Q1.host:2,S"), ("new", "1700000001.M1P1Q1.host"),
             ("cur", "1700000002.M2P1Q1.host,S=7:2,")]
    store = fresh_folder(root, files, BODY)
    inbox = store.user_dir(USER)
    os.symlink("/etc/hostname", inbox / "cur" / "1700000000.M0P1Q1.host,S=5:2,")
    try:
        mb = store.mailbox(USER, "INBOX")
        assert [(m.name.split(".")[0], m.size, bool(m.internaldate), m.recent) for m in mb.messages()] == [
            ("1700000001", len(BODY), True, True),      # no ,S=: stat'ed (size and date known)
            ("1700000002", 7, False, False),            # ,S= trusted, date learnt on first use
            ("1700000003", len(BODY), True, False),
        ]
    finally:
        store.close()


def test_select_view_answers(store: Store) -> None:
    mb = store.mailbox(USER, "INBOX")
    view, _ = mb.select_view(claim=True)
    assert (view.uids, view.first_unseen, view.keywords) == ([], 0, frozenset())
    mb.append(BODY, ["\\Seen"])
    mb.append(BODY, ["\\Seen"], ["$Label1"])
    view, _ = mb.select_view(claim=True)
    assert view.first_unseen == 0 and view.keywords == {"$Label1"}
    mb.append(BODY, [], ["$Label2"])
    view, _ = mb.select_view(claim=True)
    assert view.uids == [1, 2, 3] and view.first_unseen == 3 and view.keywords == {"$Label1", "$Label2"}


def test_a_change_drops_the_shared_view(store: Store) -> None:
    mb = store.mailbox(USER, "INBOX")
    mb.append(BODY)
    view, _ = mb.select_view(claim=True)
    assert mb._view is view
    result_of(store.deliver(USER, make_message(1)))
    assert mb._view is None  # sessions hold their own copies after a change
    assert mb.select_view(claim=True)[0].uids == [1, 2]


def test_shared_empties_stay_empty_and_keywords_stay_per_folder(store: Store) -> None:
    inbox = store.mailbox(USER, "INBOX")
    trash = store.mailbox(USER, "Trash")
    assert inbox._kwtable is trash._kwtable and inbox._suffix_cache is trash._suffix_cache  # shared
    inbox.append(BODY, [], ["$Work"])
    inbox.append(BODY, ["\\Seen"])
    inbox.headers([1, 2])              # pending headers
    inbox.internaldate(1)              # a pending date
    inbox.header_memo(("k",)).put(1, b"x")
    assert mailbox_mod._VACANT == {} and mailbox_mod._NO_KEYWORDS == []
    assert trash._kwtable == [] and trash._kwletter == {} and inbox._kwletter == {"$Work": "a"}
    trash.append(BODY, ["\\Flagged"])
    assert trash.message(1).keywords == frozenset() and trash.message(1).flags == {"\\Flagged"}
    assert inbox.message(1).keywords == {"$Work"}
    inbox.flush()
    inbox.forget_memos()
    assert inbox._pending_headers is mailbox_mod._VACANT and mailbox_mod._VACANT == {}


def _index_rows(udir: Path) -> list[tuple]:
    with sqlite3.connect(udir / INDEX_FILE) as db:
        return db.execute("SELECT uid, name, subdir, suffix, flags, keywords, modseq, size, recent"
                          " FROM messages ORDER BY uid").fetchall()


def test_put_off_rows_are_written_as_the_folder_has_them(root: Path) -> None:
    """Deliveries and \\Recent claims for a closed index keep no copy of the rows; what is written later
    is what the folder holds, as when each write was made at once."""
    other = "bob@example.org"
    s = Store(root, runner=inline_runner, max_open_indexes=1)
    s.create_user(USER)
    s.create_user(other)
    mb = s.mailbox(USER, "INBOX")
    result_of(s.deliver(USER, make_message(0)))      # written at once (index open)
    s.mailbox(other, "INBOX")                       # evicts alice's index
    idx = s._state(USER)._index
    assert idx is not None and not idx.is_open
    for i in (1, 2):
        result_of(s.deliver(USER, make_message(i)))
    assert mb.claim_recent() == {1, 2, 3}          # one older message, two put-off new ones
    result_of(s.deliver(USER, make_message(3)))
    assert idx.deferred == 1 and mb._unsaved is not None and mb._unsaved.claimed == [1, 2, 3]
    expected = [(m.uid, m.name, m.subdir, m.suffix, "", "", m.modseq, m.size, int(m.recent))
                for m in mb.messages()]
    s.close()
    assert _index_rows(s.user_dir(USER)) == expected
    assert [r[2] for r in expected] == ["cur", "cur", "cur", "new"] and [r[-1] for r in expected] == [0, 0, 0, 1]
    s2 = Store(root, runner=inline_runner)
    try:
        mb2 = s2.mailbox(USER, "INBOX")
        assert [(m.uid, m.subdir, m.recent) for m in mb2.messages()] == [(u, sd, bool(r)) for u, _n, sd, *_x, r
                                                                         in expected]
        assert mb2.uidnext == 5
    finally:
        s2.close()


def test_claiming_before_the_first_scan_rows_are_written_needs_no_transaction(root: Path, monkeypatch) -> None:
    """The first SELECT of a big folder with new mail: the claim (new/ -> cur/) changes the unwritten
    rows instead of writing them all before the answer."""
    files = [("cur", f"17000{i:05d}.M{i}P1Q1.host,S={len(BODY)}:2,S") for i in range(20)]
    files += [("new", f"17001{i:05d}.M{i}P1Q1.host,S={len(BODY)}") for i in range(5)]
    store = fresh_folder(root, files, BODY)
    later = defer_bulk_rows(monkeypatch, chunk=10)
    mb = store.mailbox(USER, "INBOX")
    udir = store.user_dir(USER)
    view, recent = mb.select_view(claim=True)
    assert recent == set(range(21, 26)) and view.first_unseen == 21
    assert _index_rows(udir) == []                     # still not written
    assert all(m.subdir == "cur" and not m.recent for m in mb.messages())
    assert not os.listdir(udir / "new")
    later.pop()()                                       # the writer
    rows = _index_rows(udir)
    assert [(r[0], r[2], r[3], r[-1]) for r in rows] == [(m.uid, "cur", m.suffix, 0) for m in mb.messages()]
    cur_mtime = os.stat(udir / "cur").st_mtime_ns
    store.close()
    s2 = Store(root, runner=inline_runner)
    try:
        assert s2._state(USER).index.get_folder("INBOX").cur_mtime == cur_mtime  # no rescan needed
        mb2 = s2.mailbox(USER, "INBOX")
        assert [(m.uid, m.subdir, m.recent) for m in mb2.messages()] == [(u, "cur", False) for u in range(1, 26)]
    finally:
        s2.close()
