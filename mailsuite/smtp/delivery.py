"""What happens to an accepted message: trace headers, submission fixes, local delivery, the relay queue.

- ``Received:`` (RFC 5321 §4.4, protocol names of RFC 3848/6531, TLS version/cipher and the authenticated user
  as comments, as Postfix does) is added to every copy; ``Return-Path:`` only to the locally delivered copies.
- On submission (RFC 6409 §8): ``Bcc:`` fields are removed (RFC 5322 §3.6.3), a missing ``Date:`` or
  ``Message-ID:`` is added (RFC 6409 §8.2, §8.3).
- Local recipients: ``store.deliver`` for every (user, folder) target, which fsyncs before it fires; external
  recipients (submission, or aliases that forward outside) go to ``ctx.queue.enqueue``.  Only when all of that
  succeeded does the client get its 250 (RFC 5321 §6.1); otherwise a 451 and it retries the whole message.
- Without a relay queue (``ctx.queue is None``) outbound mail is written durably into ``<data_dir>/queue/``
  in the relay's on-disk format (``<id>.eml`` + ``<id>.json``) so the relay sends it once it runs.
"""

from __future__ import annotations

import email.utils
import errno
import json
import os
import re
from random import getrandbits as _getrandbits
import time
from pathlib import Path
from typing import Any, Iterable

from twisted.internet import defer, threads

from ..logtext import Logger
from .address import xtext_decode
from .events import Envelope, Reply

__all__ = ["Delivery", "failure_reply", "received_header", "prepare_submission", "split_header", "new_id", "spool_outbound"]

log = Logger()
_FIELD_RE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")   # RFC 5322 §3.6.8 field-name, obsolete WSP


def new_id(now: float | None = None) -> str:
    """A message / queue id: microsecond time and randomness in hex (matches the relay queue's ids).

    The ids need to be unique, not unguessable, so the randomness comes from ``random`` (seeded from the
    OS at start) rather than a system call per message."""
    return f"{int((time.time() if now is None else now) * 1_000_000):x}{_getrandbits(32):08x}"


_date_memo: tuple[int, str] = (-1, "")


def _date(now: float) -> str:
    """RFC 5322 §3.3 date-time of ``now`` in local time; computed once per second (one per delivery in a
    burst costs more than the rest of the Received field)."""
    global _date_memo
    second = int(now)
    if _date_memo[0] != second:
        _date_memo = (second, email.utils.formatdate(second, localtime=True))
    return _date_memo[1]


def split_header(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a CRLF message into header lines (each with CRLF, continuations separate) and the rest.

    The rest starts with the empty line that ends the header section.  If the header section ends at a line
    that is not a header field, an empty line is inserted so that added fields cannot swallow it.
    """
    lines: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        line = data[pos:] if end < 0 else data[pos:end + 2]
        if line in (b"\r\n",):
            return lines, data[pos:]
        is_field = _FIELD_RE.match(line) is not None
        is_continuation = bool(lines) and line[:1] in (b" ", b"\t")
        if not (is_field or is_continuation):
            return lines, b"\r\n" + data[pos:]
        lines.append(line if line.endswith(b"\r\n") else line + b"\r\n")
        pos += len(line)
    return lines, b""


def _field_name(line: bytes) -> bytes | None:
    match = _FIELD_RE.match(line)
    return match.group(1).lower() if match else None


def prepare_submission(data: bytes, *, hostname: str, now: float) -> bytes:
    """RFC 6409 §8: drop Bcc, add Date and Message-ID when missing."""
    lines, rest = split_header(data)
    kept: list[bytes] = []
    dropping = False
    names: set[bytes] = set()
    for line in lines:
        name = _field_name(line) if line[:1] not in (b" ", b"\t") else None
        if name is not None:
            dropping = name == b"bcc"           # RFC 5322 §3.6.3: blind recipients must not be seen
            names.add(name)
        if not dropping:
            kept.append(line)
    if b"date" not in names:
        kept.append(b"Date: " + _date(now).encode() + b"\r\n")
    if b"message-id" not in names:
        kept.append(f"Message-ID: <{new_id(now)}@{hostname}>\r\n".encode())
    return b"".join(kept) + (rest if rest else b"\r\n")


def _protocol(env: Envelope) -> str:
    # RFC 3848 §1 (ESMTP, ESMTPA, ESMTPS, ESMTPSA) and RFC 6531 §4.3 (UTF8SMTP...)
    if not env.esmtp:
        return "SMTP"
    base = "UTF8SMTP" if env.smtputf8 else "ESMTP"
    return base + ("S" if env.tls else "") + ("A" if env.auth_user else "")


_UNSAFE_IN_COMMENT = re.compile(r"[^\x20-\x27\x2a-\x5b\x5d-\x7e]")   # not printable ASCII, or a paren or backslash


def _clean(text: str, limit: int = 200) -> str:
    """Make client-supplied text safe inside a header comment."""
    if _UNSAFE_IN_COMMENT.search(text) is None:
        return text[:limit] or "unknown"            # the usual case: nothing to replace
    return "".join(c if c.isascii() and c.isprintable() and c not in "()\\" else "?"
                   for c in text)[:limit] or "unknown"


def _ip_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(env: Envelope, *, hostname: str, ident: str, now: float, tls: Any = None) -> bytes:
    """The RFC 5321 §4.4 Received field for this hop, folded over several lines."""
    parts = [f"Received: from {_clean(env.helo)} ({_ip_literal(env.peer_ip)})"]
    parts.append(f"by {hostname} (mailsuite) with {_protocol(env)} id {ident}")
    if tls is not None:
        parts.append(f"(using {_clean(tls.version)} with cipher {_clean(tls.cipher)})")
    if env.auth_user:
        parts.append(f"(Authenticated sender: {_clean(env.auth_user)})")
    if len(env.recipients) == 1:
        # RFC 5321 §7.6: a for-clause with several recipients would disclose Bcc recipients
        parts.append(f"for <{env.recipients[0].address}>")
    parts[-1] += ";"
    parts.append(_date(now))
    return ("\r\n\t".join(parts) + "\r\n").encode("utf-8")


def _dsn(env: Envelope, addresses: Iterable[str]) -> dict[str, Any]:
    """The RFC 3461 parameters in the form ``Queue.enqueue`` takes (decoded from xtext)."""
    per: dict[str, dict[str, str | None]] = {}
    by_address = {r.address: r for r in env.recipients}
    for address in addresses:
        r = by_address.get(address)
        if r is None:
            continue
        orcpt = None
        if r.orcpt:
            kind, _, value = r.orcpt.partition(";")
            orcpt = f"{kind};{xtext_decode(value)}"
        per[address] = {"notify": ",".join(r.notify) or None, "orcpt": orcpt}
    return {"ret": env.ret, "envid": xtext_decode(env.envid) if env.envid else None, "recipients": per}


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)      # a full disk must not leave a partial file behind
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(tmp, path)


def spool_outbound(queue_dir: Path, sender: str, recipients: list[str], data: bytes, dsn: dict[str, Any],
                   now: float) -> str:
    """Write an outbound message into the relay queue directory (blocking; used when no queue runs).

    Message first, then the envelope, each fsynced and renamed into place, then the directory fsynced: the
    relay's loader ignores a message without an envelope, so a crash in between loses nothing acknowledged.
    """
    queue_dir.mkdir(parents=True, exist_ok=True)
    ident = new_id(now)
    per = dsn.get("recipients") or {}
    entry = {"version": 1, "id": ident, "sender": sender, "created": now, "size": len(data),
             "ret": dsn.get("ret"), "envid": dsn.get("envid"),
             "recipients": [{"address": r, "notify": (per.get(r) or {}).get("notify"),
                             "orcpt": (per.get(r) or {}).get("orcpt"), "status": "queued", "attempts": 0,
                             "next_attempt": now} for r in recipients]}
    _write_durably(queue_dir / f"{ident}.eml", data)
    try:
        _write_durably(queue_dir / f"{ident}.json", json.dumps(entry, ensure_ascii=False, indent=1).encode())
    except BaseException:
        (queue_dir / f"{ident}.eml").unlink(missing_ok=True)   # no envelope: the client retries the whole
        raise
    dir_fd = os.open(queue_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return ident


#: errno values that mean "no room": RFC 5321 §4.2.2 452, RFC 3463 §3.4 X.3.1 "mail system full"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _os_error(failure: Any) -> OSError | None:
    """The OSError behind a delivery failure (unwrapping ``gatherResults``' FirstError), if it is one."""
    value = failure.value
    while isinstance(value, defer.FirstError):
        value = value.subFailure.value
    return value if isinstance(value, OSError) else None


def failure_reply(failure: Any, env: Envelope) -> Reply:
    """The reply for a failed delivery (the client keeps the message and retries; RFC 5321 §4.2.5).

    A full disk or quota gets ``452 4.3.1``; other file-system errors (read-only, permission denied) and any
    other failure ``451 4.3.0``.  File-system errors are logged as one line naming the error and the file (the
    operator's fix is outside the program); anything else with its traceback.
    """
    error = _os_error(failure)
    if error is None:
        log.failure("smtp: delivery failed from=<{sender}> ip={ip}", failure, sender=env.mail_from, ip=env.peer_ip)
        return Reply(451, "4.3.0", "Local error in processing, try again later")
    where = f" ({error.filename})" if error.filename else ""
    log.error("smtp: delivery failed from=<{sender}> ip={ip}: {error}{where}", sender=env.mail_from,
              ip=env.peer_ip, error=error.strerror or str(error), where=where)
    if error.errno in _NO_SPACE:
        return Reply(452, "4.3.1", "Insufficient system storage, try again later")
    return Reply(451, "4.3.0", "Local error in processing, try again later")


class Delivery:
    """Runs the ``Deliver`` action for one server process (shared by all SMTP sessions)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def _now(self) -> float:
        seconds = getattr(self.ctx.reactor, "seconds", None)
        return float(seconds()) if seconds is not None else time.time()

    def deliver(self, env: Envelope, data: bytes, *, submission: bool, tls: Any = None) -> defer.Deferred:
        """Fires with the ``Reply`` for the end of DATA (never errbacks)."""
        d = defer.maybeDeferred(self._deliver, env, data, submission, tls)

        def failed(failure: Any) -> Reply:
            return failure_reply(failure, env)
        return d.addErrback(failed)

    def _targets(self, env: Envelope) -> tuple[list[tuple[str, str | None]], list[str]]:
        """(local (user, folder) targets, external addresses), each without duplicates."""
        local: dict[tuple[str, str | None], None] = {}
        external: dict[str, None] = {}
        for rcpt in env.recipients:
            if rcpt.status == "external":
                external[rcpt.address] = None
                continue
            resolution = rcpt.data if rcpt.data is not None else self.ctx.accounts.resolve(rcpt.address)
            if resolution is None:
                raise LookupError(f"recipient {rcpt.address} vanished")
            for target in resolution.local:
                local[(target.user, target.folder)] = None
            for address in resolution.external:
                external[address] = None
        return list(local), list(external)

    def _deliver(self, env: Envelope, data: bytes, submission: bool, tls: Any) -> defer.Deferred:
        now = self._now()
        hostname = self.ctx.settings.hostname
        if submission:
            data = prepare_submission(data, hostname=hostname, now=now)
        ident = new_id(now)
        traced = received_header(env, hostname=hostname, ident=ident, now=now, tls=tls) + data
        local, external = self._targets(env)
        work: list[defer.Deferred] = []
        if local:
            # RFC 5321 §4.4: the final delivery adds Return-Path with the reverse-path
            copy = f"Return-Path: <{env.mail_from}>\r\n".encode("utf-8") + traced
            work += [self._store(user, folder, copy) for user, folder in local]
        queued: list[str] = []
        if external:
            work.append(self._enqueue(env, external, traced, now).addCallback(queued.append))

        def done(_: Any) -> Reply:
            log.info("smtp: accepted id={id} from=<{sender}> local={local} relay={relay} size={size} "
                     "ip={ip} auth={auth}", id=ident, sender=env.mail_from, local=len(local),
                     relay=len(external), size=len(data), ip=env.peer_ip, auth=env.auth_user or "-")
            if queued:
                return Reply(250, "2.0.0", f"Ok: queued as {queued[0]}")
            return Reply(250, "2.0.0", f"Ok: delivered as {ident}")
        if len(work) == 1:  # the common case: no DeferredList layer (DESIGN.md: fewer Deferreds on hot paths)
            return work[0].addCallback(done)
        return defer.gatherResults(work, consumeErrors=True).addCallback(done)

    def _folder(self, user: str, detail: str | None) -> str:
        """The existing folder a plus-address detail names, matched case-insensitively (the accounts module
        lower-cases addresses, so ``bob+Junk@`` arrives as ``junk``); INBOX when there is none."""
        if not detail:
            return "INBOX"
        lister = getattr(self.ctx.store, "list_mailboxes", None)
        if lister is None:
            return detail
        try:
            for info in lister(user):
                if info.name.lower() == detail.lower() and getattr(info, "selectable", True):
                    return info.name
        except Exception:  # noqa: BLE001 - an unreadable folder list just means INBOX
            log.failure("smtp: listing folders of {user}", user=user)
        return "INBOX"

    def _store(self, user: str, folder: str | None, data: bytes) -> defer.Deferred:
        store = self.ctx.store
        name = self._folder(user, folder)
        # the content has CRLF line ends only (MessageBody normalises them), so the store need not check
        if name == "INBOX":
            return store.deliver(user, data, "INBOX", crlf=True)
        # a folder that cannot take the message (vanished, invalid name) falls back to INBOX
        d = store.deliver(user, data, name, crlf=True)
        return d.addErrback(lambda _f: store.deliver(user, data, "INBOX", crlf=True))

    def _enqueue(self, env: Envelope, external: list[str], data: bytes, now: float) -> defer.Deferred:
        dsn = _dsn(env, external)
        queue = self.ctx.queue
        if queue is not None:
            return defer.maybeDeferred(queue.enqueue, env.mail_from, external, data, dsn).addCallback(str)
        queue_dir = Path(self.ctx.settings.data_dir) / "queue"
        reactor = self.ctx.reactor
        if hasattr(reactor, "getThreadPool"):
            # fsync off the reactor thread (DESIGN.md §3)
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), spool_outbound, queue_dir,
                                             env.mail_from, external, data, dsn, now)
        return defer.maybeDeferred(spool_outbound, queue_dir, env.mail_from, external, data, dsn, now)
