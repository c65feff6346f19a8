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


