"""Group commit of deliveries: batching, per-job failures, and the batched Maildir writer."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet import defer

from mailsuite.store import Store
from mailsuite.store.groupcommit import GroupCommit, ThreadGroupCommit
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


class QueueReactor:
    """Stands in for the reactor of :class:`ThreadGroupCommit`: ``callFromThread`` queues the call, and
    the test runs the queued calls on its own thread, as the reactor thread would."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.put((fn, args))

    def run_one(self, timeout: float = 10.0) -> None:
        fn, args = self.calls.get(timeout=timeout)
        fn(*args)


def test_worker_thread_batches_what_arrives_while_it_writes() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def work(jobs: list[int]) -> list[Any]:
        seen.append(list(jobs))
        if jobs == [1]:
            started.set()
            assert release.wait(10)
        return [ValueError(j) if j < 0 else j * 10 for j in jobs]

    reactor = QueueReactor()
    gc: ThreadGroupCommit[int] = ThreadGroupCommit(work, max_batch=3, reactor=reactor)
    out: list = []
    _collect(gc.submit(1), out)
    assert started.wait(10)
    for j in (2, -3, 4, 5):                 # arrive while [1] is being written
        _collect(gc.submit(j), out)
    assert gc.busy
    release.set()
    for _ in range(3):
        reactor.run_one()
    assert seen == [[1], [2, -3, 4], [5]]     # at most max_batch at once, in arrival order
    assert [k for k, _r in out] == ["ok", "ok", "err", "ok", "ok"]
    assert [r for k, r in out if k == "ok"] == [10, 20, 40, 50]
    assert isinstance(out[2][1], ValueError)
    assert not gc.busy and gc.batches == 3 and gc.jobs == 5
    gc.stop()


def test_worker_thread_survives_a_crashing_batch_and_stops_after_its_jobs() -> None:
    def work(jobs: list[int]) -> list[Any]:
        if 99 in jobs:
            raise RuntimeError("writer crashed")
        return jobs

    reactor = QueueReactor()
    gc: ThreadGroupCommit[int] = ThreadGroupCommit(work, max_batch=1, reactor=reactor)
    out: list = []
    _collect(gc.submit(99), out)
    _collect(gc.submit(7), out)
    gc.stop()                               # returns once the worker has both batches done
    while not reactor.calls.empty():
        reactor.run_one()
    assert out[0][0] == "err" and isinstance(out[0][1], RuntimeError) and out[1] == ("ok", 7)
    late: list = []
    _collect(gc.submit(8), late)
    assert late[0][0] == "err"              # a stopped writer refuses (the SMTP client gets a 451)


def test_store_delivery_through_the_worker_thread(tmp_path: Path) -> None:
    reactor = QueueReactor()
    store = Store(tmp_path / "mail")
    store._deliveries._reactor = reactor
    try:
        store.create_user(USER)
        out: list = []
        for i in range(4):
            _collect(store.deliver(USER, make_message(i)), out)
        while len(out) < 4:
            reactor.run_one()
        assert [k for k, _r in out] == ["ok"] * 4
        assert len(store.mailbox(USER, "INBOX").messages()) == 4
    finally:
        store.close()


def test_write_messages_without_syncfs_fsyncs_each(tmp_path: Path, monkeypatch) -> None:
    import mailsuite.store.maildir as maildir_mod

    calls: list[str] = []
    monkeypatch.setattr(maildir_mod, "syncfs_covers", lambda _dev, _fd: False)   # e.g. NFS or FUSE
    real_fsync = os.fsync
    monkeypatch.setattr(maildir_mod.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    a, b = tmp_path / "a", tmp_path / "b"
    make_maildir(a, subfolder=False)
    make_maildir(b, subfolder=False)
    calls.clear()
    results = write_messages([(a, b"one\r\n", None, None), (b, b"two\r\n", None, None), (a, b"3\r\n", None, None)])
    assert all(isinstance(r, WrittenMessage) for r in results)
    assert calls == ["fsync"] * 5           # three files, two directories
    assert sorted(os.listdir(a / "new")) == sorted(r.filename for r in (results[0], results[2]))


def test_write_messages_failed_final_flush_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import mailsuite.store.maildir as maildir_mod

    from mailsuite.store import flush

    if not flush.have_syncfs():
        pytest.skip("needs syncfs (Linux)")
    flushes: list[int] = []

    def failing_second(fd: int) -> None:
        flushes.append(fd)
        if len(flushes) == 2:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir_mod, "syncfs", failing_second)
    a = tmp_path / "a"
    make_maildir(a, subfolder=False)
    results = write_messages([(a, b"one\r\n", None, None), (a, b"two\r\n", "S", None)])
    assert all(isinstance(r, OSError) and r.errno == 5 for r in results)
    assert os.listdir(a / "new") == [] and os.listdir(a / "cur") == [] and os.listdir(a / "tmp") == []


def test_write_messages_links_one_content_for_several_folders(tmp_path: Path) -> None:
    """One message to three users (the same ``data`` object): one file written, two hard links; another
    message with equal bytes but its own object, or another mtime, gets a file of its own."""
    dirs = [tmp_path / n for n in "abcd"]
    for d in dirs:
        make_maildir(d, subfolder=False)
    data = b"Subject: list\r\n\r\nhello\r\n"
    other = bytes(bytearray(data))
    results = write_messages([(dirs[0], data, None, None), (dirs[1], data, "S", None),
                              (dirs[2], data, None, None), (dirs[3], other, None, None),
                              (dirs[0], data, None, 1_000_000.0)])
    assert all(isinstance(r, WrittenMessage) for r in results)
    paths = [d / r.subdir / r.filename for d, r in zip([*dirs, dirs[0]], results)]
    assert len({p.name for p in paths}) == 5                      # each link has a unique name of its own
    inodes = [p.stat().st_ino for p in paths]
    assert inodes[0] == inodes[1] == inodes[2] and len(set(inodes)) == 3
    assert os.stat(paths[0]).st_nlink == 3
    assert all(p.read_bytes() == data for p in paths)
    assert all(os.listdir(d / "tmp") == [] for d in dirs)
    os.unlink(paths[1])                                          # an expunge in one folder leaves the others
    assert paths[0].read_bytes() == data and os.stat(paths[0]).st_nlink == 2


def test_write_messages_writes_a_copy_where_a_link_fails(tmp_path: Path, monkeypatch) -> None:
    import mailsuite.store.maildir as maildir_mod

    def no_link(_src: str, _dst: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(maildir_mod.os, "link", no_link)
    a, b = tmp_path / "a", tmp_path / "b"
    make_maildir(a, subfolder=False)
    make_maildir(b, subfolder=False)
    data = b"x\r\n"
    results = write_messages([(a, data, None, None), (b, data, None, None)])
    assert all(isinstance(r, WrittenMessage) for r in results)
    assert (a / "new" / results[0].filename).stat().st_ino != (b / "new" / results[1].filename).stat().st_ino


def test_write_messages_link_fails_with_its_file_when_fsync_fails(tmp_path: Path, monkeypatch) -> None:
    """Per-file flushing (no syncfs): a link shares its file's fsync, and its failure."""
    import mailsuite.store.maildir as maildir_mod

    monkeypatch.setattr(maildir_mod, "syncfs_covers", lambda _dev, _fd: False)

    def failing_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    a, b = tmp_path / "a", tmp_path / "b"
    make_maildir(a, subfolder=False)
    make_maildir(b, subfolder=False)
    monkeypatch.setattr(maildir_mod.os, "fsync", failing_fsync)
    data = b"x\r\n"
    results = write_messages([(a, data, None, None), (b, data, None, None)])
    assert all(isinstance(r, OSError) and r.errno == 5 for r in results)
    assert all(os.listdir(d / sub) == [] for d in (a, b) for sub in ("new", "cur", "tmp"))


def test_smtp_style_delivery_to_many_users_shares_one_inode(tmp_path: Path) -> None:
    """A batch of deliveries of one bytes object to several users (what SMTP's Delivery submits) links them."""
    store = Store(tmp_path / "mail", runner=ManualRunner())
    users = [f"u{i}@example.org" for i in range(3)]
    for u in users:
        store.create_user(u)
    data = make_message(1)
    results = store._write_deliveries([(u, data, "INBOX", "", True) for u in users])
    assert [name for name, _w in results] == ["INBOX"] * 3
    files = [next((store.user_dir(u) / "new").iterdir()) for u in users]
    assert len({f.stat().st_ino for f in files}) == 1


def test_delivery_rechecks_a_folder_that_vanished(tmp_path: Path) -> None:
    """The folder checks are reused for a second; a folder removed behind the store's back meanwhile
    makes the delivery check again and fall back to INBOX instead of failing."""
    import shutil

    from .store_helpers import inline_runner, result_of

    store = Store(tmp_path / "mail", runner=inline_runner)
    try:
        store.create_user(USER)
        store.create_mailbox(USER, "Work")
        result_of(store.deliver(USER, make_message(1), folder="Work"))
        shutil.rmtree(store.user_dir(USER) / ".Work")
        result_of(store.deliver(USER, make_message(2), folder="Work"))
        assert len(store.mailbox(USER, "INBOX").messages()) == 1
    finally:
        store.close()
