"""End-to-end relay delivery on loopback: a DNS server with test zones, receiving SMTP servers on 127.0.0.2
(accepts), 127.0.0.3 (421 greeting) and 127.0.0.4 (nothing listens), the real queue, store and accounts.
Retry time is simulated with a twisted Clock; connections are real."""

from __future__ import annotations

import shutil
import tempfile

import email
import email.policy
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet import task
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.accounts import Accounts
from mailsuite.relay.dns import MXResolver, RouteError
from mailsuite.relay.dotstuff import stuff
from mailsuite.relay.service import RelayService
from mailsuite.store import Store

from .relay_support import FakeDNS, FakeSMTP, SMTPBehaviour, common_port, make_cert

GOOD, BUSY, DOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4"

ZONE = {
    "pref.test": [("MX", "5 mx-down.test."), ("MX", "10 mx-busy.test."), ("MX", "20 mx-good.test.")],
    "mx-down.test": [("A", DOWN)],
    "mx-busy.test": [("A", BUSY)],
    "mx-good.test": [("A", GOOD)],
    "amx.test": [("A", GOOD)],
    "null.test": [("MX", "0 .")],
    "alias.test": [("CNAME", "real.test.")],
    "real.test": [("MX", "10 mx.real.test.")],
    "mx.real.test": [("CNAME", "mx-good.test.")],
    "down.test": [("MX", "10 mx-down.test.")],
    "own.test": [("MX", "10 mail.here.org."), ("MX", "20 mx-good.test.")],
    "own2.test": [("MX", "10 mx-good.test."), ("MX", "20 mail.here.org.")],
    "mail.here.org": [("A", "127.0.0.1")],
    "v6.test": [("MX", "10 mx.v6.test.")],
    "mx.v6.test": [("AAAA", "::1"), ("A", GOOD)],
    "eq.test": [("MX", "10 a.eq.test."), ("MX", "10 b.eq.test."), ("MX", "20 c.eq.test.")],
    "a.eq.test": [("A", "127.0.0.11")],
    "b.eq.test": [("A", "127.0.0.12")],
    "c.eq.test": [("A", "127.0.0.13")],
    "broken.test": [("SERVFAIL", "")],
    "noaddr.test": [("TXT", '"nothing"')],
    "silent.test": [("MX", "10 mx.silent.test.")],
    "mx.silent.test": [("A", "127.0.0.5")],
}

MSG = (b"From: Alice <alice@here.org>\r\nTo: bob@amx.test\r\nSubject: relay test\r\n"
       b"Message-ID: <t1@here.org>\r\n\r\nHello.\r\n")


def report_of(data: bytes) -> tuple[email.message.EmailMessage, list[dict[str, str]]]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    part = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"][0]
    groups = [{k.lower(): str(v) for k, v in sub.items()} for sub in part.get_payload()]
    return msg, groups


class RelayWorld(unittest.TestCase):
    relay_options: dict = {}

    def setUp(self) -> None:
        pool = getattr(reactor, "threadpool", None)
        if pool is not None and pool.joined:
            # another module stopped the reactor's shared pool without forgetting it; trial's janitor
            # would trip over it (AlreadyQuit), so let the reactor make a fresh one when needed
            reactor.threadpool = None
        self.tmp = Path(tempfile.mkdtemp(prefix="mailsuite-relay-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = common_port((GOOD, BUSY, DOWN, "127.0.0.5"))
        self.cert = make_cert(self.tmp / "tls")
        self.good_behaviour = SMTPBehaviour(rcpt=self._rcpt)
        self.good = FakeSMTP(GOOD, self.port, "mx-good.test", self.good_behaviour).start()
        self.busy = FakeSMTP(BUSY, self.port, "mx-busy.test", SMTPBehaviour(greeting="421 4.3.2 too busy")).start()
        self.dns = FakeDNS(ZONE).start()
        self.accounts = Accounts(self.tmp / "users", self.tmp / "aliases", ("here.org",))
        self.accounts.add_user("alice@here.org", "pw", scheme="SCRYPT")
        # the store writes inline here: these tests do not depend on the reactor's shared thread pool
        self.store = Store(self.tmp / "mail", runner=lambda f: defer.execute(f))
        options = dict(port=self.port, resolvers=(self.dns.address,), first_retry=300.0,
                       max_retry_interval=3600.0, max_lifetime=5 * 86400.0, delay_warning=4 * 3600.0,
                       max_concurrency=10, connect_timeout=5.0, starttls="opportunistic",
                       require_tls_domains=(), smarthost="", ipv6=False)
        options.update(self.relay_options)
        self.settings = SimpleNamespace(hostname="mail.here.org", data_dir=self.tmp,
                                        relay=SimpleNamespace(**options))
        ctx = SimpleNamespace(settings=self.settings, accounts=self.accounts, store=self.store,
                              reactor=reactor, queue=None)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.relay = RelayService(ctx, clock=self.clock)
        self.queue = self.relay.queue
        self.queue.load()
        self.relay.startService()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.relay.stopService()
        self.good.stop()
        self.busy.stop()
        self.dns.stop()

    def _rcpt(self, address: str) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 <%s>: no such user" % address
        if address.startswith("later"):
            return "450 4.2.0 mailbox busy"
        return "250 2.1.5 ok"

    @defer.inlineCallbacks
    def send(self, rcpts, data=MSG, sender="alice@here.org", dsn=None):
        ident = yield self.queue.enqueue(sender, rcpts, data, dsn)
        yield self.relay.deliverer.idle()
        return ident

    @defer.inlineCallbacks
    def advance(self, seconds: float):
        self.clock.advance(seconds)
        yield self.relay.deliverer.idle()

    def inbox(self, user: str = "alice@here.org") -> list[bytes]:
        local, _, domain = user.partition("@")
        box = self.tmp / "mail" / domain / local
        files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in sorted((box / sub).iterdir())]
        return [p.read_bytes() for p in files]

    def rcpts_at(self, server: FakeSMTP) -> list[str]:
        return [r for m in server.received for r in m.rcpts]


class MXRouting(RelayWorld):

    @defer.inlineCallbacks
    def test_mx_preference_with_fallback_when_first_refuse(self):
        yield self.send(["bob@pref.test"])
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<bob@pref.test>"])
        self.assertGreaterEqual(self.busy.connections, 1)      # tried before the less preferred host
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.good.received[0].data, MSG)
        self.assertEqual(self.good.received[0].helo, "mail.here.org")

    @defer.inlineCallbacks
    def test_no_mx_falls_back_to_address_record(self):
        yield self.send(["bob@amx.test"])
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<bob@amx.test>"])

    @defer.inlineCallbacks
    def test_cname_chains_are_followed(self):
        yield self.send(["bob@alias.test"])
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<bob@alias.test>"])

    @defer.inlineCallbacks
    def test_null_mx_bounces_556(self):
        yield self.send(["bob@null.test"])
        (bounce,) = self.inbox()
        self.assertTrue(bounce.startswith(b"Return-Path: <>\r\n"))
        msg, groups = report_of(bounce)
        self.assertEqual(groups[1]["status"], "5.1.10")
        self.assertIn("556", groups[1]["diagnostic-code"])
        self.assertEqual(self.good.received, [])

    @defer.inlineCallbacks
    def test_own_mx_is_never_tried(self):
        yield self.send(["bob@own.test"])
        _, groups = report_of(self.inbox()[0])
        self.assertEqual(groups[1]["status"], "5.4.6")
        yield self.send(["carol@own2.test"])
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<carol@own2.test>"])

    def test_resolver_orders_and_classifies(self):
        resolver = MXResolver(nameservers=[self.dns.address], local_names=["mail.here.org"])
        try:
            self.assertEqual([t.address for t in resolver.route_sync("v6.test")], ["::1", GOOD])
            seen = set()
            for _ in range(40):
                targets = resolver.route_sync("eq.test")
                self.assertEqual(targets[-1].host, "c.eq.test")
                seen.add(tuple(t.host for t in targets[:2]))
            self.assertEqual(seen, {("a.eq.test", "b.eq.test"), ("b.eq.test", "a.eq.test")})
            for domain, code in (("null.test", 556), ("nowhere.test", 550), ("broken.test", 451),
                                 ("noaddr.test", 550)):
                with self.assertRaises(RouteError) as caught:
                    resolver.route_sync(domain)
                self.assertEqual(caught.exception.reply.code, code, domain)
            self.assertEqual(resolver.route_sync("[127.0.0.9]")[0].address, "127.0.0.9")
        finally:
            resolver.stop()


class Outcomes(RelayWorld):

    @defer.inlineCallbacks
    def test_5xx_gives_a_well_formed_dsn_in_the_senders_inbox(self):
        yield self.send(["bob@amx.test", "reject@amx.test"],
                        dsn={"envid": "QQ314", "recipients": {"reject@amx.test": {"orcpt": "rfc822;reject@amx.test"}}})
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<bob@amx.test>"])
        (bounce,) = self.inbox()
        msg, groups = report_of(bounce)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@here.org")
        self.assertEqual(groups[0]["reporting-mta"], "dns; mail.here.org")
        self.assertEqual(groups[0]["original-envelope-id"], "QQ314")
        self.assertEqual(len(groups), 2)
        self.assertEqual(groups[1]["final-recipient"], "rfc822; reject@amx.test")
        self.assertEqual(groups[1]["original-recipient"], "rfc822; reject@amx.test")
        self.assertEqual(groups[1]["action"], "failed")
        self.assertEqual(groups[1]["status"], "5.1.1")
        self.assertEqual(groups[1]["remote-mta"], "dns; amx.test")
        self.assertTrue(groups[1]["diagnostic-code"].startswith("smtp; 550 5.1.1"))
        original = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"][0]
        self.assertIn(b"Message-ID: <t1@here.org>", original.as_bytes())
        self.assertEqual(len(self.queue), 0)

    @defer.inlineCallbacks
    def test_null_sender_is_never_bounced(self):
        yield self.send(["reject@amx.test"], sender="")
        self.assertEqual(self.inbox(), [])
        self.assertEqual(len(self.queue), 0)

    @defer.inlineCallbacks
    def test_4xx_is_retried_later_and_delivered(self):
        attempts = []

        def data_reply(count: int, data: bytes) -> str:
            attempts.append(count)
            return "451 4.3.0 try again later" if len(attempts) == 1 else "250 2.0.0 queued"
        self.good_behaviour.data = data_reply
        ident = yield self.send(["bob@amx.test"])
        self.assertEqual(self.good.received, [])
        entry = self.queue.get(ident)
        self.assertEqual(entry.recipients[0].next_attempt - self.clock.seconds(), 300)
        self.assertIn("451 4.3.0", entry.recipients[0].last_error)
        yield self.advance(299)
        self.assertEqual(len(attempts), 1)
        yield self.advance(1)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(self.rcpts_at(self.good), ["RCPT TO:<bob@amx.test>"])
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.inbox(), [])

    @defer.inlineCallbacks
    def test_remote_down_past_lifetime_warns_then_fails(self):
        ident = yield self.send(["bob@down.test"])
        start = self.queue.get(ident).created
        for _ in range(400):
            if ident not in self.queue:
                break
            wake = self.queue.next_wakeup()
            yield self.advance(wake - self.clock.seconds())
        self.assertNotIn(ident, self.queue)
        reports = [report_of(b) for b in self.inbox()]
        self.assertEqual([g[1]["action"] for _, g in reports], ["delayed", "failed"])
        self.assertIn("Delayed", reports[0][0]["Subject"])
        self.assertIn("will-retry-until", reports[0][1][1])
        self.assertTrue(reports[1][1][1]["status"].startswith("4."))
        self.assertIn("cannot connect", reports[1][1][1]["diagnostic-code"])
        self.assertGreaterEqual(self.clock.seconds() - start, 5 * 86400)
        self.assertLess(self.clock.seconds() - start, 5 * 86400 + 3601)

    @defer.inlineCallbacks
    def test_several_domains_split_and_recorded_per_recipient(self):
        yield self.send(["bob@amx.test", "carol@pref.test", "later@amx.test"])
        self.assertEqual(sorted(self.rcpts_at(self.good)), ["RCPT TO:<bob@amx.test>", "RCPT TO:<carol@pref.test>"])
        (entry,) = self.queue.entries()
        states = {r.address: r.status for r in entry.recipients}
        self.assertEqual(states, {"bob@amx.test": "sent", "carol@pref.test": "sent", "later@amx.test": "queued"})

    @defer.inlineCallbacks
    def test_dsn_parameters_are_passed_on(self):
        yield self.send(["bob@amx.test"], dsn={"ret": "HDRS", "envid": "E 1",
                                                "recipients": {"bob@amx.test": {"notify": "SUCCESS,FAILURE",
                                                                                "orcpt": "rfc822;bob@amx.test"}}})
        (m,) = self.good.received
        self.assertIn("RET=HDRS", m.mail)
        self.assertIn("ENVID=E+201", m.mail)
        self.assertIn("NOTIFY=SUCCESS,FAILURE", m.rcpts[0])
        self.assertIn("ORCPT=rfc822;bob@amx.test", m.rcpts[0])
        self.assertEqual(self.inbox(), [])        # the next hop took over the DSN duty


class Connections(RelayWorld):
    relay_options = {"max_per_destination": 1}

    @defer.inlineCallbacks
    def test_one_connection_carries_several_messages(self):
        self.relay.deliverer.stop()
        ds = [self.queue.enqueue("alice@here.org", [f"u{i}@amx.test"], MSG) for i in range(3)]
        yield defer.gatherResults(ds)
        self.relay.deliverer.start()
        yield self.relay.deliverer.idle()
        self.assertEqual(len(self.good.received), 3)
        self.assertEqual(self.good.connections, 1)
        self.assertEqual(sum(1 for c in self.good.commands if c == "RSET"), 2)

    @defer.inlineCallbacks
    def test_dot_stuffing_at_every_chunk_boundary_arrives_byte_exact(self):
        self.relay.deliverer.chunk_size = 61
        lines = [b"Subject: dots", b""]
        for i in range(1, 400):
            lines.append(b"." + b"x" * ((i * 13) % 71))  # line starts fall on every offset mod 61
        lines += [b".", b"..", b"end"]
        data = b"\r\n".join(lines) + b"\r\n"
        yield self.send(["bob@amx.test"], data=data)
        starts = {0} | {i + 2 for i in range(len(data)) if data.startswith(b"\r\n.", i)}
        self.assertEqual({s % 61 for s in starts}, set(range(61)))      # a "." line at every chunk offset
        (m,) = self.good.received
        self.assertEqual(m.data, data)
        self.assertEqual(m.raw, stuff(data))
        self.assertEqual(m.raw.count(b"\r\n..x"), sum(1 for x in lines if x.startswith(b".x")))
        self.assertTrue(m.raw.endswith(b"\r\n..\r\n...\r\nend\r\n.\r\n"))

    @defer.inlineCallbacks
    def test_a_big_message_streams_block_by_block_over_starttls(self):
        # ~3 MB in 64 KiB blocks through the TLS layer's pull-to-push producer (RFC 5321 §4.5.3.2.5)
        self.good_behaviour.cert = self.cert
        data = b"Subject: big\r\n\r\n" + b"".join(b".%06d " % i + b"x" * 960 + b"\r\n" for i in range(3000))
        yield self.send(["bob@amx.test"], data=data)
        (m,) = self.good.received
        self.assertTrue(m.tls)
        self.assertEqual(m.data, data)
        self.assertEqual(m.raw, stuff(data))

    @defer.inlineCallbacks
    def test_opportunistic_starttls_to_mx(self):
        self.good_behaviour.cert = self.cert
        yield self.send(["bob@amx.test"])
        (m,) = self.good.received
        self.assertTrue(m.tls)


class Timeouts(RelayWorld):

    @defer.inlineCallbacks
    def test_silent_server_times_out_after_the_rfc5321_greeting_wait(self):
        silent = FakeSMTP("127.0.0.5", self.port, "mx.silent.test", SMTPBehaviour(greeting="")).start()
        self.addCleanup(silent.stop)
        ident = yield self.queue.enqueue("alice@here.org", ["bob@silent.test"], MSG)
        for _ in range(200):
            if silent.connections:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(silent.connections, 1)
        self.clock.advance(299)                              # RFC 5321 §4.5.3.2.1: 5 minutes for the 220
        self.assertTrue(self.relay.deliverer.busy())
        self.clock.advance(1)
        yield self.relay.deliverer.idle()
        self.assertIn("timeout waiting for the server (greeting)", self.queue.get(ident).recipients[0].last_error)


class BrokenTLS(RelayWorld):

    @defer.inlineCallbacks
    def test_failed_opportunistic_handshake_is_retried_in_clear_text(self):
        self.good_behaviour.cert = self.cert
        self.good_behaviour.broken_tls = True
        yield self.send(["bob@amx.test"])
        (m,) = self.good.received
        self.assertFalse(m.tls)
        self.assertEqual(self.good.connections, 2)
        self.assertEqual(self.good.commands.count("STARTTLS"), 1)


class RequiredTLS(RelayWorld):
    relay_options = {"require_tls_domains": ("amx.test",)}

    @defer.inlineCallbacks
    def test_required_tls_without_starttls_is_deferred_not_sent(self):
        ident = yield self.send(["bob@amx.test"])
        self.assertEqual(self.good.received, [])
        self.assertIn("4.7.5", self.queue.get(ident).recipients[0].last_error)
        self.good_behaviour.cert = self.cert
        yield self.advance(300)
        self.assertTrue(self.good.received[0].tls)

    @defer.inlineCallbacks
    def test_required_tls_never_falls_back_to_clear_text(self):
        self.good_behaviour.cert = self.cert
        self.good_behaviour.broken_tls = True
        ident = yield self.send(["bob@amx.test"])
        self.assertEqual(self.good.received, [])
        self.assertEqual(self.good.connections, 1)
        self.assertIn(ident, self.queue)


class Smarthost(RelayWorld):
    implicit = False

    def setUp(self) -> None:
        certdir = Path(tempfile.mkdtemp(prefix="mailsuite-relay-cert-"))
        self.addCleanup(shutil.rmtree, certdir, True)
        self.cert = make_cert(certdir / "smarthost-tls")
        behaviour = SMTPBehaviour(cert=self.cert, users={"relayuser": "s3cret"}, require_tls=True,
                                  require_auth=True, implicit_tls=self.implicit)
        self.smart = FakeSMTP("127.0.0.1", 0, "smarthost.test", behaviour).start()
        self.relay_options = {"smarthost": "localhost", "smarthost_port": self.smart.port,
                              "smarthost_tls": "implicit" if self.implicit else "starttls",
                              "smarthost_user": "relayuser", "smarthost_password": "s3cret",
                              "smarthost_ca_file": str(self.cert[0])}
        super().setUp()

    def tearDown(self):
        self.smart.stop()
        return super().tearDown()

    @defer.inlineCallbacks
    def test_all_mail_goes_through_the_smarthost_with_tls_and_auth(self):
        yield self.send(["bob@amx.test", "carol@pref.test"])
        self.assertEqual(self.good.received, [])
        rcpts = sorted(r for m in self.smart.received for r in m.rcpts)
        self.assertEqual(rcpts, ["RCPT TO:<bob@amx.test>", "RCPT TO:<carol@pref.test>"])
        for m in self.smart.received:
            self.assertTrue(m.tls)
            self.assertEqual(m.auth, "relayuser")
        self.assertEqual(len(self.queue), 0)

    @defer.inlineCallbacks
    def test_bad_credentials_defer_and_never_bounce(self):
        self.relay.deliverer.smarthost_password = "wrong"
        ident = yield self.send(["bob@amx.test"])
        self.assertEqual(self.smart.received, [])
        self.assertIn("authentication failed", self.queue.get(ident).recipients[0].last_error)
        self.assertEqual(self.inbox(), [])


class SmarthostImplicitTLS(Smarthost):
    implicit = True
