"""Drive the pure IMAP engine with bytes, running its actions synchronously, over a real Store."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer

from mailsuite.imap.backend import UserMail
from mailsuite.imap.engine import (Authenticate, AuthFailed, Await, Close, EngineConfig, ImapEngine,
                                   StartCompression, StartTLS, Stream)
from mailsuite.store import Store

USERS = {"alice@example.org": "secret", "bob@example.org": "hunter2"}

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Hello there\r\n"
    b"Date: Mon, 4 Mar 2024 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nHi Bob,\r\nlunch?\r\n"
)


def make_store(tmp: Path) -> Store:
    store = Store(tmp / "mail", runner=lambda f: defer.execute(f))
    for user in USERS:
        store.create_user(user)
    return store


class Session:
    def __init__(self, store: Store, *, tls: bool = True, plaintext_ok: bool = False, tls_available: bool = True,
                 max_literal: int = 1 << 20, quota: int = 0) -> None:
        self.store = store
        cfg = EngineConfig(hostname="mail.example.org", tls_available=tls_available, tls_active=tls,
                           plaintext_auth_ok=plaintext_ok, max_literal=max_literal, quota_bytes=quota)
        self.wakeups = 0
        self.engine = ImapEngine(cfg, lambda user: UserMail(store, user), wakeup=self._wake, peer="127.0.0.1")
        self.actions: list[object] = []
        self.closed = False
        self.greeting = self._run(self.engine.greeting())

    def _wake(self) -> None:
        self.wakeups += 1

    def _run(self, outputs: list) -> bytes:
        out = bytearray()
        queue = list(outputs)
        while queue:
            item = queue.pop(0)
            if isinstance(item, bytes):
                out += item
            elif isinstance(item, Stream):
                for chunk in item.chunks:
                    out += chunk
                queue = self.engine.resume() + queue
            elif isinstance(item, Authenticate):
                self.actions.append(item)
                ok = USERS.get(item.user) == item.password
                queue = self.engine.auth_result(item.user if ok else None) + queue
            elif isinstance(item, AuthFailed):
                self.actions.append(item)
                queue = self.engine.auth_result(None) + queue
            elif isinstance(item, Await):
                results: list = []
                item.deferred.addBoth(results.append)
                assert results, "test store runner is synchronous"
                queue = item.callback(results[0]) + queue
            elif isinstance(item, (StartTLS, StartCompression)):
                self.actions.append(item)
            elif isinstance(item, Close):
                self.closed = True
            else:
                raise AssertionError(item)
        return bytes(out)

    def send(self, data: bytes) -> bytes:
        return self._run(self.engine.receive_data(data))

    def cmd(self, line: str | bytes) -> bytes:
        data = line.encode() if isinstance(line, str) else line
        return self.send(data + b"\r\n")

    def poll(self) -> bytes:
        return self._run(self.engine.poll())

    def login(self, user: str = "alice@example.org") -> bytes:
        out = self.cmd(f"L1 LOGIN {user} {USERS[user]}")
        assert b"L1 OK" in out, out
        return out
