"""The durable outbound queue: `<data_dir>/queue/`, one message file and one envelope file per message.

Layout: `<id>.eml` (the message as received, CRLF line ends), `<id>.json` (envelope, per-recipient status),
`.tmp-*` (files being written, removed at start), `control/` (requests from `mailsuite queue ...`),
`.lock` (held by the running server so the admin command knows whether to act itself).

Durability (RFC 5321 §4.5.4.1, §6.1: once we say 250 the message is ours): `enqueue()` writes and fsyncs the
message, then the envelope, renames both into place and fsyncs the directory before its Deferred fires.
Every recipient's outcome is written (atomically, fsynced) as soon as the remote answers, so a crash after
a remote 250 does not send to that recipient again.  Recipients are grouped into jobs per destination
domain; each recipient has its own retry schedule:

- 2xx: done; 5xx: failed, a bounce goes to the sender (never to the null sender, RFC 5321 §6.2/§4.5.5);
- 4xx, connection or DNS trouble: retried after `first_retry`, doubling up to `max_retry_interval`
  (RFC 5321 §4.5.4.1); after `delay_warning` a "delayed" DSN (once); after `max_lifetime` it fails.

Bounces are RFC 3464 reports (`mailsuite.relay.dsn`) queued here with the null reverse-path; the delivery
side hands those for local domains to the store.  All time comes from the injected `clock`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailsuite.relay.client import Recipient, Reply
from mailsuite.relay.dsn import DSNRecipient, build_report, status_of

__all__ = ["Queue", "Job", "QueueEntry", "RecipientState", "QueuePolicy", "sync_executor", "CONTROL_ACTIONS"]

log = Logger()

QUEUED, SENT, FAILED = "queued", "sent", "failed"
CONTROL_ACTIONS = ("flush", "delete", "bounce")
_ID_RE = re.compile(r"^[0-9a-f]{12,40}$")


@dataclass(frozen=True)
class QueuePolicy:
    """Retry schedule (seconds). Defaults follow Postfix; see `from_settings` for the config keys."""
    first_retry: float = 300.0
    max_retry_interval: float = 3600.0
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0      # 0 = never warn

    @classmethod
    def from_settings(cls, settings: Any) -> "QueuePolicy":
        relay = getattr(settings, "relay", None)
        return cls(
            first_retry=float(getattr(relay, "first_retry", cls.first_retry)),
            max_retry_interval=float(getattr(relay, "max_retry_interval", cls.max_retry_interval)),
            max_lifetime=float(getattr(relay, "max_lifetime", cls.max_lifetime)),
            delay_warning=float(getattr(relay, "delay_warning", cls.delay_warning)),
        )

    def backoff(self, attempts: int) -> float:
        """Wait after the n-th failed attempt: first_retry, doubled each time, at most max_retry_interval."""
        delay = self.first_retry * (2 ** max(0, min(attempts - 1, 30)))
        return min(delay, max(self.max_retry_interval, self.first_retry))


@dataclass
class RecipientState:
    address: str
    notify: str | None = None          # RFC 3461 NOTIFY as received
    orcpt: str | None = None           # RFC 3461 ORCPT as received, decoded "type;addr"
    status: str = QUEUED
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_error: str = ""
    dsn_status: str = ""               # RFC 3463 status for the report
    remote: str | None = None          # the host that gave the last answer
    warned: bool = False               # a "delayed" DSN went out
    dsn_pending: bool = False          # a failure/relay DSN is owed (survives a crash)
    dsn_action: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def wants(self, kind: str) -> bool:
        """RFC 3461 §4.1: absent NOTIFY means FAILURE (and we also send DELAY); NEVER means nothing."""
        if self.notify is None:
            return kind in ("FAILURE", "DELAY")
        words = {w.strip().upper() for w in self.notify.split(",")}
        return "NEVER" not in words and kind in words


@dataclass
class QueueEntry:
    id: str
    sender: str
    created: float
    size: int
    recipients: list[RecipientState]
    ret: str | None = None
    envid: str | None = None
    lock: defer.DeferredLock = field(default_factory=defer.DeferredLock, repr=False, compare=False)
    reporting: set[str] = field(default_factory=set, repr=False, compare=False)   # DSNs being made now

    def to_json(self) -> str:
        d = {"version": 1, "id": self.id, "sender": self.sender, "created": self.created, "size": self.size,
             "ret": self.ret, "envid": self.envid, "recipients": [asdict(r) for r in self.recipients]}
        return json.dumps(d, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "QueueEntry":
        d = json.loads(text)
        names = set(RecipientState.__dataclass_fields__)
        rcpts = [RecipientState(**{k: v for k, v in r.items() if k in names}) for r in d["recipients"]]
        return cls(id=d["id"], sender=d["sender"], created=float(d["created"]), size=int(d.get("size", 0)),
                   recipients=rcpts, ret=d.get("ret"), envid=d.get("envid"))

    def recipient(self, address: str) -> RecipientState | None:
        for r in self.recipients:
            if r.address == address:
                return r
        return None

    @property
    def finished(self) -> bool:
        return all(r.status != QUEUED and not r.dsn_pending for r in self.recipients)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == QUEUED]


@dataclass(frozen=True)
class Job:
    """One delivery attempt unit: the due recipients of one message at one destination domain."""
    id: str
    domain: str
    sender: str
    recipients: tuple[Recipient, ...]
    size: int
    ret: str | None = None
    envid: str | None = None

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(message id, recipient address) of every recipient in this job (the in-flight markers)."""
        return [(self.id, r.address) for r in self.recipients]


Executor = Callable[..., defer.Deferred]


def sync_executor(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """Run blocking work inline (the admin command, which has no reactor running)."""
    return defer.maybeDeferred(fn, *args)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to a temp name, fsync, rename over `path` (atomic, RFC 5321 §6.1 durability)."""
    tmp = path.parent / f".tmp-{path.name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def new_id(now: float) -> str:
    return f"{int(now * 1_000_000):x}{secrets.token_hex(4)}"


class Queue:
    """The outbound queue (see the module docstring)."""

    def __init__(self, dir: Path | str, *, settings: Any = None, hostname: str | None = None,
                 clock: Any = None, executor: Executor | None = None, reactor: Any = None) -> None:
        self.dir = Path(dir)
        self.control_dir = self.dir / "control"
        self.settings = settings
        self.policy = QueuePolicy.from_settings(settings)
        self.hostname = hostname or getattr(settings, "hostname", None) or "localhost"
        if reactor is None and (clock is None or executor is None):
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.clock = clock if clock is not None else reactor
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._run: Executor = executor if executor is not None else self._in_pool
        self._entries: dict[str, QueueEntry] = {}
        self._in_flight: set[tuple[str, str]] = set()     # (message id, recipient) being attempted now
        relay = getattr(settings, "relay", None)
        # RFC 5321 §4.5.3.1.8 lets a server stop at 100 recipients per transaction; stay below (Postfix: 50)
        self.max_recipients_per_job = max(1, int(getattr(relay, "max_recipients_per_transaction", 50)))
        self._lock_fd: int | None = None
        self.listeners: list[Callable[[], None]] = []   # told when there may be new work

    # -------------------------------------------------------------------------------- start and stop

    def now(self) -> float:
        return float(self.clock.seconds())

    def load(self, *, lock: bool = True) -> None:
        """Read the queue from disk (blocking; at start-up). `lock`: take the running-server lock."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.control_dir.mkdir(exist_ok=True, mode=0o700)
        if lock:
            self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lock_fd)
                self._lock_fd = None
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise RuntimeError(f"the queue {self.dir} is in use by another mailsuite process") from None
                raise
        self._entries.clear()
        names = {p.name for p in self.dir.iterdir()}
        for name in names:
            if name.startswith(".tmp-"):
                # an interrupted write: never acknowledged (enqueue) or superseded by the old file (update)
                (self.dir / name).unlink(missing_ok=True)
        for name in sorted(names):
            if not name.endswith(".json") or name.startswith("."):
                continue
            ident = name[:-5]
            path = self.dir / name
            try:
                entry = QueueEntry.from_json(path.read_text("utf-8"))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("relay queue: unreadable envelope {path}: {exc}; moved aside", path=path, exc=exc)
                path.rename(self.dir / (name + ".corrupt"))
                continue
            if f"{ident}.eml" not in names:
                log.error("relay queue: {id} has no message file; dropped", id=ident)
                path.unlink()
                continue
            self._entries[ident] = entry
        for name in names:
            if name.endswith(".eml") and not name.startswith(".") and name[:-4] not in self._entries \
                    and f"{name[:-4]}.json.corrupt" not in names:
                # message written but envelope not: the enqueue never completed, nobody was told 250
                (self.dir / name).unlink(missing_ok=True)

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Blocking file work (writes, fsync, reads) in the queue's own small thread pool."""
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=4, name="mailsuite-queue")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        return threads.deferToThreadPool(self._reactor, self._pool, fn, *args)

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def close(self) -> None:
        """Release the lock and the thread pool (the service is stopping)."""
        self._stop_pool()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def resume(self) -> defer.Deferred:
        """Finish work a crash interrupted: DSNs owed, finished entries not yet removed."""
        ds = []
        for entry in list(self._entries.values()):
            ds.append(self._after_update(entry))
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # ------------------------------------------------------------------------------------------ enqueue

    def enqueue(self, sender: str, recipients: Iterable[str], data: bytes,
                dsn: dict | None = None) -> defer.Deferred:
        """Queue a message; fires with its id once message and envelope are on disk (fsynced).

        `dsn` (RFC 3461, as received on submission): {"ret": "FULL"|"HDRS"|None, "envid": str|None,
        "recipients": {address: {"notify": "SUCCESS,DELAY"|"NEVER"|None, "orcpt": "rfc822;addr"|None}}}.
        """
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            return defer.fail(ValueError("no recipients"))
        for r in rcpts:
            if "@" not in r:
                return defer.fail(ValueError(f"not a domain address: {r!r}"))
        dsn = dsn or {}
        per = dsn.get("recipients") or {}
        now = self.now()
        ident = new_id(time.time())
        states = [RecipientState(address=r, notify=(per.get(r) or {}).get("notify"),
                                 orcpt=(per.get(r) or {}).get("orcpt"), next_attempt=now) for r in rcpts]
        ret = dsn.get("ret")
        entry = QueueEntry(id=ident, sender=sender, created=now, size=len(data), recipients=states,
                           ret=ret.upper() if isinstance(ret, str) else None, envid=dsn.get("envid"))
        text = entry.to_json().encode("utf-8")

        def write() -> None:
            _write_file(self.dir / f"{ident}.eml", data)
            _write_file(self.dir / f"{ident}.json", text)
            _fsync_dir(self.dir)

        def done(_: Any) -> str:
            self._entries[ident] = entry
            log.info("relay queue: {id} queued from <{sender}> to {n} recipient(s)", id=ident, sender=sender,
                     n=len(rcpts))
            self._notify()
            return ident

        return self._run(write).addCallback(done)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.failure("relay queue listener failed")

    # -------------------------------------------------------------------------------------- inspection

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ident: str) -> bool:
        return ident in self._entries

    def entries(self) -> list[QueueEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.created, e.id))

    def get(self, ident: str) -> QueueEntry | None:
        return self._entries.get(ident)

    def read(self, ident: str) -> defer.Deferred:
        """The message bytes (off the reactor thread)."""
        return self._run((self.dir / f"{ident}.eml").read_bytes)

    # ----------------------------------------------------------------------------------------- jobs

    def due_jobs(self, now: float | None = None) -> list[Job]:
        """Jobs due now, grouped per (message, destination domain); they are in flight until recorded."""
        now = self.now() if now is None else now
        jobs: list[Job] = []
        for entry in self.entries():
            by_domain: dict[str, list[RecipientState]] = {}
            for r in entry.pending():
                if r.next_attempt <= now and (entry.id, r.address) not in self._in_flight:
                    by_domain.setdefault(r.domain, []).append(r)
            for domain, rs in by_domain.items():
                step = self.max_recipients_per_job
                for start in range(0, len(rs), step):
                    batch = tuple(Recipient(r.address, r.notify, r.orcpt) for r in rs[start:start + step])
                    job = Job(id=entry.id, domain=domain, sender=entry.sender, recipients=batch,
                              size=entry.size, ret=entry.ret, envid=entry.envid)
                    self._in_flight.update(job.keys)
                    jobs.append(job)
        return jobs

    def next_wakeup(self) -> float | None:
        """The earliest next_attempt among queued recipients not in flight."""
        times = [r.next_attempt for e in self._entries.values() for r in e.pending()
                 if (e.id, r.address) not in self._in_flight]
        return min(times) if times else None

    def release(self, job: Job) -> None:
        """Give a job back without an attempt (e.g. the service is stopping)."""
        self._in_flight.difference_update(job.keys)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def record(self, job: Job, outcomes: Iterable[tuple[str, Reply]], *, remote: str | None = None,
               dsn_passed: bool = True) -> defer.Deferred:
        """Store the outcome of an attempt for some or all of the job's recipients (durably), then send
        the DSNs it calls for.  `dsn_passed`: the next hop took our NOTIFY (RFC 3461 §6.2.6.2)."""
        self._in_flight.difference_update(job.keys)
        entry = self._entries.get(job.id)
        if entry is None:
            return defer.succeed(None)        # deleted or bounced meanwhile
        now = self.now()
        delayed: list[RecipientState] = []
        for address, reply in outcomes:
            r = entry.recipient(address)
            if r is None or r.status != QUEUED:
                continue
            r.attempts += 1
            r.last_attempt = now
            r.remote = remote
            r.last_error = str(reply)
            if reply.positive:
                r.status = SENT
                if r.wants("SUCCESS") and not dsn_passed and entry.sender:
                    r.dsn_pending, r.dsn_action, r.dsn_status = True, "relayed", status_of(reply.code,
                                                                                            reply.enhanced)
                log.info("relay: {id} to <{rcpt}> sent via {remote}: {reply}", id=entry.id, rcpt=address,
                         remote=remote or "local delivery", reply=str(reply))
            elif reply.permanent:
                self._fail(entry, r, status_of(reply.code, reply.enhanced))
                log.info("relay: {id} to <{rcpt}> failed: {reply}", id=entry.id, rcpt=address, reply=str(reply))
            elif now - entry.created >= self.policy.max_lifetime:
                # RFC 5321 §4.5.4.1: give up after the lifetime; the report says why it was still failing.
                r.last_error = f"{reply} (gave up after {self._span(now - entry.created)})"
                self._fail(entry, r, status_of(reply.code, reply.enhanced) if reply.transient else "4.4.7")
                log.info("relay: {id} to <{rcpt}> expired: {reply}", id=entry.id, rcpt=address, reply=str(reply))
            else:
                r.next_attempt = now + self.policy.backoff(r.attempts)
                if self.policy.delay_warning > 0 and now - entry.created >= self.policy.delay_warning \
                        and not r.warned and entry.sender and r.wants("DELAY"):
                    r.warned = True
                    r.dsn_status = status_of(reply.code, reply.enhanced)
                    delayed.append(r)
                log.info("relay: {id} to <{rcpt}> deferred ({reply}), next attempt in {wait}", id=entry.id,
                         rcpt=address, reply=str(reply), wait=self._span(r.next_attempt - now))
        d = self._save(entry)
        if delayed:
            d.addCallback(lambda _: self._send_dsn(entry, "delayed", delayed))
        d.addCallback(lambda _: self._after_update(entry))
        return d

    def _fail(self, entry: QueueEntry, r: RecipientState, status: str) -> None:
        r.status = FAILED
        r.dsn_status = status
        # RFC 3461 §6.2: no report for NOTIFY=NEVER; never one for a null reverse-path (RFC 5321 §4.5.5).
        if entry.sender and r.wants("FAILURE"):
            r.dsn_pending, r.dsn_action = True, "failed"

    @staticmethod
    def _span(seconds: float) -> str:
        seconds = max(0, int(seconds))
        if seconds >= 86400:
            return f"{seconds / 86400:.1f} days"
        if seconds >= 3600:
            return f"{seconds / 3600:.1f} h"
        return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"

    # ---------------------------------------------------------------------------------------- storage

    def _save(self, entry: QueueEntry) -> defer.Deferred:
        """Write the envelope (atomic, fsynced); writes of one entry happen in order."""
        def locked() -> defer.Deferred:
            if self._entries.get(entry.id) is not entry:
                return defer.succeed(None)
            text = entry.to_json().encode("utf-8")

            def write() -> None:
                _write_file(self.dir / f"{entry.id}.json", text)
                _fsync_dir(self.dir)
            return self._run(write)
        return entry.lock.run(locked)

    def _remove(self, entry: QueueEntry) -> defer.Deferred:
        self._entries.pop(entry.id, None)

        def unlink() -> None:
            (self.dir / f"{entry.id}.json").unlink(missing_ok=True)
            (self.dir / f"{entry.id}.eml").unlink(missing_ok=True)
            _fsync_dir(self.dir)
        return entry.lock.run(lambda: self._run(unlink))

    def _after_update(self, entry: QueueEntry) -> defer.Deferred:
        """Send owed failure/relay DSNs, then drop the entry once every recipient is final."""
        d = defer.succeed(None)
        for action in ("failed", "relayed"):
            owed = [r for r in entry.recipients if r.dsn_pending and r.dsn_action == action
                    and r.address not in entry.reporting]
            # claimed at once, so a concurrent update of the same message does not report them again
            entry.reporting.update(r.address for r in owed)
            if owed:
                d.addCallback(lambda _, a=action, o=owed: self._send_dsn(entry, a, o))

                def clear(_: Any, o: list[RecipientState] = owed) -> defer.Deferred:
                    for r in o:
                        r.dsn_pending = False
                        entry.reporting.discard(r.address)
                    return self._save(entry)

                def unclaim(failure: Any, o: list[RecipientState] = owed) -> Any:
                    for r in o:
                        entry.reporting.discard(r.address)
                    return failure
                d.addCallbacks(clear, unclaim)

        def maybe_remove(_: Any) -> defer.Deferred | None:
            if entry.finished and self._entries.get(entry.id) is entry and \
                    not any(k[0] == entry.id for k in self._in_flight):
                return self._remove(entry)
            return None
        d.addCallback(maybe_remove)
        return d

    def _send_dsn(self, entry: QueueEntry, action: str, rcpts: list[RecipientState]) -> defer.Deferred:
        if not entry.sender or not rcpts:
            return defer.succeed(None)
        until = entry.created + self.policy.max_lifetime if action == "delayed" else None
        report_rcpts = [DSNRecipient(address=r.address, status=r.dsn_status or "5.0.0", diagnostic=r.last_error,
                                     orcpt=r.orcpt, remote_mta=r.remote, last_attempt=r.last_attempt,
                                     will_retry_until=until) for r in rcpts]

        def build(original: bytes) -> bytes:
            return build_report(action=action, reporting_mta=self.hostname, to=entry.sender,
                                recipients=report_rcpts, original=original, arrival=entry.created,
                                envid=entry.envid, ret=entry.ret, now=self.now())

        def queue_it(report: bytes) -> defer.Deferred:
            log.info("relay: {action} DSN for {id} to <{sender}>", action=action, id=entry.id, sender=entry.sender)
            # RFC 3461 §6.2 / RFC 5321 §4.5.5: reports travel with the null reverse-path.
            return self.enqueue("", [entry.sender], report)

        def missing(failure: Any) -> bytes:
            failure.trap(OSError)
            return b"\r\n"
        return self.read(entry.id).addErrback(missing).addCallback(build).addCallback(queue_it)

    # ---------------------------------------------------------------------------------- admin actions

    def flush(self, ident: str | None = None) -> int:
        """Make queued recipients (of one message, or all) due now; returns how many."""
        now = self.now()
        count = 0
        for entry in ([self._entries[ident]] if ident in self._entries else [] if ident else self.entries()):
            pending = entry.pending()
            for r in pending:
                r.next_attempt = min(r.next_attempt, now)
            if pending:
                count += len(pending)
                self._save(entry).addErrback(lambda f: log.failure("relay queue: saving a flush failed", f))
        if count:
            self._notify()
        return count

    def delete(self, ident: str) -> defer.Deferred:
        """Remove a message without any report."""
        entry = self._entries.get(ident)
        if entry is None:
            return defer.fail(KeyError(ident))
        log.info("relay queue: {id} deleted by the administrator", id=ident)
        return self._remove(entry)

    def bounce(self, ident: str) -> defer.Deferred:
        """Fail every queued recipient now and return the message to its sender."""
        entry = self._entries.get(ident)
        if entry is None:
            return defer.fail(KeyError(ident))
        for r in entry.pending():
            r.last_error = "message returned to the sender by the administrator"
            r.last_attempt = self.now()
            self._fail(entry, r, "5.0.0")
        log.info("relay queue: {id} bounced by the administrator", id=ident)
        return self._save(entry).addCallback(lambda _: self._after_update(entry))

    def request(self, action: str, ident: str | None) -> Path:
        """Leave a request for the running server (the admin command does this)."""
        if action not in CONTROL_ACTIONS:
            raise ValueError(action)
        self.control_dir.mkdir(parents=True, exist_ok=True)
        path = self.control_dir / f"{action}.{ident or 'all'}.{secrets.token_hex(4)}"
        _write_file(path, b"")
        _fsync_dir(self.control_dir)
        return path

    def process_control(self) -> defer.Deferred:
        """Carry out the requests in `control/` (periodically in the server; inline in the admin command)."""
        try:
            names = sorted(os.listdir(self.control_dir))
        except FileNotFoundError:
            return defer.succeed([])
        ds = []
        results: list[str] = []
        for name in names:
            if name.startswith("."):
                continue
            action, _, rest = name.partition(".")
            ident = rest.rpartition(".")[0]
            (self.control_dir / name).unlink(missing_ok=True)
            if action not in CONTROL_ACTIONS or not (ident == "all" or _ID_RE.match(ident)):
                log.warn("relay queue: ignored control file {name}", name=name)
                continue
            if action == "flush":
                n = self.flush(None if ident == "all" else ident)
                results.append(f"flush {ident}: {n} recipient(s) due now")
            elif ident in self._entries:
                d = self.delete(ident) if action == "delete" else self.bounce(ident)
                d.addErrback(lambda f: log.failure("relay queue: control action failed", f))
                ds.append(d)
                results.append(f"{action} {ident}")
            else:
                results.append(f"{action} {ident}: no such message")
        return defer.gatherResults(ds).addCallback(lambda _: results)
