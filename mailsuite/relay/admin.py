"""`mailsuite queue list|flush [id]|delete id|bounce id`: the admin side of the relay queue.

When the server runs (it holds `<queue>/.lock`), changes are left as request files in `<queue>/control/`;
the server carries them out at its next scan (every `relay.scan_interval` seconds, 5 by default).  When it
does not run, the command changes the queue files itself (a bounce is then queued and sent at the next
start).  `list` only reads the envelope files, which are always replaced atomically.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from mailsuite.relay.queue import QUEUED, Queue, QueueEntry, sync_executor

__all__ = ["run", "queue_dir", "server_running", "list_entries", "format_list", "flush", "delete", "bounce"]


class _WallClock:
    @staticmethod
    def seconds() -> float:
        return time.time()


def queue_dir(settings: Any) -> Path:
    return Path(settings.data_dir) / "queue"


def server_running(qdir: Path) -> bool:
    """True when another process (the server) holds the queue lock."""
    lock = qdir / ".lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False


def list_entries(qdir: Path) -> list[QueueEntry]:
    entries = []
    if not qdir.is_dir():
        return entries
    for path in sorted(qdir.glob("*.json")):
        try:
            entries.append(QueueEntry.from_json(path.read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue          # replaced or removed while we looked
    return sorted(entries, key=lambda e: (e.created, e.id))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_list(entries: list[QueueEntry], now: float | None = None) -> str:
    """One block per message: id, age, size, sender; then each recipient still queued (or failed)."""
    now = time.time() if now is None else now
    if not entries:
        return "queue is empty"
    lines = []
    for e in entries:
        lines.append(f"{e.id}  age {_age(now - e.created)}  {e.size} bytes  from <{e.sender}>")
        for r in e.recipients:
            if r.status == QUEUED:
                when = "now" if r.next_attempt <= now else f"in {_age(r.next_attempt - now)}"
                lines.append(f"    <{r.address}>  queued, attempts {r.attempts}, next attempt {when}"
                             + (f", last error: {r.last_error}" if r.last_error else ""))
            else:
                lines.append(f"    <{r.address}>  {r.status}" + (f": {r.last_error}" if r.last_error else ""))
    lines.append(f"{len(entries)} message(s), "
                 f"{sum(1 for e in entries for r in e.recipients if r.status == QUEUED)} recipient(s) queued")
    return "\n".join(lines)


def _offline_queue(qdir: Path, settings: Any) -> Queue:
    q = Queue(qdir, settings=settings, clock=_WallClock(), executor=sync_executor)
    q.load(lock=True)
    return q


def _act(settings: Any, action: str, ident: str | None, out: TextIO) -> int:
    qdir = queue_dir(settings)
    if ident is not None and not any(e.id == ident for e in list_entries(qdir)):
        print(f"mailsuite: no message {ident} in the queue", file=sys.stderr)
        return 1
    if server_running(qdir):
        q = Queue(qdir, settings=settings, clock=_WallClock(), executor=sync_executor)
        q.request(action, ident)
        interval = getattr(getattr(settings, "relay", None), "scan_interval", 5.0)
        print(f"{action} {ident or 'all'}: handed to the running server (done within {interval:g} s)", file=out)
        return 0
    try:
        q = _offline_queue(qdir, settings)
    except RuntimeError:
        # the server started in the meantime
        return _act(settings, action, ident, out)
    try:
        if action == "flush":
            n = q.flush(ident)
            print(f"flush {ident or 'all'}: {n} recipient(s) due now; the server is not running, "
                  "delivery starts when it does", file=out)
        elif action == "delete":
            q.delete(ident)
            print(f"deleted {ident}", file=out)
        else:
            q.bounce(ident)
            print(f"bounced {ident}: a failure report to the sender is queued", file=out)
    finally:
        q.close()
    return 0


def flush(settings: Any, ident: str | None = None, out: TextIO = sys.stdout) -> int:
    return _act(settings, "flush", ident, out)


def delete(settings: Any, ident: str, out: TextIO = sys.stdout) -> int:
    return _act(settings, "delete", ident, out)


def bounce(settings: Any, ident: str, out: TextIO = sys.stdout) -> int:
    return _act(settings, "bounce", ident, out)


def run(settings: Any, action: str, ident: str | None = None, out: TextIO = sys.stdout) -> int:
    """Entry point for mailsuite/cli.py; returns the exit status."""
    if action == "list":
        print(format_list(list_entries(queue_dir(settings))), file=out)
        return 0
    if action in ("delete", "bounce") and not ident:
        print(f"mailsuite: queue {action} needs a message id (see `mailsuite queue list`)", file=sys.stderr)
        return 2
    if action not in ("flush", "delete", "bounce"):
        print(f"mailsuite: unknown queue action {action!r}", file=sys.stderr)
        return 2
    return _act(settings, action, ident, out)
