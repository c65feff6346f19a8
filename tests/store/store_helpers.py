"""Helpers for the store tests: an inline runner, Deferred results, sample messages."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

USER = "alice@example.org"


def inline_runner(fn):
    """Runner for Store: run the blocking work now and return an already-fired Deferred."""
    return defer.maybeDeferred(fn)


def result_of(d: defer.Deferred):
    """The result of an already-fired Deferred (raise its failure)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def make_message(n: int | str, body: bytes = b"body\r\n") -> bytes:
    return b"From: a@example.com\r\nSubject: message %s\r\nMessage-ID: <%s@t>\r\n\r\n" % (
        str(n).encode(), str(n).encode()) + body




def fresh_folder(root, files, data: bytes | None = None):
    """A store (inline runner) whose INBOX holds ``files`` and has no index yet, so its next open is a
    first scan.  Each file is ``(subdir, filename[, data[, mtime]])``; without its own data a file holds
    ``data``, or else a small message."""
    import os

    from mailsuite.store import Store

    s = Store(root, runner=inline_runner)
    s.create_user(USER)
    inbox = s.mailbox(USER, "INBOX").dir
    s.close()
    for f in root.rglob("mailsuite-index.sqlite*"):
        f.unlink()
    for sub, fn, *rest in files:
        p = inbox / sub / fn
        p.write_bytes(rest[0] if rest else data if data is not None else make_message(fn))
        if len(rest) > 1 and rest[1] is not None:
            os.utime(p, (rest[1], rest[1]))
    return Store(root, runner=inline_runner)


def defer_bulk_rows(monkeypatch, chunk=None, checkpoint=None, later=None):
    """Make a first scan of 10+ messages write its index rows in the background, with the writer's
    scheduled steps collected in the returned list (call them to run the writer) instead of the reactor."""
    from mailsuite.store import mailbox as mailbox_mod

    steps: list = []
    monkeypatch.setattr(mailbox_mod, "_BULK_DEFER", 10)
    if chunk is not None:
        monkeypatch.setattr(mailbox_mod, "_BULK_CHUNK", chunk)
    if checkpoint is not None:
        monkeypatch.setattr(mailbox_mod, "_BULK_CHECKPOINT", checkpoint)
    monkeypatch.setattr(mailbox_mod, "_reactor_running", lambda: True)
    monkeypatch.setattr(mailbox_mod, "_call_later", steps.append if later is None else later)
    return steps
