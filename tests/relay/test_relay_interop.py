"""The relay's client against mailsuite's own SMTP server (port 25 role) on 127.0.0.2, in one reactor:
PIPELINING, STARTTLS, DSN, 8BITMIME and dot-stuffing between two independent implementations."""

from __future__ import annotations

import shutil
import tempfile

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.accounts import Accounts
from mailsuite.config import Settings
from mailsuite.relay.service import RelayService
from mailsuite.service import build_context
from mailsuite.smtp.adapter import build_factory
from mailsuite.store import Store

from .relay_support import FakeDNS, common_port, make_cert

ZONE = {"there.test": [("MX", "10 mx.there.test.")], "mx.there.test": [("A", "127.0.0.2")]}


class AgainstOurOwnServer(unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        pool = getattr(reactor, "threadpool", None)
        if pool is not None and pool.joined:
            reactor.threadpool = None      # see test_relay_delivery.RelayWorld.setUp
        self.tmp = Path(tempfile.mkdtemp(prefix="mailsuite-relay-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        port = common_port(("127.0.0.2",))
        # the receiving side: a real mailsuite context for there.test
        receiving = replace(Settings(), hostname="mx.there.test", domains=("there.test",),
                            data_dir=self.tmp / "receiver")
        self.rctx = build_context(receiving, reactor)
        self.rctx.accounts.add_user("bob@there.test", "pw", scheme="SCRYPT")
        ep = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.2")
        self.listener = yield ep.listen(build_factory(self.rctx, "smtp"))
        # the sending side: the relay for here.org
        self.dns = FakeDNS(ZONE).start()
        accounts = Accounts(self.tmp / "users", self.tmp / "aliases", ("here.org",))
        accounts.add_user("alice@here.org", "pw", scheme="SCRYPT")
        store = Store(self.tmp / "mail", runner=lambda f: defer.execute(f))
        settings = SimpleNamespace(hostname="mail.here.org", data_dir=self.tmp / "sender", relay=SimpleNamespace(
            port=port, resolvers=(self.dns.address,), ipv6=False))
        ctx = SimpleNamespace(settings=settings, accounts=accounts, store=store, reactor=reactor, queue=None)
        self.relay = RelayService(ctx, clock=Clock())
        self.relay.queue.load()
        self.relay.startService()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.relay.stopService()
        yield self.listener.stopListening()
        self.dns.stop()
        close = getattr(self.rctx.store, "close", None)
        if close is not None:
            close()

    def bob_messages(self) -> list[bytes]:
        box = self.tmp / "receiver" / "mail" / "there.test" / "bob"
        return [p.read_bytes() for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]

    @defer.inlineCallbacks
    def test_message_arrives_byte_exact_over_starttls(self):
        body = "Subject: interop ünïcode\r\nMessage-ID: <i1@here.org>\r\n\r\n".encode() + b"".join(
            b".line %d\r\n" % i for i in range(3000)) + b".\r\n..\r\nend\r\n"
        yield self.relay.queue.enqueue("alice@here.org", ["bob@there.test"], body,
                                       {"ret": "HDRS", "envid": "X1",
                                        "recipients": {"bob@there.test": {"notify": "FAILURE"}}})
        yield self.relay.deliverer.idle()
        (stored,) = self.bob_messages()
        self.assertTrue(stored.endswith(body))
        trace = stored[:-len(body)]
        self.assertIn(b"Return-Path: <alice@here.org>", trace)
        self.assertIn(b"from mail.here.org", trace)         # our EHLO name
        self.assertIn(b"using TLSv1.", trace)               # opportunistic STARTTLS was used
        self.assertEqual(len(self.relay.queue), 0)

    @defer.inlineCallbacks
    def test_unknown_user_bounces_back_to_the_local_sender(self):
        yield self.relay.queue.enqueue("alice@here.org", ["nobody@there.test"], b"Subject: x\r\n\r\nx\r\n")
        yield self.relay.deliverer.idle()
        self.assertEqual(self.bob_messages(), [])
        box = self.tmp / "mail" / "here.org" / "alice" / "new"
        (bounce,) = [p.read_bytes() for p in box.iterdir()]
        self.assertIn(b"Final-Recipient: rfc822; nobody@there.test", bounce)
        self.assertIn(b"Status: 5.1.1", bounce)
        self.assertIn(b"Remote-MTA: dns; mx.there.test", bounce)
        self.assertEqual(len(self.relay.queue), 0)


class SmarthostIsOurOwnSubmissionServer(unittest.TestCase):
    """Smarthost mode against mailsuite's 587 listener: STARTTLS (certificate verified), AUTH, relay."""

    @defer.inlineCallbacks
    def setUp(self):
        pool = getattr(reactor, "threadpool", None)
        if pool is not None and pool.joined:
            reactor.threadpool = None
        self.tmp = Path(tempfile.mkdtemp(prefix="mailsuite-relay-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        base = Settings()
        receiving = replace(base, hostname="smarthost.there.test", domains=("there.test",),
                            data_dir=self.tmp / "receiver", smtp=replace(base.smtp, sender_must_match=False))
        self.rctx = build_context(receiving, reactor)
        self.rctx.accounts.add_user("relay@there.test", "relay-pw", scheme="SCRYPT")
        self.rctx.accounts.add_user("bob@there.test", "pw", scheme="SCRYPT")
        ep = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.listener = yield ep.listen(build_factory(self.rctx, "submission"))
        accounts = Accounts(self.tmp / "users", self.tmp / "aliases", ("here.org",))
        store = Store(self.tmp / "mail", runner=lambda f: defer.execute(f))
        cert = self.tmp / "receiver" / "tls" / "selfsigned-cert.pem"      # made by build_context, names localhost
        settings = SimpleNamespace(hostname="mail.here.org", data_dir=self.tmp / "sender", relay=SimpleNamespace(
            smarthost="localhost", smarthost_port=self.listener.getHost().port, smarthost_tls="starttls",
            smarthost_user="relay@there.test", smarthost_password="relay-pw", smarthost_ca_file=str(cert)))
        ctx = SimpleNamespace(settings=settings, accounts=accounts, store=store, reactor=reactor, queue=None)
        self.relay = RelayService(ctx, clock=Clock())
        self.relay.queue.load()
        self.relay.startService()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.relay.stopService()
        yield self.listener.stopListening()
        close = getattr(self.rctx.store, "close", None)
        if close is not None:
            close()

    @defer.inlineCallbacks
    def test_relayed_through_the_smarthost_with_auth(self):
        body = b"Subject: via smarthost\r\nMessage-ID: <s1@here.org>\r\n\r\nhello\r\n"
        yield self.relay.queue.enqueue("alice@here.org", ["bob@there.test"], body)
        yield self.relay.deliverer.idle()
        box = self.tmp / "receiver" / "mail" / "there.test" / "bob" / "new"
        (stored,) = [p.read_bytes() for p in box.iterdir()]
        self.assertIn(b"(Authenticated sender: relay@there.test)", stored)
        self.assertIn(b"with ESMTPSA", stored)
        self.assertTrue(stored.endswith(b"\r\nhello\r\n"))
        self.assertEqual(len(self.relay.queue), 0)

    @defer.inlineCallbacks
    def test_untrusted_smarthost_certificate_is_refused(self):
        other_ca, _ = make_cert(self.tmp / "other-ca")
        self.relay.deliverer.smarthost_ca_file = str(other_ca)
        ident = yield self.relay.queue.enqueue("alice@here.org", ["bob@there.test"], b"Subject: x\r\n\r\nx\r\n")
        yield self.relay.deliverer.idle()
        self.assertFalse((self.tmp / "receiver" / "mail" / "there.test" / "bob" / "new").exists()
                         and list((self.tmp / "receiver" / "mail" / "there.test" / "bob" / "new").iterdir()))
        entry = self.relay.queue.get(ident)
        self.assertEqual(entry.recipients[0].status, "queued")
        self.assertTrue(entry.recipients[0].last_error.startswith("4"))
        self.assertIn("certificate verify failed", entry.recipients[0].last_error)
