"""Delivery status notifications: RFC 3464 reports in an RFC 6522 `multipart/report` message.

`build_report()` makes the whole message (CRLF line ends) for one original message and a group of its
recipients that share an outcome: "failed" (a bounce), "delayed" (a warning, RFC 3464 §2.3.3), "relayed"
(the next hop does not speak DSN, RFC 3461 §6.2.6.2) or "delivered".
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from email.utils import format_datetime, formatdate
from datetime import datetime, timezone

__all__ = ["DSNRecipient", "build_report", "status_of", "MAX_RETURNED_BYTES"]

#: the largest original message returned whole; bigger ones come back as headers only
MAX_RETURNED_BYTES = 1024 * 1024

_CTL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class DSNRecipient:
    address: str
    status: str                      # RFC 3463 code, e.g. "5.1.1"
    diagnostic: str = ""             # the remote reply, e.g. "550 5.1.1 no such user"
    orcpt: str | None = None         # "rfc822;addr" as received (RFC 3461 §4.2)
    remote_mta: str | None = None    # the host that answered
    last_attempt: float | None = None
    will_retry_until: float | None = None


def status_of(code: int, enhanced: str | None) -> str:
    """RFC 3463 status for a reply: its enhanced code, else the class of its basic code."""
    if enhanced:
        return enhanced
    return f"{str(code)[0]}.0.0" if 400 <= code < 600 else "5.0.0"


def _clean(text: str, limit: int = 900) -> str:
    """One line, no control characters, short enough for RFC 5322 §2.1.1's 998-octet line limit."""
    text = _CTL.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, timezone.utc))


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 2]


_TITLES = {
    "failed": ("Undelivered Mail Returned to Sender",
               "Your message could not be delivered to the following recipients; this is a permanent error."),
    "delayed": ("Delayed Mail (still being retried)",
                "Your message has not been delivered yet to the following recipients. Delivery is still being "
                "retried; you do not need to send it again. You will be told if it finally fails."),
    "relayed": ("Relayed Mail",
                "Your message was passed to a server that does not send delivery notifications, for the "
                "following recipients; you may not be told whether it is finally delivered."),
    "delivered": ("Successful Mail Delivery Report",
                  "Your message was delivered to the following recipients."),
}


def build_report(*, action: str, reporting_mta: str, to: str, recipients: list[DSNRecipient],
                 original: bytes, arrival: float, envid: str | None = None, ret: str | None = None,
                 now: float | None = None) -> bytes:
    """The complete DSN message, ready to be queued with the null reverse-path (RFC 3461 §6.2)."""
    if action not in _TITLES:
        raise ValueError(f"unknown DSN action {action!r}")
    now = time.time() if now is None else now
    subject, intro = _TITLES[action]
    boundary = f"=_mailsuite_{secrets.token_hex(12)}"
    msgid = f"<{int(now)}.{secrets.token_hex(8)}@{reporting_mta}>"

    # RFC 3461 §4.3: RET=HDRS asks for headers only; warnings carry headers only as well (RFC 3464 §2.3.3
    # leaves the content to us, and the message is still in our queue).
    full = action == "failed" and ret != "HDRS" and len(original) <= MAX_RETURNED_BYTES
    human = [intro, "", f"Reporting server: {reporting_mta}", ""]
    for r in recipients:
        human.append(f"<{r.address}>: {_clean(r.diagnostic) or r.status}")
    human += ["", "The delivery report and " + ("the original message" if full else
                                                 "the headers of the original message") + " follow."]

    # RFC 3464 §2.2: per-message fields
    status_lines = [f"Reporting-MTA: dns; {reporting_mta}"]
    if envid:
        status_lines.append(f"Original-Envelope-Id: {_clean(envid)}")      # RFC 3464 §2.2.1
    status_lines.append(f"Arrival-Date: {_date(arrival)}")                # RFC 3464 §2.2.5
    for r in recipients:
        # RFC 3464 §2.3: per-recipient fields, one group each, separated by blank lines
        status_lines.append("")
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            status_lines.append(f"Original-Recipient: {kind.strip() or 'rfc822'}; {_clean(addr)}")
        status_lines.append(f"Final-Recipient: rfc822; {r.address}")
        status_lines.append(f"Action: {action}")                           # RFC 3464 §2.3.3
        status_lines.append(f"Status: {r.status}")                         # RFC 3464 §2.3.4
        if r.remote_mta:
            status_lines.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")  # RFC 3464 §2.3.5
        if r.diagnostic:
            status_lines.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")   # RFC 3464 §2.3.6
        if r.last_attempt is not None:
            status_lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")     # RFC 3464 §2.3.7
        if r.will_retry_until is not None:
            status_lines.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")  # RFC 3464 §2.3.9

    if full:
        returned_type, returned = "message/rfc822", original
    else:
        returned_type, returned = "text/rfc822-headers", _header_block(original)
    if not returned.endswith(b"\r\n"):
        returned += b"\r\n"

    headers = [
        "From: Mail Delivery System <MAILER-DAEMON@" + reporting_mta + ">",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {formatdate(now, localtime=False)}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",                                    # RFC 3834 §5
        "MIME-Version: 1.0",
        # RFC 6522 §3: multipart/report with the report-type parameter
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    crlf = "\r\n"
    out = crlf.join(headers) + crlf + crlf
    out += "This is a MIME-formatted delivery status notification." + crlf + crlf
    out += f"--{boundary}{crlf}Content-Type: text/plain; charset=utf-8{crlf}" \
           f"Content-Transfer-Encoding: 8bit{crlf}{crlf}" + crlf.join(human) + crlf + crlf
    out += f"--{boundary}{crlf}Content-Type: message/delivery-status{crlf}{crlf}" \
           + crlf.join(status_lines) + crlf + crlf
    tail = f"--{boundary}{crlf}Content-Type: {returned_type}{crlf}{crlf}".encode()
    end = f"{crlf}--{boundary}--{crlf}".encode()
    return out.encode("utf-8") + tail + returned + end
