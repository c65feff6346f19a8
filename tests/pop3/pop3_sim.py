"""A synchronous stand-in for the POP3 adapter: runs the engine's actions at once, records the bytes sent."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mailsuite.pop3.dotstuff import DotStuffer
from mailsuite.pop3.engine import (Authenticate, Close, CommitDeletions, DropEntry, EngineConfig, Event,
                                   OpenMaildrop, Pop3Engine, Reply, SendMessage, StartTLS)

USERS = {"alice@example.org": "secret", "bob@example.org": "pa ss"}
MESSAGES = {
    "m1": b"Subject: one\r\n\r\nhello\r\n",
    "m2": b"Subject: two\r\n\r\n.\r\n.starts with dot\r\nlast\r\n",
    "m3": b"Subject: three\r\nX: y\r\n\r\nb1\r\nb2\r\nb3\r\n",
}


@dataclass
class Sim:
    config: EngineConfig = field(default_factory=EngineConfig)
    messages: dict[str, bytes] = field(default_factory=lambda: dict(MESSAGES))
    in_use: bool = False
    update_ok: bool = True
    missing: set[str] = field(default_factory=set)
    out: bytearray = field(default_factory=bytearray)
    actions: list[Event] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    removed: tuple[str, ...] = ()
    tls_started: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.engine = Pop3Engine(self.config)
        self.run(self.engine.greeting())

    def feed(self, data: bytes) -> bytes:
        """Send client bytes; return what the server wrote in response.  After STLS the plaintext stops
        (real bytes after the switch would be TLS records), so later feeds are ignored."""
        if self.tls_started or self.closed:
            return b""
        start = len(self.out)
        self.run(self.engine.receive_data(data))
        return bytes(self.out[start:])

    def after_tls(self, data: bytes) -> bytes:
        """Bytes that arrive inside TLS, after the handshake."""
        assert self.tls_started
        start = len(self.out)
        self.run(self.engine.receive_data(data))
        return bytes(self.out[start:])

    def run(self, events: list[Event]) -> None:
        queue = deque(events)
        while queue:
            event = queue.popleft()
            if isinstance(event, Reply):
                self.out += event.data
                continue
            self.actions.append(event)
            if isinstance(event, StartTLS):
                self.out += b"<TLS>"
                self.tls_started = True
            elif isinstance(event, Close):
                self.out += b"<CLOSE>"
                self.closed = True
            elif isinstance(event, Authenticate):
                user = event.user.lower()
                ok = USERS.get(user) == event.password
                queue.extend(self.engine.auth_result(user if ok else None))
            elif isinstance(event, OpenMaildrop):
                if self.in_use:
                    queue.extend(self.engine.maildrop_failed(True))
                else:
                    entries = [DropEntry(k, len(v), "uid-" + k) for k, v in self.messages.items()]
                    queue.extend(self.engine.maildrop_opened(entries))
            elif isinstance(event, SendMessage):
                if event.key in self.missing:
                    queue.extend(self.engine.message_failed())
                    continue
                stuffer = DotStuffer(event.body_lines)
                self.out += event.ok_line + stuffer.feed(self.messages[event.key]) + stuffer.finish()
                if event.mark_seen:
                    self.seen.add(event.key)
                queue.extend(self.engine.message_sent())
            elif isinstance(event, CommitDeletions):
                self.removed = event.keys
                queue.extend(self.engine.update_done(self.update_ok))
            else:  # pragma: no cover - a new event type the simulator does not know
                raise AssertionError(f"unexpected event {event!r}")


def logged_in(**kwargs: object) -> Sim:
    sim = Sim(config=EngineConfig(tls_active=True), **kwargs)  # type: ignore[arg-type]
    sim.feed(b"USER alice@example.org\r\nPASS secret\r\n")
    assert sim.engine.user == "alice@example.org"
    return sim
