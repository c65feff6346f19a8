"""SELECT of a folder first opened without an index (dates learnt on use), the SELECT snapshot shared
between sessions, \\Recent across sessions, the header-sync FETCH path (benchmarks 5 and 6)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from mailsuite.imap import fetch as fetchmod
from mailsuite.store import Store

from .harness import Session, make_store

USER = "alice@example.org"


def _msg(i: int) -> bytes:
    return (b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: m%d\r\nReceived: from x\r\n\tby y\r\n"
            b"X-Other: %d\r\n\r\nbody %d\r\n" % (i, i, i))


def _unindexed_store(tmp_path, files: list[tuple[str, bytes, float]]) -> Store:
    """INBOX with ``(filename, data, mtime)`` in cur/ and no index (as after moving from Dovecot)."""
    store = make_store(tmp_path)
    inbox = store.mailbox(USER, "INBOX").dir
    store.close()
    for f in tmp_path.rglob("mailsuite-index.sqlite*"):
        f.unlink()
    for fn, data, mtime in files:
        p = inbox / "cur" / fn
        p.write_bytes(data)
        os.utime(p, (mtime, mtime))
    return Store(tmp_path / "mail", runner=store._runner)


def _session(store: Store) -> Session:
    s = Session(store)
    s.login()
    return s


def test_internaldate_is_right_after_a_first_select_without_index(tmp_path):
    dates = [datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc), datetime(2022, 12, 31, 23, 59, 1, tzinfo=timezone.utc)]
    files = [(f"170000000{i}.M{i}P1Q1.host,S={len(_msg(i))}:2,S", _msg(i), d.timestamp()) for i, d in enumerate(dates)]
    store = _unindexed_store(tmp_path, files)
    s = _session(store)
    out = s.cmd("a SELECT INBOX")
    assert b"* 2 EXISTS" in out and b"* 0 RECENT" in out
    assert store.mailbox(USER, "INBOX").message(1).internaldate == 0  # not looked at yet
    out = s.cmd("b SEARCH SENTBEFORE 1-Jan-2030 BEFORE 1-Jan-2022")
    assert b"* SEARCH 1\r\n" in out
    out = s.cmd("c FETCH 1:2 (INTERNALDATE RFC822.SIZE)")
    assert b'* 1 FETCH (INTERNALDATE " 4-Mar-2021 05:06:07 +0000" RFC822.SIZE %d)' % len(_msg(0)) in out
    assert b'* 2 FETCH (INTERNALDATE "31-Dec-2022 23:59:01 +0000" RFC822.SIZE %d)' % len(_msg(1)) in out
    # another session, after the dates were learnt, sees the same
    out = _session(store).cmd("d EXAMINE INBOX")
    assert b"* 2 EXISTS" in out
    store.close()


def test_recent_goes_to_exactly_one_of_two_sessions(tmp_path):
    store = make_store(tmp_path)
    a, b = _session(store), _session(store)
    mb = store.mailbox(USER, "INBOX")
    mb.append(_msg(1))
    mb.append(_msg(2))
    assert b"* 2 RECENT" in a.cmd("a1 SELECT INBOX")
    assert b"* 0 RECENT" in b.cmd("b1 SELECT INBOX")
    mb.append(_msg(3))  # a new message while both are selected: whoever looks first gets \Recent
    out_b = b.cmd("b2 NOOP")
    out_a = a.cmd("a2 NOOP")
    assert b"* 3 EXISTS" in out_b and b"* 1 RECENT" in out_b
    assert b"* 3 EXISTS" in out_a and b"* 2 RECENT" in out_a  # its own two, not the new one
    assert b"\\Recent" in b.cmd("b3 FETCH 3 (FLAGS)") and b"\\Recent" not in a.cmd("a3 FETCH 3 (FLAGS)")
    assert b"* 0 RECENT" in _session(store).cmd("c1 SELECT INBOX")
    store.close()


def test_sessions_sharing_a_snapshot_keep_their_own_view(tmp_path):
    store = make_store(tmp_path)
    mb = store.mailbox(USER, "INBOX")
    for i in range(3):
        mb.append(_msg(i))
    a, b = _session(store), _session(store)
    a.cmd("a1 SELECT INBOX")
    b.cmd("b1 SELECT INBOX")
    assert a.engine.selected.infos is b.engine.selected.infos  # one snapshot for both
    out = a.cmd("a2 STORE 2 +FLAGS (\\Seen)")
    assert b"* 2 FETCH (FLAGS (\\Seen \\Recent))" in out  # a selected first: \Recent is a's
    assert a.engine.selected.infos is not b.engine.selected.infos  # a copied before changing
    assert "\\Seen" not in b.engine.selected.infos[2].flags  # b was told nothing yet
    assert b"* 2 FETCH (UID 2 FLAGS (\\Seen))" in b.cmd("b2 NOOP")
    out = _session(store).cmd("c1 SELECT INBOX")
    assert b"[UNSEEN 1]" in out
    a.cmd("a3 STORE 1 +FLAGS (\\Seen)")
    assert b"[UNSEEN 3]" in _session(store).cmd("d1 SELECT INBOX")
    store.close()


def test_simple_fetch_path_equals_the_general_path(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    mb = store.mailbox(USER, "INBOX")
    for i in range(5):
        mb.append(_msg(i), ["\\Seen"] if i % 2 else [], ["$Junk"] if i == 3 else [])
    s = _session(store)
    s.cmd("a SELECT INBOX (CONDSTORE)")  # FETCH FLAGS reports MODSEQ in every pass
    s.cmd("b STORE 2 +FLAGS (\\Deleted)")
    commands = [
        "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Received)])",
        "FETCH 2:4 (FLAGS BODY.PEEK[HEADER.FIELDS.NOT (Received X-Other)] MODSEQ)",
        "UID FETCH 3,1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[HEADER.FIELDS (X-Other)])",
        "UID FETCH 1:* (FLAGS BODY.PEEK[])",                                    # a full download
        "FETCH 1:3 (RFC822.SIZE BODY.PEEK[] UID BODY.PEEK[HEADER.FIELDS (Subject)] MODSEQ)",
    ]
    fast = [s.cmd("f " + c) for c in commands]
    assert fast == [s.cmd("f " + c) for c in commands]  # the second time from the memo
    monkeypatch.setattr(fetchmod, "simple_plan", lambda *a: None)
    assert fast == [s.cmd("f " + c) for c in commands]
    assert all(out.endswith(b"f OK FETCH completed\r\n") for out in fast)
    store.close()


def test_simple_fetch_path_sets_seen_like_the_general_path(tmp_path, monkeypatch):
    """RFC822 and BODY[] (not PEEK) set \\Seen (RFC 3501 §6.4.5) on either path: same answers, same flags."""
    commands = ["a SELECT INBOX (CONDSTORE)", "b UID FETCH 2:4 (RFC822)", "c FETCH 1:* (FLAGS BODY[] UID)",
                "d FETCH 1:* (FLAGS MODSEQ)"]

    def run(where: Path) -> list[bytes]:
        store = make_store(where)
        mb = store.mailbox(USER, "INBOX")
        for i in range(5):
            mb.append(_msg(i), ["\\Seen"] if i == 3 else [], [])
        s = _session(store)
        out = [s.cmd(c) for c in commands]
        store.close()
        return out

    fast = run(tmp_path / "fast")
    monkeypatch.setattr(fetchmod, "simple_plan", lambda *a: None)
    assert fast == run(tmp_path / "general")
    assert b"\\Seen" in fast[-1] and fast[-1].count(b"\\Seen") == 5
