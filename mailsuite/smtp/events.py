"""What the SMTP server engine hands to its adapter: replies, TLS/close signals and actions.

An *action* (``Authenticate``, ``CheckSender``, ``CheckRecipient``, ``Deliver``) is work that needs the outside
world.  The adapter runs it, then feeds the result back with ``SMTPServerEngine.action_result``; until then the
engine holds any further (pipelined) input, so replies keep the order of the commands (RFC 2920 §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Event", "SendReply", "StartTLS", "Close", "Action", "Authenticate", "CheckSender",
           "CheckRecipient", "Deliver", "RecipientCheck", "Reply", "Envelope", "Recipient"]


@dataclass(frozen=True)
class Reply:
    """An SMTP reply; ``enhanced`` is the RFC 3463 code (None for 220 greeting, 334, 354, EHLO)."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    def to_bytes(self) -> bytes:
        """Render as one or more CRLF lines (RFC 5321 §4.2.1 multi-line form, RFC 2034 §3 prefix).

        Rendered once per object: the engine keeps its frequent replies (``250 2.1.5 Ok``, the greeting...)
        as shared objects, so they are never formatted again.  The cache lives in the instance ``__dict__``
        (the dataclass is frozen, not slotted), outside the fields that equality and hashing use."""
        cached = self.__dict__.get("_bytes")
        if cached is None:
            cached = self.__dict__["_bytes"] = self._render()
        return cached

    def _render(self) -> bytes:
        lines = (self.text,) if isinstance(self.text, str) else self.text
        out = []
        for index, line in enumerate(lines):
            # never let reply text carry a line break or non-ASCII byte (RFC 5321 §4.2)
            if not (line.isascii() and line.isprintable()):
                line = "".join(c if 32 <= ord(c) < 127 else "?" for c in line)
            sep = " " if index == len(lines) - 1 else "-"
            prefix = f"{self.enhanced} " if self.enhanced else ""
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("ascii")


class Event:
    """Base class of everything ``receive_data`` returns."""


@dataclass(slots=True)
class SendReply(Event):
    """Bytes to write (one or more rendered replies).  Not frozen: made for every reply, and a frozen
    dataclass costs twice as much to make."""

    data: bytes


@dataclass(frozen=True)
class StartTLS(Event):
    """Start the TLS handshake now (after writing the replies before it); RFC 3207 §4."""


@dataclass(frozen=True)
class Close(Event):
    """Close the connection once the replies before it are written."""


class Action(Event):
    """Work the adapter runs; it must call ``engine.action_result(result)`` exactly once."""


@dataclass(frozen=True)
class Authenticate(Action):
    """Check a password.  Result: the canonical user name (str) or None."""

    mechanism: str
    username: str
    password: str


@dataclass(frozen=True)
class CheckSender(Action):
    """May ``user`` send as ``address`` ("" for the null sender)?  Result: bool."""

    user: str
    address: str


@dataclass(frozen=True)
class RecipientCheck:
    """Result of ``CheckRecipient``.

    ``status``: ``local`` (a local user, alias, catch-all...), ``unknown`` (local domain, no such recipient),
    ``external`` (not a local domain), ``error`` (temporary failure).  ``data`` is kept with the recipient
    (e.g. the accounts Resolution) and handed back in ``Deliver``.
    """

    status: Literal["local", "unknown", "external", "error"]
    data: Any = None


@dataclass(frozen=True)
class CheckRecipient(Action):
    """Classify a recipient address.  Result: ``RecipientCheck``."""

    address: str


@dataclass(frozen=True)
class Recipient:
    address: str                   # canonical forward-path, "local@domain"
    status: str                    # "local" or "external"
    data: Any = None               # RecipientCheck.data
    notify: tuple[str, ...] = ()   # RFC 3461 §4.1 NOTIFY values (uppercase), () when absent
    orcpt: str | None = None       # RFC 3461 §4.2 ORCPT, "addr-type;xtext" as received


@dataclass
class Envelope:
    """Everything known about one mail transaction, handed to the adapter with the message."""

    mail_from: str                          # "" for the null reverse-path
    recipients: list[Recipient] = field(default_factory=list)
    helo: str = ""
    esmtp: bool = True                      # EHLO (True) or HELO (False), for "with" in Received
    peer_ip: str = ""
    tls: bool = False
    auth_user: str | None = None
    body: str = "7BIT"                      # RFC 6152 BODY parameter
    smtputf8: bool = False                  # RFC 6531 §3.4
    size: int | None = None                 # RFC 1870 declared SIZE
    ret: str | None = None                  # RFC 3461 §4.3 RET=FULL|HDRS
    envid: str | None = None                # RFC 3461 §4.4 ENVID (xtext as received)
    auth_param: str | None = None           # RFC 4954 §5 AUTH= on MAIL


@dataclass(frozen=True)
class Deliver(Action):
    """Store / queue the message for every recipient durably.  Result: the ``Reply`` to send.

    ``data`` has CRLF line ends, no dot-stuffing, and no trace headers added yet.
    """

    envelope: Envelope
    data: bytes
