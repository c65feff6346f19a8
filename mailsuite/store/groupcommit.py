"""Group commit: deliveries that arrive while others are being written share one round of disk flushes.

Each SMTP delivery needs two flushes (the file, then its directory) before the 250 (DESIGN §3).  Run one
thread task per delivery and ten concurrent sessions mean ten threads each waiting on its own flushes and
contending for the GIL with the reactor thread.  Here at most ``max_inflight`` batches run at once; what
arrives meanwhile waits and goes together in the next batch (:func:`~mailsuite.store.maildir.write_messages`
writes all, fsyncs all, links all, then fsyncs each directory once).  With no load a delivery starts at once,
so latency does not suffer; under load the flushes per message fall.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["GroupCommit"]

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
        if isinstance(results, Failure):
            for _job, d in batch:
                d.errback(results)
        else:
            for (_job, d), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    d.errback(Failure(result))
                else:
                    d.callback(result)
        self._kick()
