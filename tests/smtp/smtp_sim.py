"""A fake world for the SMTP engine: answers its actions from small tables, records what was delivered."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailsuite.smtp.engine import EngineConfig, SMTPServerEngine
from mailsuite.smtp.events import (Action, Authenticate, CheckRecipient, CheckSender, Close, Deliver, Event,
                                   RecipientCheck, Reply, SendReply, StartTLS)

LOCAL_DOMAINS = {"example.org", "example.net"}
USERS = {"alice@example.org": "alice-pw", "bob@example.org": "bob-pw"}
ALIASES = {"postmaster@example.org": "alice@example.org", "sales@example.org": "bob@example.org"}
SENDERS = {"alice@example.org": {"alice@example.org", "postmaster@example.org"},
           "bob@example.org": {"bob@example.org", "sales@example.org"}}


def answer(action: Action) -> object:
    """The fake world's answer to one engine action."""
    if isinstance(action, Authenticate):
        user = action.username.lower()
        return user if USERS.get(user) == action.password else None
    if isinstance(action, CheckSender):
        return action.address.lower() in SENDERS.get(action.user, set())
    if isinstance(action, CheckRecipient):
        local, _, domain = action.address.rpartition("@")
        if domain.lower() not in LOCAL_DOMAINS:
            return RecipientCheck("external")
        address = f"{local.lower()}@{domain.lower()}"
        base = address.split("+", 1)[0] + "@" + domain.lower() if "+" in local else address
        if base in USERS or base in ALIASES:
            return RecipientCheck("local", base)
        return RecipientCheck("unknown")
    if isinstance(action, Deliver):
        return Reply(250, "2.0.0", "Ok: delivered")
    raise AssertionError(f"unexpected action {action!r}")


@dataclass
class Session:
    """Drives one engine; actions are answered at once unless ``hold`` is set."""

    mode: str = "mx"
    tls: bool = False
    peer: str = "192.0.2.10"
    config: EngineConfig = field(default_factory=lambda: EngineConfig(hostname="mail.example.org",
                                                                      postmaster_domain="example.org"))
    hold: bool = False

    def __post_init__(self) -> None:
        self.engine = SMTPServerEngine(self.config, self.mode, self.peer, self.tls)
        self.out = bytearray()
        self.events: list[Event] = []
        self.delivered: list[Deliver] = []
        self.held: list[Action] = []
        self.closed = False
        self.tls_started = 0
        self._handle(self.engine.connection_made())

    def _handle(self, events: list[Event]) -> None:
        queue = list(events)
        while queue:
            event = queue.pop(0)
            self.events.append(event)
            if isinstance(event, SendReply):
                assert not self.closed, "reply after Close"
                self.out += event.data
            elif isinstance(event, Close):
                self.closed = True
            elif isinstance(event, StartTLS):
                self.tls_started += 1
            elif isinstance(event, Action):
                if isinstance(event, Deliver):
                    self.delivered.append(event)
                if self.hold:
                    self.held.append(event)
                else:
                    queue.extend(self.engine.action_result(answer(event)))

    def release(self) -> None:
        """Answer the held action (and any that follow it)."""
        while self.held:
            action = self.held.pop(0)
            hold, self.hold = self.hold, False
            self._handle(self.engine.action_result(answer(action)))
            self.hold = hold

    def send(self, data: bytes) -> bytes:
        """Feed bytes; return the reply bytes they produced."""
        start = len(self.out)
        self._handle(self.engine.receive_data(data))
        return bytes(self.out[start:])

    def cmd(self, line: str) -> str:
        return self.send(line.encode("utf-8") + b"\r\n").decode("ascii")

    def codes(self) -> list[str]:
        """The reply codes of every final reply line so far (greeting included)."""
        return [line[:3] for line in bytes(self.out).decode("ascii").split("\r\n") if line[3:4] == " "]


def plain(user: str, password: str, authzid: str = "") -> str:
    import base64
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()
