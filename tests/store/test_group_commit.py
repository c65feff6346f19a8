"""Group commit of deliveries: batching, per-job failures, and the batched Maildir writer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer

from mailsuite.store import Store
from mailsuite.store.groupcommit import GroupCommit
from mailsuite.store.maildir import WrittenMessage, make_maildir, write_messages

from .store_helpers import USER, make_message


class ManualRunner:
    """A runner whose 'thread' tasks run only when the test says so."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Callable[[], Any], defer.Deferred]] = []

    def __call__(self, fn: Callable[[], Any]) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.tasks.append((fn, d))
        return d

    def run_next(self) -> None:
        fn, d = self.tasks.pop(0)
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001
            d.errback(e)
        else:
            d.callback(result)


def _collect(d: defer.Deferred, into: list) -> None:
    d.addCallbacks(lambda r: into.append(("ok", r)), lambda f: into.append(("err", f.value)))


def test_jobs_arriving_during_a_batch_go_together() -> None:
    runner = ManualRunner()
    seen: list[list[int]] = []

    def work(jobs: list[int]) -> list[Any]:
        seen.append(list(jobs))
        return [j * 10 for j in jobs]

    gc: GroupCommit[int] = GroupCommit(runner, work, max_inflight=2)
    out: list = []
    for j in range(1, 7):
        _collect(gc.submit(j), out)
    assert len(runner.tasks) == 2                 # 1 and 2 started at once (no waiting when idle)
    runner.run_next()
    assert seen == [[1]] and out == [("ok", 10)]
    assert len(runner.tasks) == 2                 # 3..6 went out together as soon as a slot was free
    runner.run_next()
    runner.run_next()
    assert seen == [[1], [2], [3, 4, 5, 6]]
    assert [r for _k, r in out] == [10, 20, 30, 40, 50, 60]
    assert gc.batches == 3 and gc.jobs == 6


def test_one_failing_job_fails_alone_and_a_crash_fails_the_batch() -> None:
    runner = ManualRunner()

    def work(jobs: list[int]) -> list[Any]:
        if 99 in jobs:
            raise RuntimeError("writer crashed")
        return [ValueError(j) if j < 0 else j for j in jobs]

    gc: GroupCommit[int] = GroupCommit(runner, work, max_inflight=1)
    out: list = []
    for j in (1, -2, 3):
        _collect(gc.submit(j), out)
    runner.run_next()                                  # [1]
    runner.run_next()                                  # [-2, 3]
    assert [k for k, _r in out] == ["ok", "err", "ok"]
    assert isinstance(out[1][1], ValueError)
    crash: list = []
    _collect(gc.submit(99), crash)
    _collect(gc.submit(4), crash)
    runner.run_next()                                  # [99] crashes
    runner.run_next()                                  # [4] still runs
    assert crash[0][0] == "err" and isinstance(crash[0][1], RuntimeError) and crash[1] == ("ok", 4)


def test_write_messages_batch(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_maildir(a, subfolder=False)
    make_maildir(b, subfolder=False)
    jobs = [(a, b"one\r\n", None, None), (tmp_path / "missing", b"lost\r\n", None, None),
            (b, b"two\r\n", "SF", 1_000_000_000.0), (a, b"three\r\n", None, None)]
    results = write_messages(jobs)
    assert isinstance(results[1], OSError)
    ok = [r for r in results if isinstance(r, WrittenMessage)]
    assert len(ok) == 3
    assert results[2].subdir == "cur" and results[2].filename.endswith(":2,FS")
    assert results[2].mtime == 1_000_000_000.0
    assert (b / "cur" / results[2].filename).read_bytes() == b"two\r\n"
    assert sorted((a / "new" / r.filename).read_bytes() for r in (results[0], results[3])) == [
        b"one\r\n", b"three\r\n"]
    assert all(r.size == len(j[1]) for r, j in zip(results, jobs) if isinstance(r, WrittenMessage))
    assert os.listdir(a / "tmp") == [] and os.listdir(b / "tmp") == []


def test_store_delivery_through_group_commit(tmp_path: Path) -> None:
    runner = ManualRunner()
    store = Store(tmp_path / "mail", runner=runner)
    try:
        store.create_user(USER)
        out: list = []
        for i in range(5):
            _collect(store.deliver(USER, make_message(i)), out)
        _collect(store.deliver(USER, make_message("bad"), flags="Z"), out)
        while runner.tasks:
            runner.run_next()
        assert [k for k, _r in out] == ["ok"] * 5 + ["err"]
        assert store._deliveries.batches < 6
        mb = store.mailbox(USER, "INBOX")
        assert len(mb.messages()) == 5
    finally:
        store.close()
