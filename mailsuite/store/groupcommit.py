"""Group commit: deliveries that arrive while others are being written share one round of disk flushes.

Each SMTP delivery needs two flushes (the file, then its directory) before the 250 (DESIGN §3).  Run one
thread task per delivery and ten concurrent sessions mean ten threads each waiting on its own flushes and
contending for the GIL with the reactor thread.  Here a batch runs while what arrives meanwhile waits and
goes together in the next batch (:func:`~mailsuite.store.maildir.write_messages` writes all, flushes them
with one ``syncfs`` per file system, renames all, flushes again).  With no load a delivery starts at once,
so latency does not suffer; under load the flushes per message fall.  :class:`ThreadGroupCommit` (the
server) has worker threads of its own; :class:`GroupCommit` runs batches through a runner (tests).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["GroupCommit", "ThreadGroupCommit"]

J = TypeVar("J")

#: Runs a blocking callable off the reactor thread and fires (on the reactor thread) with its result.
Runner = Callable[[Callable[[], Any]], defer.Deferred]


class GroupCommit(Generic[J]):
    """Batches jobs for ``work(jobs) -> [result or exception per job]``, run through ``runner``."""

    def __init__(self, runner: Runner, work: Callable[[list[J]], list[Any]], max_inflight: int = 2,
                 max_batch: int = 64) -> None:
        self._runner = runner
        self._work = work
        self._max_inflight = max(1, max_inflight)
        self._max_batch = max(1, max_batch)
        self._pending: list[tuple[J, defer.Deferred]] = []
        self._inflight = 0
        #: batches run so far and jobs in them (for tests and the benchmark notes)
        self.batches = 0
        self.jobs = 0

    @property
    def busy(self) -> bool:
        """True while a batch runs or jobs wait."""
        return self._inflight > 0 or bool(self._pending)

    def submit(self, job: J) -> defer.Deferred:
        """Queue ``job``; the Deferred fires with its result or fails with its exception."""
        d: defer.Deferred = defer.Deferred()
        self._pending.append((job, d))
        self._kick()
        return d

    def _kick(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            self.batches += 1
            self.jobs += len(batch)
            jobs = [job for job, _d in batch]
            self._runner(lambda jobs=jobs: self._work(jobs)).addBoth(self._done, batch)

    def _done(self, results: Any, batch: list[tuple[J, defer.Deferred]]) -> None:
        self._inflight -= 1
        _answer(batch, results)
        self._kick()


def _answer(batch: list[tuple[Any, defer.Deferred]], results: Any) -> None:
    """Fire each job's Deferred with its result (an exception fails that job), or all with a Failure."""
    if isinstance(results, Failure):
        for _job, d in batch:
            d.errback(results)
        return
    for (_job, d), result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            d.errback(Failure(result))
        else:
            d.callback(result)


class ThreadGroupCommit(Generic[J]):
    """:class:`GroupCommit` with worker threads of its own instead of a runner (the server's delivery path).

    A worker takes whatever jobs wait (at most ``max_batch``), runs ``work`` on them, hands the results to
    the reactor thread with one ``callFromThread`` per batch and goes straight on with the jobs that arrived
    meanwhile.  Per batch that is one wake-up of a worker (only if one was idle) and one of the reactor,
    where ``deferToThread`` per batch cost a thread-pool round and a reactor round in between, each with
    its GIL hand-offs.  With ``threads`` > 1 a second batch is written while the first waits for the disk.
    The threads start with the first job and stop (after the jobs they have) at :meth:`stop` or at reactor
    shutdown.
    """

    def __init__(self, work: Callable[[list[J]], list[Any]], max_batch: int = 64, reactor: Any = None,
                 threads: int = 1, name: str = "mailsuite-delivery") -> None:
        self._work = work
        self._max_batch = max(1, max_batch)
        self._reactor = reactor
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[tuple[J, defer.Deferred]] = deque()
        self._idle = 0                      # workers waiting on _cond (a submit must notify one)
        self._stopping = False
        self._count = max(1, threads)
        self._threads: list[threading.Thread] = []
        self._running = 0                   # jobs handed to the workers and not yet answered
        self.batches = 0
        self.jobs = 0

    @property
    def busy(self) -> bool:
        """True while jobs wait or run (read on the reactor thread)."""
        return self._running > 0

    def submit(self, job: J) -> defer.Deferred:
        """Queue ``job``; the Deferred fires on the reactor thread with its result or its exception."""
        if not self._threads:
            self._start()
        if self._stopping:
            return defer.fail(RuntimeError("the delivery writer is stopped"))
        d: defer.Deferred = defer.Deferred()
        self._running += 1
        with self._cond:
            self._pending.append((job, d))
            if self._idle:
                self._cond.notify()
        return d

    def _start(self) -> None:
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        for n in range(self._count):
            thread = threading.Thread(target=self._loop, name=f"{self._name}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        add_trigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            add_trigger("during", "shutdown", self.stop)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Let the workers finish the jobs they have, then end them (blocking; idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if not self._pending:
                    return
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))]
            try:
                results: Any = self._work([job for job, _d in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"group commit: {len(results)} results for {len(batch)} jobs")
            except BaseException as e:  # noqa: BLE001 - the whole batch fails; the worker goes on
                results = Failure(e)
            self._reactor.callFromThread(self._done, batch, results)

    def _done(self, batch: list[tuple[J, defer.Deferred]], results: Any) -> None:
        self._running -= len(batch)
        self.batches += 1
        self.jobs += len(batch)
        _answer(batch, results)
