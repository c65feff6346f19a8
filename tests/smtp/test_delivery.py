"""Trace headers, submission fixes and the delivery fan-out (mailsuite.smtp.delivery)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet import defer

from mailsuite.accounts import LocalTarget, Resolution
from mailsuite.relay.queue import QueueEntry
from mailsuite.smtp.delivery import Delivery, _clean, prepare_submission, received_header, split_header, spool_outbound
from mailsuite.smtp.events import Envelope, Recipient, Reply
from mailsuite.tls import TLSInfo

NOW = 1_700_000_000.0


def test_split_header() -> None:
    lines, rest = split_header(b"A: 1\r\nB: 2\r\n  cont\r\n\r\nbody\r\n")
    assert lines == [b"A: 1\r\n", b"B: 2\r\n", b"  cont\r\n"] and rest == b"\r\nbody\r\n"
    assert split_header(b"just text\r\n") == ([], b"\r\njust text\r\n")
    assert split_header(b"A: 1\r\n") == ([b"A: 1\r\n"], b"")
    assert split_header(b"\r\nbody\r\n") == ([], b"\r\nbody\r\n")


def test_prepare_submission_removes_bcc_adds_date_and_message_id() -> None:
    msg = b"From: a@example.org\r\nBcc: hidden@x.test,\r\n\tother@y.test\r\nbcc : z@z.test\r\nSubject: s\r\n\r\nBcc: body\r\n"
    out = prepare_submission(msg, hostname="mail.example.org", now=NOW)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"hidden" not in head and b"other@y.test" not in head and b"z@z.test" not in head
    assert head.startswith(b"From: a@example.org\r\nSubject: s\r\nDate: ")
    assert b"\r\nMessage-ID: <" in head and head.endswith(b"@mail.example.org>")
    assert body == b"Bcc: body\r\n"


def test_prepare_submission_keeps_existing_date_and_message_id() -> None:
    msg = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <x@y>\r\n\r\nhi\r\n"
    assert prepare_submission(msg, hostname="h", now=NOW) == msg


def test_prepare_submission_headerless_message() -> None:
    out = prepare_submission(b"no header here\r\n", hostname="h", now=NOW)
    assert out.startswith(b"Date: ") and out.endswith(b"\r\n\r\nno header here\r\n")


def env(**kw: Any) -> Envelope:
    alice = Resolution((LocalTarget("alice@example.org", None),), ())
    base = dict(mail_from="a@example.com", recipients=[Recipient("alice@example.org", "local", alice)], helo="client.test",
                peer_ip="192.0.2.7")
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def test_received_header_mx() -> None:
    text = received_header(env(), hostname="mail.example.org", ident="abc", now=NOW).decode()
    assert text.startswith("Received: from client.test ([192.0.2.7])\r\n\tby mail.example.org (mailsuite) "
                           "with ESMTP id abc\r\n\tfor <alice@example.org>;\r\n\t")
    assert text.endswith("\r\n") and text.count("\r\n") == 4


def test_received_header_submission_tls_auth_several_recipients() -> None:
    e = env(tls=True, auth_user="alice@example.org", peer_ip="2001:db8::1", helo="bad (helo)",
            recipients=[Recipient("a@x.test", "external"), Recipient("bob@example.org", "local")])
    text = received_header(e, hostname="h", ident="i", now=NOW, tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256")).decode()
    assert "from bad ?helo? ([IPv6:2001:db8::1])" in text
    assert "with ESMTPSA id i" in text
    assert "(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)" in text
    assert "(Authenticated sender: alice@example.org);" in text
    assert " for " not in text      # several recipients: no for-clause (would reveal Bcc)


def test_received_protocol_names() -> None:
    assert "with SMTP id" in received_header(env(esmtp=False), hostname="h", ident="i", now=NOW).decode()
    assert "with UTF8SMTPS id" in received_header(env(smtputf8=True, tls=True), hostname="h", ident="i",
                                                  now=NOW).decode()


def test_spool_outbound_matches_relay_queue_format(tmp_path: Path) -> None:
    dsn = {"ret": "HDRS", "envid": "E1", "recipients": {"x@y.test": {"notify": "FAILURE", "orcpt": "rfc822;x@y.test"}}}
    ident = spool_outbound(tmp_path, "a@example.org", ["x@y.test"], b"Subject: q\r\n\r\nq\r\n", dsn, NOW)
    assert (tmp_path / f"{ident}.eml").read_bytes() == b"Subject: q\r\n\r\nq\r\n"
    entry = QueueEntry.from_json((tmp_path / f"{ident}.json").read_text())
    assert (entry.id, entry.sender, entry.ret, entry.envid) == (ident, "a@example.org", "HDRS", "E1")
    assert entry.recipients[0].address == "x@y.test" and entry.recipients[0].notify == "FAILURE"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((tmp_path / f"{ident}.json").read_text())["version"] == 1


class FakeStore:
    def __init__(self, fail_folders: tuple[str, ...] = (), broken: bool = False) -> None:
        self.delivered: list[tuple[str, str, bytes]] = []
        self.fail_folders, self.broken = fail_folders, broken

    def deliver(self, user: str, data: bytes, folder: str = "INBOX", *, crlf: bool = False) -> defer.Deferred:
        if self.broken:
            return defer.fail(OSError("disk full"))
        if folder in self.fail_folders:
            return defer.fail(ValueError("bad folder"))
        self.delivered.append((user, folder, data))
        return defer.succeed("file")


class FakeQueue:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bytes, dict]] = []

    def enqueue(self, sender: str, rcpts: list[str], data: bytes, dsn: dict) -> defer.Deferred:
        self.calls.append((sender, rcpts, data, dsn))
        return defer.succeed("q123")


def ctx(tmp_path: Path, store: FakeStore, queue: Any = None) -> Any:
    settings = SimpleNamespace(hostname="mail.example.org", data_dir=tmp_path)
    return SimpleNamespace(settings=settings, store=store, queue=queue, reactor=SimpleNamespace(seconds=lambda: NOW),
                           accounts=None)


def result_of(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def test_local_fanout_with_aliases_plus_folder_and_forward(tmp_path: Path) -> None:
    store, queue = FakeStore(fail_folders=("no/such",)), FakeQueue()
    recipients = [
        Recipient("team@example.org", "local", Resolution((LocalTarget("alice@example.org", None),
                                                            LocalTarget("bob@example.org", None)), ("fwd@x.test",))),
        Recipient("alice@example.org", "local", Resolution((LocalTarget("alice@example.org", None),), ())),
        Recipient("bob+no/such@example.org", "local", Resolution((LocalTarget("bob@example.org", "no/such"),), ())),
        Recipient("out@y.test", "external", None, ("SUCCESS",), "rfc822;out+2B1@y.test"),
    ]
    reply = result_of(Delivery(ctx(tmp_path, store, queue)).deliver(
        env(recipients=recipients, ret="FULL", envid="ID+2B1"), b"Subject: s\r\n\r\nb\r\n", submission=False))
    assert reply == Reply(250, "2.0.0", "Ok: queued as q123")
    assert [(u, f) for u, f, _ in store.delivered] == [("alice@example.org", "INBOX"), ("bob@example.org", "INBOX"),
                                                      ("bob@example.org", "INBOX")]
    data = store.delivered[0][2]
    assert data.startswith(b"Return-Path: <a@example.com>\r\nReceived: from client.test")
    assert data.endswith(b"Subject: s\r\n\r\nb\r\n")
    sender, rcpts, qdata, dsn = queue.calls[0]
    assert sender == "a@example.com" and rcpts == ["fwd@x.test", "out@y.test"]
    assert qdata.startswith(b"Received: ") and b"Return-Path" not in qdata
    assert dsn == {"ret": "FULL", "envid": "ID+1", "recipients": {
        "out@y.test": {"notify": "SUCCESS", "orcpt": "rfc822;out+1@y.test"}}}


def test_submission_copy_is_fixed(tmp_path: Path) -> None:
    store = FakeStore()
    result_of(Delivery(ctx(tmp_path, store)).deliver(
        env(auth_user="alice@example.org", tls=True), b"Bcc: x@y\r\nSubject: s\r\n\r\nb\r\n", submission=True))
    data = store.delivered[0][2]
    assert b"Bcc:" not in data and b"\r\nDate: " in data and b"\r\nMessage-ID: <" in data


def test_spool_when_no_queue(tmp_path: Path) -> None:
    store = FakeStore()
    reply = result_of(Delivery(ctx(tmp_path, store, None)).deliver(
        env(recipients=[Recipient("out@y.test", "external")]), b"S: 1\r\n\r\nb\r\n", submission=True))
    assert reply.code == 250 and reply.text.startswith("Ok: queued as ")
    ident = reply.text.rsplit(" ", 1)[1]
    assert (tmp_path / "queue" / f"{ident}.eml").is_file() and (tmp_path / "queue" / f"{ident}.json").is_file()


def test_store_failure_gives_451(tmp_path: Path) -> None:
    reply = result_of(Delivery(ctx(tmp_path, FakeStore(broken=True))).deliver(
        env(recipients=[Recipient("alice@example.org", "local", Resolution((LocalTarget("alice@example.org", None),), ()))]),
        b"x\r\n", submission=False))
    assert reply == Reply(451, "4.3.0", "Local error in processing, try again later")


class FolderStore(FakeStore):
    def list_mailboxes(self, user: str) -> list[Any]:
        return [SimpleNamespace(name=n, selectable=True) for n in ("INBOX", "Junk", "Work.Projects")]


def test_plus_folder_matched_case_insensitively(tmp_path: Path) -> None:
    store = FolderStore()
    recipients = [Recipient("bob+junk@example.org", "local", Resolution((LocalTarget("bob@example.org", "junk"),), ())),
                  Recipient("bob+work.projects@example.org", "local",
                            Resolution((LocalTarget("bob@example.org", "work.projects"),), ())),
                  Recipient("bob+nothere@example.org", "local",
                            Resolution((LocalTarget("bob@example.org", "nothere"),), ()))]
    assert result_of(Delivery(ctx(tmp_path, store)).deliver(env(recipients=recipients), b"x\r\n",
                                                            submission=False)).code == 250
    assert [f for _u, f, _d in store.delivered] == ["Junk", "Work.Projects", "INBOX"]


def test_received_header_is_ascii_even_for_odd_helo(tmp_path: Path) -> None:
    text = received_header(env(helo="h\u00e9lo\x07"), hostname="h", ident="i", now=NOW)
    assert text.isascii() and b"from h?lo?" in text


@given(st.text(max_size=40) | st.text(alphabet="ab.-()\\ \x7f\u00e9\u2028\r\n", max_size=12))
def test_clean_keeps_printable_ascii_and_replaces_the_rest(text: str) -> None:
    """The regex fast path of _clean gives what the per-character rule gives (header comment safety)."""
    expected = "".join(c if c.isascii() and c.isprintable() and c not in "()\\" else "?" for c in text)[:200]
    assert _clean(text) == (expected or "unknown")
