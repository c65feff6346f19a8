"""Performance contracts of the store: no COMMIT when nothing changed, a bounded number of open
per-user index connections with a small page cache."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mailsuite.store import Store

from .store_helpers import USER, inline_runner, make_message, result_of


@contextmanager
def count_commits(store: Store, user: str = USER) -> Iterator[list[str]]:
    """Collect the COMMIT statements run on ``user``'s index connection."""
    seen: list[str] = []
    db = store._state(user).index.db
    db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper().startswith(("COMMIT", "BEGIN")) else None)
    try:
        yield seen
    finally:
        db.set_trace_callback(None)


@pytest.fixture
def inbox(store: Store):
    for i in range(3):
        result_of(store.deliver(USER, make_message(i)))
    mb = store.mailbox(USER, "INBOX")
    mb.claim_recent()
    return mb


def test_sync_without_change_does_not_commit(store: Store, inbox) -> None:
    # Force a listing of both directories (as after an unsettled scan): nothing changed on disk.
    inbox._state = {"new": (0, 0), "cur": (0, 0)}
    with count_commits(store) as commits:
        assert inbox.sync() is False
        assert inbox.sync() is False
    assert commits == []
    assert len(inbox) == 3


def test_sync_with_change_still_commits(store: Store, inbox) -> None:
    store.deliver_sync(USER, make_message(7))  # written to disk, not indexed
    with count_commits(store) as commits:
        assert inbox.sync() is True
    assert any(c.upper().startswith("COMMIT") for c in commits)
    assert len(inbox) == 4


def test_claim_recent_with_nothing_new_does_not_commit(store: Store, inbox) -> None:
    with count_commits(store) as commits:
        assert inbox.claim_recent() == set()
    assert commits == []


def test_open_indexes_are_bounded_and_reopen_lazily(root) -> None:
    store = Store(root, runner=inline_runner, max_open_indexes=16)
    try:
        users = [f"u{i}@example.org" for i in range(200)]
        held = {}
        for i, user in enumerate(users):
            store.create_user(user)
            result_of(store.deliver(user, make_message(i)))
            held[user] = store.mailbox(user, "INBOX")  # a live session's shared Mailbox
            assert store.open_index_count() <= 16
        for i, user in enumerate(users):
            mb = held[user]
            assert store.mailbox(user, "INBOX") is mb
            assert mb.uids() == [1]
            assert mb.set_flags([1], ["\\Seen"])[0] == [1]  # writes through a reopened connection
            assert b"Subject: message %d\r\n" % i in mb.header_bytes(1)
            result_of(store.deliver(user, make_message(1000 + i)))
            mb.sync()
            assert len(mb) == 2
            assert store.open_index_count() <= 16
    finally:
        store.close()
    # Everything reached the disk: a restarted store sees the same UIDs and flags.
    again = Store(root, runner=inline_runner)
    try:
        for user in (users[0], users[99], users[199]):
            mb = again.mailbox(user, "INBOX")
            assert mb.uids() == [1, 2]
            assert "\\Seen" in mb.message(1).flags
    finally:
        again.close()


def test_cache_size_is_small(store: Store) -> None:
    db = store._state(USER).index.db
    assert db.execute("PRAGMA cache_size").fetchone()[0] == -256
