"""The relay against a remote that fails (issue 8): the real server (`tests/server.py`) relays submitted mail
to a loopback MX found through the loopback DNS server of tests/relay, and the MX (`fake_mx.FaultyMX`)
resets the connection in the middle of DATA or after the final ".", never greets, stops answering after
DATA or after the final ".", or drips its replies byte by byte.

Every case: the message stays queued with the reason recorded (a transient failure, RFC 5321 §3.8 and
§4.5.3.2), and once the MX is healthy again it is delivered exactly once.  `accepted` counts the messages
the MX answered with a complete 250; `seen` counts every complete body it received, so the cases where the
connection dies after the final "." show the RFC 1047 window: the MX had the whole message without having
said so, and the relay sends it again (docs/relay.md, "Failures and timeouts").

The relay's timeouts come from the config keys `command_timeout`, `data_timeout` and `data_end_timeout`,
set to 2 s here (long enough for a loaded test machine, short enough for a fast test), and retries from
`first_retry`/`max_retry_interval`, so each case takes a few seconds.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
import uuid
from typing import Iterator

import pytest

from tests.relay.relay_support import FakeDNS, common_port
from tests.server import MailServer

from .fake_mx import FaultyMX
from .support import wait_until

REMOTE = "127.0.0.2"
PASSWORD = "alice-relay-faults-pw"
TIMEOUT = 2.0          # command_timeout = data_timeout = data_end_timeout


class World:
    def __init__(self, srv: MailServer, mx: FaultyMX, dns: FakeDNS) -> None:
        self.srv, self.mx, self.dns = srv, mx, dns
        self.session: smtplib.SMTP | None = None      # one authenticated submission session for all cases

    def submit(self, subject: str, body: bytes = b"", rcpts: tuple[str, ...] = ("bob@remote.test",)) -> bytes:
        message = (f"From: alice@example.org\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{subject}@example.org>\r\n\r\n").encode() + (body or b"hello\r\n")
        for attempt in range(2):
            if self.session is None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                self.session = smtplib.SMTP("127.0.0.1", self.srv.port("submission"), timeout=30)
                self.session.starttls(context=context)
                self.session.login("alice@example.org", PASSWORD)
            try:
                assert self.session.sendmail("alice@example.org", list(rcpts), message) == {}
                return message
            except smtplib.SMTPServerDisconnected:
                self.session = None                   # idle too long: log in again
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def envelopes(self) -> list[dict]:
        out = []
        for path in sorted((self.srv.data_dir / "queue").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):      # replaced or removed while we looked: look again later
                pass
        return out

    def envelope_of(self, subject: str) -> dict | None:
        """The queued envelope of the message with this subject (the Message-ID is in the .eml)."""
        for env in self.envelopes():
            eml = self.srv.data_dir / "queue" / f"{env['id']}.eml"
            try:
                if f"Subject: {subject}\r\n".encode() in eml.read_bytes():
                    return env
            except OSError:
                pass
        return None

    def queue_empty(self) -> bool:
        return not list((self.srv.data_dir / "queue").glob("*.json"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("relay-faults")
    port = common_port((REMOTE,))
    dns = FakeDNS({"remote.test": [("MX", "10 mx.remote.test.")], "mx.remote.test": [("A", REMOTE)]}).start()
    mx = FaultyMX(REMOTE, port).start()
    srv = MailServer(tmp, services=("submission",), extra_config=f"""
[relay]
port = {port}
resolvers = ["{dns.address}"]
ipv6 = false
first_retry = 0.2
max_retry_interval = 0.5
command_timeout = {TIMEOUT}
data_timeout = {TIMEOUT}
data_end_timeout = {TIMEOUT}
""")
    srv.add_user("alice@example.org", PASSWORD)
    srv.start()
    world = World(srv, mx, dns)
    try:
        yield world
    finally:
        world.close()
        srv.stop()
        mx.stop()
        dns.stop()
        log = srv.log_text()
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def w(world: World) -> Iterator[World]:
    world.mx.heal()
    world.mx.release.clear()
    assert wait_until(world.queue_empty), world.envelopes()
    yield world
    world.mx.heal()
    world.mx.release.set()
    # leave nothing behind for the next case (a failed case must not make the others fail)
    wait_until(world.queue_empty, 10)


def fault_then_heal(w: World, subject: str, reason: str, body: bytes = b"") -> dict:
    """Submit, wait until the failure is recorded in the queue, heal the MX, wait for the delivery."""
    sent = w.submit(subject, body)
    env = wait_until(lambda: (e := w.envelope_of(subject)) and e["recipients"][0]["attempts"] >= 1 and e)
    assert env, (w.envelopes(), w.srv.log_text()[-3000:])
    rcpt = env["recipients"][0]
    # deferred, not bounced, with the reason; the message file is intact
    assert rcpt["status"] == "queued" and rcpt["last_error"].startswith("421 4.4.2 "), rcpt
    assert reason in rcpt["last_error"], rcpt
    assert rcpt["next_attempt"] > rcpt["last_attempt"]
    assert (w.srv.data_dir / "queue" / f"{env['id']}.eml").read_bytes().endswith(sent.split(b"\r\n\r\n", 1)[1])
    assert w.mx.count(subject) == 0
    w.mx.heal()
    assert wait_until(lambda: w.queue_empty() and w.mx.count(subject) >= 1), w.srv.log_text()[-3000:]
    # the queue entry is gone, so nothing can be sent again: the count is final
    assert w.mx.count(subject) == 1
    (got,) = [m for m in w.mx.accepted if m.subject == subject]
    assert got.data.endswith(sent.split(b"\r\n\r\n", 1)[1]) and got.rcpts == ["RCPT TO:<bob@remote.test>"]
    assert f"{env['id']} to <bob@remote.test> deferred (421 4.4.2 " in w.srv.log_text()
    return env


def big_body(mark: str) -> bytes:
    """~400 KiB, several times `partial`, so the MX cuts the body off in the middle."""
    return b"".join(b"%s line %06d .with a dot now and then\r\n" % (mark.encode(), i) for i in range(8000)) \
        + b".leading dot\r\nEND\r\n"


# -- connection reset / closed ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["reset-mid", "close-mid"])
def test_connection_dropped_in_the_middle_of_data(w: World, how: str) -> None:
    """RST (or FIN) after part of the body: the MX has no message; the relay retries and sends it once."""
    subject = f"{how}-{uuid.uuid4().hex}"
    w.mx.end = how
    fault_then_heal(w, subject, "connection lost", big_body(subject))
    assert w.mx.count(subject, "seen") == 1          # the cut-off attempts never made a whole message


@pytest.mark.parametrize("how", ["reset", "silent"])
def test_no_reply_after_the_final_dot_is_retried(w: World, how: str) -> None:
    """The MX reads the whole message, then resets (or never answers, RFC 5321 §4.5.3.2.6 timeout): the
    relay cannot know whether the MX took it (RFC 1047), so it keeps it queued and sends it again.  The MX
    saw the body more than once but acknowledged it once: a real MX that had kept the first copy would
    deliver a duplicate, the documented price of never losing mail."""
    subject = f"dot-{how}-{uuid.uuid4().hex}"
    w.mx.end = how
    reason = "connection lost" if how == "reset" else "timeout waiting for the server (data-end)"
    fault_then_heal(w, subject, reason)
    assert w.mx.count(subject, "seen") >= 2


# -- blackholes and timeouts --------------------------------------------------------------------------------

def test_remote_that_never_greets_times_out(w: World) -> None:
    subject = f"nogreet-{uuid.uuid4().hex}"
    w.mx.greet = False
    start = time.monotonic()
    fault_then_heal(w, subject, "timeout waiting for the server (greeting)")
    assert time.monotonic() - start < 15


def test_remote_that_never_answers_data_times_out(w: World) -> None:
    """No 354 after DATA (RFC 5321 §4.5.3.2.4): data_timeout, then a retry; nothing was delivered."""
    subject = f"nodata-{uuid.uuid4().hex}"
    w.mx.data_cmd = "silent"
    fault_then_heal(w, subject, "timeout waiting for the server (data)")
    assert w.mx.count(subject, "seen") == 1


# -- slow drip --------------------------------------------------------------------------------------------

def test_slow_drip_within_the_timeouts_is_delivered_first_time(w: World) -> None:
    """Every reply one byte at a time (3 ms apart): slow, but each reply is whole well within the timeout."""
    subject = f"drip-{uuid.uuid4().hex}"
    w.mx.drip = 0.003
    before = w.mx.connections
    w.submit(subject)
    assert wait_until(lambda: w.queue_empty() and w.mx.count(subject) == 1), w.srv.log_text()[-3000:]
    assert w.mx.connections == before + 1 and w.mx.count(subject, "seen") == 1     # no second attempt


def test_drip_slower_than_the_timeout_is_a_temporary_failure(w: World) -> None:
    """A tarpit: the greeting comes one byte every 0.3 s.  Each byte arrives well within the 2 s timeout,
    but the timer runs per reply (RFC 5321 §4.5.3.2: per command), not per byte, so the whole greeting is
    late, the attempt fails, the message stays queued and goes out once the MX answers promptly."""
    subject = f"tarpit-{uuid.uuid4().hex}"
    w.mx.greeting_drip = 0.3
    start = time.monotonic()
    fault_then_heal(w, subject, "timeout waiting for the server (greeting)")
    assert time.monotonic() - start < 15


# -- the timeout keys ---------------------------------------------------------------------------------------

def test_timeout_keys_default_to_rfc5321_and_are_validated() -> None:
    from mailsuite.config import ConfigError, parse_settings
    from mailsuite.relay.deliver import Deliverer

    relay = parse_settings('domains = ["example.org"]\n').relay
    assert (relay.command_timeout, relay.data_timeout, relay.data_end_timeout) == (300.0, 120.0, 600.0)
    for key, value in (("command_timeout", "0"), ("data_timeout", "-1"), ("data_end_timeout", '"long"'),
                       ("connect_timeout", "0")):
        with pytest.raises(ConfigError, match=f"relay.{key}"):
            parse_settings(f'domains = ["example.org"]\n[relay]\n{key} = {value}\n', "t.toml")
    settings = parse_settings('domains = ["example.org"]\n[relay]\ncommand_timeout = 7\ndata_timeout = 8\n'
                              'data_end_timeout = 9\n')

    class NoResolver:
        def stop(self) -> None:
            pass
    deliverer = Deliverer(queue=None, settings=settings, reactor=object(), resolver=NoResolver())
    assert {p: deliverer.timeouts[p] for p in ("greeting", "ehlo", "mail", "rcpt", "data", "data-end", "quit")} \
        == {"greeting": 7.0, "ehlo": 7.0, "mail": 7.0, "rcpt": 7.0, "data": 8.0, "data-end": 9.0, "quit": 7.0}
