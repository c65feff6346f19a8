"""What an idle IMAP session costs (bench 7a: 2000 sessions in IDLE): shared timers, a shared engine config,
no per-session copy of the selected folder's snapshot, no containers kept between commands."""

from __future__ import annotations

import gc
import tracemalloc

from twisted.internet.task import Clock

from mailsuite.imap.adapter import Deadlines, build_factory

from .harness import MESSAGE, Session, make_store
from .test_adapter import connect, env  # noqa: F401  (fixture)

ALICE = "alice@example.org"


def test_deadlines_fire_in_arming_order_from_one_timer():
    clock = Clock()
    fired: list[tuple[str, float]] = []
    timer = Deadlines(clock, 10.0, lambda key: fired.append((key, clock.seconds())))
    timer.arm("a")
    clock.advance(3)
    timer.arm("b")
    timer.arm("c")
    assert len(clock.getDelayedCalls()) == 1 and len(timer) == 3
    clock.advance(4)
    timer.rearm("a")          # activity: a's period starts again (now 7 -> due 17)
    timer.rearm("x")          # not armed: stays so
    timer.disarm("c")
    clock.advance(3)          # 10: nothing due yet (b at 13)
    assert fired == []
    clock.advance(3)
    assert fired == [("b", 13.0)]
    clock.advance(4)
    assert fired == [("b", 13.0), ("a", 17.0)] and len(timer) == 0
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_deadlines_key_may_arm_itself_again_when_it_expires():
    clock = Clock()
    seen: list[float] = []

    def expire(key: str) -> None:
        seen.append(clock.seconds())
        if len(seen) < 3:
            timer.arm(key)

    timer = Deadlines(clock, 5.0, expire)
    timer.arm("k")
    clock.pump([5.0] * 5)
    assert seen == [5.0, 10.0, 15.0] and "k" not in timer


def test_autologout_counts_from_the_last_command_with_one_timer(env):  # noqa: F811
    factory = build_factory(env, "imap")
    sessions = [connect(env, factory, f"127.0.0.{i}") for i in range(1, 4)]
    assert len([c for c in env.reactor.getDelayedCalls() if c.active()]) == 1
    env.reactor.advance(30)
    busy, busy_tr = sessions[0]
    busy.dataReceived(b"a NOOP\r\n")
    busy_tr.clear()
    env.reactor.advance(31)  # 61 s: the quiet ones are logged out (timeout = 60), not the one that spoke at 30
    for _proto, tr in sessions[1:]:
        assert tr.value().endswith(b"* BYE Autologout; idle for too long\r\n") and tr.closed
    assert busy_tr.value() == b"" and not busy_tr.closed
    env.reactor.advance(29)
    assert busy_tr.value() == b"* BYE Autologout; idle for too long\r\n" and busy_tr.closed
    for proto, _tr in sessions:
        proto.connectionLost(None)
    assert [c for c in env.reactor.getDelayedCalls() if c.active()] == []


def test_starttls_does_not_change_the_config_other_sessions_share(env):  # noqa: F811
    factory = build_factory(env, "imap")
    (one, tr1), (two, tr2) = connect(env, factory), connect(env, factory)
    assert one.engine.cfg is two.engine.cfg
    one.dataReceived(b"a STARTTLS\r\n")
    assert tr1.tls == "tls-options"
    one.engine.tls_started()
    assert one.engine.cfg.tls_active and not two.engine.cfg.tls_active
    two.dataReceived(b"b CAPABILITY\r\n")
    assert b"STARTTLS" in tr2.value()
    for proto in (one, two):
        proto.connectionLost(None)


def test_idle_keeps_sharing_the_folder_snapshot_until_it_changes(tmp_path):
    store = make_store(tmp_path)
    try:
        for _ in range(3):
            store.deliver(ALICE, MESSAGE)
        s = Session(store)
        s.cmd("a LOGIN alice@example.org secret")
        s.cmd("b SELECT INBOX")
        assert s.cmd("c IDLE") == b"+ idling\r\n"
        sel = s.engine.selected
        assert sel.shared and not sel.ghosts  # nothing changed: no copy of uids/infos of its own
        store.deliver(ALICE, MESSAGE)
        assert s._run(s.engine.poll()) == b"* 4 EXISTS\r\n* 4 RECENT\r\n"
        assert not sel.shared and sel.uids[-1] == 4
        assert s.cmd("DONE").startswith(b"c OK")
    finally:
        store.close()


def test_idle_session_memory_budget(env):  # noqa: F811
    """A guard against per-session objects creeping back: protocol, engine, framer, selected view and
    timers of one IDLE session (the store's objects for the user are shared and not counted)."""
    factory = build_factory(env, "imaps")
    count = 200

    def open_session(i: int):
        proto, tr = connect(env, factory, "127.0.%d.%d" % (i // 250, i % 250 + 1))
        proto.dataReceived(b"a LOGIN alice@example.org secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        assert tr.value().endswith(b"+ idling\r\n")
        tr.clear()
        return proto, tr

    keep = [open_session(0)]  # the user's store objects exist before the measurement
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep += [open_session(i) for i in range(1, count + 1)]
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    # measured 1.8 KB with the in-memory transport (each keeps its own output buffer); it was 4.4 KB
    assert per_session < 3000, per_session
    proto, _tr = keep[1]
    assert proto._queue is None and proto.engine.out is None and not proto.engine.framer._lines
    for proto, _tr in keep:
        proto.connectionLost(None)
