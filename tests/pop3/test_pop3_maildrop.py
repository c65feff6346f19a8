"""The POP3 maildrop over the real store: snapshot at login, stable UIDLs, \\Seen, removal seen by IMAP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mailsuite.pop3 import maildrop as maildrop_module
from mailsuite.pop3.engine import uidl_for
from mailsuite.pop3.maildrop import InboxMaildrop
from mailsuite.store import Store

USER = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "mail")
    s.create_user(USER)
    yield s
    s.close()


def test_listing_sizes_and_uidl(store: Store) -> None:
    names = [store.deliver_sync(USER, b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)) for i in range(3)]
    drop = InboxMaildrop(store, USER)
    entries = drop.open()
    assert [e.key for e in entries] == [n.split(":")[0] for n in names]
    assert [e.uid for e in entries] == [uidl_for(e.key) for e in entries]
    for entry in entries:
        with drop.open_message(entry.key) as handle:
            assert len(handle.read()) == entry.size


def test_lf_message_is_stored_with_crlf_and_size_matches(store: Store) -> None:
    store.deliver_sync(USER, b"Subject: x\n\nline\n")
    drop = InboxMaildrop(store, USER)
    [entry] = drop.open()
    with drop.open_message(entry.key) as handle:
        data = handle.read()
    assert data == b"Subject: x\r\n\r\nline\r\n" and entry.size == len(data)


def test_snapshot_at_login_and_uidl_stable_across_flags(store: Store) -> None:
    store.deliver_sync(USER, b"Subject: a\r\n\r\na\r\n")
    drop = InboxMaildrop(store, USER)
    [entry] = drop.open()
    store.deliver_sync(USER, b"Subject: b\r\n\r\nb\r\n")          # arrives during the session
    drop.mark_seen([entry.key])                                      # file moves new/ -> cur/ with :2,S
    with drop.open_message(entry.key) as handle:
        assert handle.read() == b"Subject: a\r\n\r\na\r\n"
    imap = store.mailbox(USER, "INBOX")
    seen = [m for m in imap.messages() if m.name == entry.key]
    assert seen and "\\Seen" in seen[0].flags
    again = InboxMaildrop(store, USER).open()
    assert len(again) == 2 and again[0].uid == entry.uid                  # same UIDL in the next session


def test_remove_is_seen_by_imap(store: Store) -> None:
    for i in range(3):
        store.deliver_sync(USER, b"Subject: %d\r\n\r\n" % i)
    drop = InboxMaildrop(store, USER)
    entries = drop.open()
    assert drop.remove([entries[0].key, entries[2].key]) is True
    names = [m.name for m in store.mailbox(USER, "INBOX").messages()]
    assert names == [entries[1].key]


def test_message_removed_by_imap_meanwhile(store: Store) -> None:
    store.deliver_sync(USER, b"Subject: 1\r\n\r\n")
    store.deliver_sync(USER, b"Subject: 2\r\n\r\n")
    drop = InboxMaildrop(store, USER)
    first, second = drop.open()
    imap = store.mailbox(USER, "INBOX")
    uid = [m.uid for m in imap.messages() if m.name == first.key][0]
    imap.set_flags([uid], ["\\Deleted"])
    imap.expunge([uid])
    with pytest.raises(LookupError):
        drop.open_message(first.key)
    assert drop.remove([first.key, second.key]) is True
    assert store.mailbox(USER, "INBOX").messages() == []


def test_file_renamed_outside(store: Store) -> None:
    name = store.deliver_sync(USER, b"Subject: 1\r\n\r\nx\r\n")
    drop = InboxMaildrop(store, USER)
    [entry] = drop.open()
    udir = store.user_dir(USER)
    (udir / "new" / name).rename(udir / "cur" / (name + ":2,F"))    # another tool flags it
    with drop.open_message(entry.key) as handle:
        assert handle.read() == b"Subject: 1\r\n\r\nx\r\n"


def _sent(drop: InboxMaildrop, key: str) -> bytes:
    """The message as RETR puts it on the wire (these messages have no line starting with '.')."""
    from mailsuite.pop3.dotstuff import TERMINATOR, DotStuffer
    stuffer = DotStuffer()
    with drop.open_message(key) as handle:
        wire = stuffer.feed(handle.read()) + stuffer.finish()
    assert wire.endswith(TERMINATOR)
    return wire[:-len(TERMINATOR)]


def test_sizes_of_lf_files_from_other_tools_count_crlf(store: Store) -> None:
    """RFC 1939 §5/§11: LIST and STAT give the octets sent, CRLF counted as two, also for the LF files that
    Dovecot, Postfix or procmail leave in a Maildir (the file size would be too small)."""
    udir = store.user_dir(USER)
    (udir / "new" / "1700000000.M1P2.oldhost,S=26").write_bytes(b"Subject: old\n\nline one\nend")
    (udir / "cur" / "1700000001.M2P2.oldhost,S=20,W=23:2,S").write_bytes(b"Subject: w\n\nbody\nx\n")
    store.deliver_sync(USER, b"Subject: ours\r\n\r\nmixed\nline\r\n")
    drop = InboxMaildrop(store, USER)
    entries = drop.open()
    assert len(entries) == 3
    for entry in entries:
        assert entry.size == len(_sent(drop, entry.key)), entry.key
    sizes = {e.key.split(",")[0]: e.size for e in entries}
    assert sizes["1700000000.M1P2.oldhost"] == 31 and sizes["1700000001.M2P2.oldhost"] == 23   # W= is used


# -- issue 7: the measure also tells which files have no bare LF; \Seen in one batch ---------------------

def _reference_wire(data: bytes) -> tuple[int, bool]:
    import re
    clean = re.search(rb"(?<!\r)\n", data) is None
    wire = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if wire and not wire.endswith(b"\n"):
        wire += b"\r\n"
    return len(wire), clean


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b".", b"xyz"]), max_size=40).map(b"".join),
       st.integers(1, 7))
def test_measure_matches_reference_for_any_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    data: bytes, chunk: int) -> None:
    monkeypatch.setattr(maildrop_module, "_MEASURE_CHUNK", chunk)       # CR | LF split by a read
    path = tmp_path / "m"
    path.write_bytes(data)
    assert maildrop_module.measure(str(path), len(data)) == _reference_wire(data)


def test_crlf_known_for_measured_and_w_named_files(store: Store) -> None:
    """``crlf(key)`` (the dot-stuffer may skip its LF check) only for files known to have no bare LF."""
    udir = store.user_dir(USER)
    (udir / "new" / "1700000000.M1P2.lf,S=12").write_bytes(b"Subject: x\n\n")
    (udir / "new" / "1700000001.M1P2.crlf,S=14").write_bytes(b"Subject: x\r\n\r\n")
    (udir / "new" / "1700000002.M1P2.nofinal,S=4").write_bytes(b"A\r\nb")
    (udir / "cur" / "1700000003.M2P2.wlf,S=12,W=14:2,S").write_bytes(b"Subject: w\n\n")
    (udir / "cur" / "1700000004.M2P2.wcrlf,S=14,W=14:2,S").write_bytes(b"Subject: w\r\n\r\n")
    ours = store.deliver_sync(USER, b"Subject: ours\r\n\r\nmixed\nline\r\n").split(":")[0]
    drop = InboxMaildrop(store, USER)
    entries = drop.open()
    assert len(entries) == 6
    crlf = {e.key for e in entries if drop.crlf(e.key)}
    assert crlf == {"1700000001.M1P2.crlf,S=14", "1700000002.M1P2.nofinal,S=4", "1700000004.M2P2.wcrlf,S=14,W=14",
                    ours}                                             # the store wrote ours with CRLF
    assert {e.key: e.size for e in entries}["1700000002.M1P2.nofinal,S=4"] == 6   # CRLF added at the end
    for entry in entries:
        assert entry.size == len(_sent(drop, entry.key)), entry.key


def test_mark_seen_is_one_store_call_for_many(store: Store) -> None:
    for i in range(5):
        store.deliver_sync(USER, b"Subject: %d\r\n\r\n" % i)
    drop = InboxMaildrop(store, USER)
    entries = drop.open()
    imap = store.mailbox(USER, "INBOX")
    before = imap.highestmodseq
    calls: list[list[int]] = []
    real = imap.set_flags

    def spy(uids: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(uids))
        return real(uids, *args, **kwargs)

    imap.set_flags = spy                                          # type: ignore[method-assign]
    try:
        drop.mark_seen([e.key for e in entries[:4]] + ["no-such-key"])
    finally:
        del imap.set_flags
    assert len(calls) == 1 and len(calls[0]) == 4
    flags = {m.name: m.flags for m in imap.messages()}
    assert [("\\Seen" in flags[e.key]) for e in entries] == [True, True, True, True, False]
    assert imap.highestmodseq == before + 1                       # one modseq, one index commit
