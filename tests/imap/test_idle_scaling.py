"""IDLE at scale: one shared outside-change timer per mailbox, and no Maildir rescan per session after a
change the store itself made (bench workload 7)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from mailsuite.config import parse_settings
from mailsuite.context import ServerContext
from mailsuite.imap.adapter import OUTSIDE_CHANGES_POLL, ImapFactory, build_factory
from mailsuite.store.mailbox import Mailbox

from .harness import MESSAGE, Session, make_store
from .test_adapter import FakeAccounts, FakeTLS, Transport

SESSIONS = 6
ALICE = "alice@example.org"


@pytest.fixture
def env(tmp_path):
    store = make_store(tmp_path)
    settings = parse_settings("[imap]\nmax_connections_per_ip = 50\ntimeout = 3600\n")
    ctx = ServerContext(settings=settings, accounts=FakeAccounts(), store=store, tls=FakeTLS(), reactor=Clock())
    yield ctx
    store.close()


@pytest.fixture
def syncs(monkeypatch) -> list[str]:
    """Names of the mailboxes each ``Mailbox.sync()`` call was made on."""
    calls: list[str] = []
    real = Mailbox.sync

    def counting(self: Mailbox) -> bool:
        calls.append(self.name)
        return real(self)

    monkeypatch.setattr(Mailbox, "sync", counting)
    return calls


def idle_sessions(ctx: ServerContext, factory: ImapFactory, n: int, mailbox: str = "INBOX") -> list[tuple[Any, Transport]]:
    out = []
    for _ in range(n):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        tr = Transport()
        proto.makeConnection(tr)
        proto.dataReceived(b"a LOGIN alice@example.org secret\r\nb SELECT %s\r\nc IDLE\r\n" % mailbox.encode())
        assert tr.value().endswith(b"+ idling\r\n")
        tr.clear()
        out.append((proto, tr))
    return out


def outside_write(ctx: ServerContext, name: str) -> None:
    """Another program drops a message into INBOX's new/ (Maildir: write in tmp/, rename into new/)."""
    top = ctx.store.user_dir(ALICE)
    tmp = top / "tmp" / name
    tmp.write_bytes(MESSAGE)
    os.rename(tmp, top / "new" / name)


def test_one_sync_per_tick_for_all_idle_sessions(env, syncs):
    factory = build_factory(env, "imaps")
    sessions = idle_sessions(env, factory, SESSIONS)
    assert len(factory.watches) == 1
    watch = next(iter(factory.watches.values()))
    assert len(watch.sessions) == SESSIONS
    outside_write(env, "1700000000.outside1.host")
    syncs.clear()
    env.reactor.advance(OUTSIDE_CHANGES_POLL)
    assert syncs == ["INBOX"] and watch.syncs == 1  # one rescan for all the sessions
    env.reactor.advance(0)  # the wake-ups the store's notification scheduled
    for _proto, tr in sessions:
        assert tr.value().startswith(b"* 1 EXISTS\r\n")
        tr.clear()
    assert syncs == ["INBOX"]  # the woken sessions trusted the index: no rescan each
    # the timer keeps going while they idle, still one sync per tick
    env.reactor.advance(OUTSIDE_CHANGES_POLL)
    assert syncs == ["INBOX", "INBOX"] and watch.syncs == 2
    for proto, tr in sessions:
        proto.dataReceived(b"DONE\r\n")
        assert tr.value().startswith(b"c OK")
    assert factory.watches == {} and not watch.sessions
    syncs.clear()
    env.reactor.advance(OUTSIDE_CHANGES_POLL)
    assert syncs == []  # stopped with the last session


def test_recent_goes_to_one_session_only(env):
    factory = build_factory(env, "imaps")
    sessions = idle_sessions(env, factory, SESSIONS)
    outside_write(env, "1700000000.outside2.host")
    env.reactor.advance(OUTSIDE_CHANGES_POLL)
    env.reactor.advance(0)
    outs = [tr.value() for _p, tr in sessions]
    assert all(out.startswith(b"* 1 EXISTS\r\n") for out in outs)
    assert sum(b"* 1 RECENT" in out for out in outs) == 1  # RFC 3501 §2.3.2: one session gets \Recent


def test_store_notification_wakes_without_rescans(env, syncs):
    factory = build_factory(env, "imaps")
    sessions = idle_sessions(env, factory, SESSIONS)
    env.store.deliver(ALICE, MESSAGE)
    syncs.clear()
    env.reactor.advance(0)
    assert all(tr.value().startswith(b"* 1 EXISTS\r\n") for _p, tr in sessions)
    assert syncs == []


def test_watch_per_mailbox_follows_idle_select_and_disconnect(env):
    env.store.create_mailbox(ALICE, "Work")
    factory = build_factory(env, "imaps")
    inbox = idle_sessions(env, factory, 2)
    work = idle_sessions(env, factory, 1, "Work")
    assert sorted(w.mailbox.name for w in factory.watches.values()) == ["INBOX", "Work"]
    proto, tr = work[0]
    proto.dataReceived(b"DONE\r\nd SELECT INBOX\r\ne IDLE\r\n")
    assert [w.mailbox.name for w in factory.watches.values()] == ["INBOX"]
    assert len(next(iter(factory.watches.values())).sessions) == 3
    for proto, _tr in inbox + work:
        proto.connectionLost(None)
    assert factory.watches == {}
    assert [c for c in env.reactor.getDelayedCalls() if c.active()] == []


def test_folder_removed_by_another_program_ends_idle_sessions(env):
    env.store.create_mailbox(ALICE, "Work")
    factory = build_factory(env, "imaps")
    sessions = idle_sessions(env, factory, 2, "Work")
    shutil.rmtree(env.store.user_dir(ALICE) / ".Work")
    env.reactor.advance(OUTSIDE_CHANGES_POLL)
    for _proto, tr in sessions:
        assert b"* BYE" in tr.value() and tr.closed
    assert factory.watches == {}


def test_folder_deleted_by_another_session_ends_idle_without_rescan(tmp_path, syncs):
    store = make_store(tmp_path)
    try:
        store.create_mailbox(ALICE, "Work")
        idler, other = Session(store), Session(store)
        for s in (idler, other):
            s.cmd("a LOGIN alice@example.org secret")
        idler.cmd("b SELECT Work")
        assert idler.cmd("c IDLE") == b"+ idling\r\n"
        assert b"d OK" in other.cmd("d DELETE Work")
        assert idler.wakeups >= 1
        syncs.clear()
        out = idler._run(idler.engine.poll())
        assert out.startswith(b"* BYE") and syncs == []  # RFC 3501 §7.1.5, told by the store's flag
    finally:
        store.close()
