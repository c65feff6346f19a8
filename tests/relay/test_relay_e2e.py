"""The real server (`twistd -n mailsuite`) relaying submitted mail to a loopback MX found through a loopback DNS
server; SIGKILL in the middle of deliveries; the `mailsuite queue` command against the running server."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.server import MailServer

from .relay_support import FakeDNS, FakeSMTP, SMTPBehaviour, common_port

REMOTE, DOWN = "127.0.0.2", "127.0.0.4"
PASSWORD = "alice-password-1"


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def submit(srv: MailServer, rcpts: list[str], body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_tls())
        s.ehlo("client.test")
        s.login("alice@example.org", PASSWORD)
        assert s.sendmail("alice@example.org", rcpts, body) == {}


def message(mark: str) -> bytes:
    return f"From: alice@example.org\r\nTo: x\r\nSubject: {mark}\r\nMessage-ID: <{mark}@example.org>\r\n\r\n{mark}\r\n".encode()


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def world(tmp_path: Path):
    port = common_port((REMOTE, DOWN))
    zone = {"remote.test": [("MX", "10 mx.remote.test.")], "mx.remote.test": [("A", REMOTE)],
            "later.test": [("MX", "10 mx.later.test.")], "mx.later.test": [("A", DOWN)]}
    dns = FakeDNS(zone).start()
    release, stalled = threading.Event(), threading.Event()

    def data_reply(count: int, data: bytes) -> str:
        if b"STALL" in data and not stalled.is_set():
            stalled.set()
            release.wait(30)
            return "451 4.3.0 too late"
        return "250 2.0.0 queued"
    remote = FakeSMTP(REMOTE, port, "mx.remote.test", SMTPBehaviour(data=data_reply)).start()
    srv = MailServer(tmp_path, services=("smtp", "submission"), extra_config=f"""
[relay]
port = {port}
resolvers = ["{dns.address}"]
first_retry = 1.0
max_retry_interval = 2.0
""")
    srv.add_user("alice@example.org", PASSWORD)
    try:
        yield srv, remote, dns, stalled, release
    finally:
        release.set()
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()
        remote.stop()
        dns.stop()


def subjects(remote: FakeSMTP) -> list[str]:
    out = []
    for m in remote.received:
        for line in m.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
    return out


def queued_files(srv: MailServer) -> list[Path]:
    return sorted((srv.data_dir / "queue").glob("*.json"))


def test_submission_is_relayed_and_survives_sigkill_exactly_once(world):
    srv, remote, dns, stalled, release = world
    srv.start()
    a, b, c, d = (uuid.uuid4().hex for _ in range(4))
    submit(srv, ["bob@remote.test"], message(a))
    assert wait_until(lambda: subjects(remote) == [a] and not queued_files(srv)), srv.log_text()
    # c and d wait for a host that is down; b is in the middle of its DATA when the server dies
    submit(srv, ["carol@later.test"], message(c))
    submit(srv, ["dave@later.test", "bob@remote.test"], message(d))
    submit(srv, ["bob@remote.test"], message("STALL-" + b))
    assert stalled.wait(30), srv.log_text()
    assert wait_until(lambda: "cannot connect" in srv.cli("queue", "list").stdout)
    listing = srv.cli("queue", "list").stdout
    assert "<carol@later.test>  queued" in listing and "<dave@later.test>  queued" in listing
    srv.kill()
    release.set()
    before = subjects(remote)
    assert sorted(before) == sorted([a, d])           # b never got its 250
    dns.zone["mx.later.test"] = [("A", REMOTE)]      # the down host is back
    srv.start()
    assert wait_until(lambda: not queued_files(srv) and len(subjects(remote)) >= 5), srv.log_text()
    time.sleep(0.5)                                   # anything sent twice would show up now
    assert sorted(subjects(remote)) == sorted([a, d, d, c, "STALL-" + b])
    rcpts = sorted(r for m in remote.received for r in m.rcpts)
    assert rcpts == sorted(["RCPT TO:<bob@remote.test>"] * 3 + ["RCPT TO:<carol@later.test>"]
                           + ["RCPT TO:<dave@later.test>"])
    assert srv.cli("queue", "list").stdout.strip() == "queue is empty"
    srv.stop()


def test_remote_refusal_bounces_to_the_senders_inbox(world):
    srv, remote, dns, stalled, release = world
    remote.behaviour.rcpt = lambda address: "550 5.1.1 unknown user" if address.startswith("nobody") else \
        "250 2.1.5 ok"
    srv.start()
    mark = uuid.uuid4().hex
    submit(srv, ["nobody@remote.test"], message(mark))
    found = srv.wait_for_messages("alice@example.org", 1, timeout=30)
    assert len(found) == 1, srv.log_text()
    bounce = found[0]
    assert b"Content-Type: multipart/report; report-type=delivery-status" in bounce
    assert b"Final-Recipient: rfc822; nobody@remote.test" in bounce and b"Status: 5.1.1" in bounce
    assert f"Message-ID: <{mark}@example.org>".encode() in bounce
    assert remote.received == []
    srv.stop()


def test_queue_bounce_command_reaches_the_running_server(world):
    srv, remote, dns, stalled, release = world
    remote.behaviour.rcpt = lambda address: "451 4.2.0 try later"
    srv.start()
    mark = uuid.uuid4().hex
    submit(srv, ["bob@remote.test"], message(mark))
    assert wait_until(lambda: "451 4.2.0 try later" in srv.cli("queue", "list").stdout), srv.log_text()
    listing = srv.cli("queue", "list").stdout
    ident = [line.split()[0] for line in listing.splitlines() if "from <alice@example.org>" in line][0]
    result = srv.cli("queue", "bounce", ident)
    assert result.returncode == 0 and "handed to the running server" in result.stdout, result.stderr
    found = srv.wait_for_messages("alice@example.org", 1, timeout=30)
    assert len(found) == 1, srv.log_text()
    assert b"Action: failed" in found[0] and f"<{mark}@example.org>".encode() in found[0]
    assert wait_until(lambda: srv.cli("queue", "list").stdout.strip() == "queue is empty")
    assert srv.cli("queue", "delete", ident).returncode == 1          # gone
    srv.stop()
