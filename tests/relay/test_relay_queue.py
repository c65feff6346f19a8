"""The durable queue: files on disk, per-recipient status, retry schedule, DSNs (simulated time)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from mailsuite.relay.client import Reply
from mailsuite.relay.queue import Queue, QueuePolicy, sync_executor

MSG = b"From: a@here.org\r\nTo: b@there.net\r\nSubject: hi\r\nMessage-ID: <1@here.org>\r\n\r\nbody\r\n.dot\r\n"
OK = Reply(250, ("2.0.0 ok",))
NO = Reply(550, ("5.1.1 no such user",))
LATER = Reply(451, ("4.3.0 try later",))


def make_queue(path: Path, clock: Clock | None = None, **relay) -> Queue:
    settings = SimpleNamespace(hostname="mail.here.org", relay=SimpleNamespace(**relay))
    q = Queue(path / "queue", settings=settings, clock=clock or Clock(), executor=sync_executor)
    q.load(lock=False)
    return q


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def dsns(q: Queue) -> list[tuple[str, list[str], email.message.EmailMessage]]:
    """Queued reports (null sender): (sender, recipients, parsed message)."""
    out = []
    for e in q.entries():
        if e.sender == "":
            data = (q.dir / f"{e.id}.eml").read_bytes()
            out.append((e.sender, [r.address for r in e.recipients],
                        email.message_from_bytes(data, policy=email.policy.default)))
    return out


def status_groups(report) -> list[dict[str, str]]:
    part = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"][0]
    groups = []
    for sub in part.get_payload():
        groups.append({k.lower(): str(v) for k, v in sub.items()})
    return groups


def test_enqueue_writes_message_and_envelope_and_reloads(tmp_path):
    q = make_queue(tmp_path)
    ident = result(q.enqueue("a@here.org", ["b@there.net", "c@other.org"], MSG,
                             {"ret": "hdrs", "envid": "E1",
                              "recipients": {"b@there.net": {"notify": "SUCCESS", "orcpt": "rfc822;b@there.net"}}}))
    assert (q.dir / f"{ident}.eml").read_bytes() == MSG
    assert (q.dir / f"{ident}.json").exists()
    assert not [p for p in q.dir.iterdir() if p.name.startswith(".tmp-")]
    # leftovers of interrupted writes are cleaned at the next start
    (q.dir / ".tmp-x.json.1234").write_text("{}")
    (q.dir / "deadbeefdeadbeef.eml").write_bytes(b"never acknowledged")
    q2 = make_queue(tmp_path)
    e = q2.get(ident)
    assert e.sender == "a@here.org" and e.ret == "HDRS" and e.envid == "E1"
    assert [(r.address, r.notify, r.orcpt) for r in e.recipients] == [
        ("b@there.net", "SUCCESS", "rfc822;b@there.net"), ("c@other.org", None, None)]
    assert sorted(p.name for p in q2.dir.iterdir() if p.is_file()) == sorted(
        [f"{ident}.eml", f"{ident}.json"])


def test_jobs_are_split_per_domain_and_in_flight_once(tmp_path):
    q = make_queue(tmp_path)
    ident = result(q.enqueue("a@here.org", ["b@there.net", "c@there.net", "d@other.org"], MSG))
    jobs = q.due_jobs()
    assert sorted((j.domain, [r.address for r in j.recipients]) for j in jobs) == [
        ("other.org", ["d@other.org"]), ("there.net", ["b@there.net", "c@there.net"])]
    assert q.due_jobs() == []
    assert all(j.id == ident for j in jobs)


def test_many_recipients_are_split_into_transactions_of_50(tmp_path):
    q = make_queue(tmp_path)
    result(q.enqueue("a@here.org", [f"u{i}@there.net" for i in range(120)], MSG))
    jobs = q.due_jobs()
    assert [len(j.recipients) for j in jobs] == [50, 50, 20]
    result(q.record(jobs[0], [(r.address, OK) for r in jobs[0].recipients]))
    q.release(jobs[1])
    assert [len(j.recipients) for j in q.due_jobs()] == [50]      # jobs[2] is still in flight


def test_success_removes_the_message(tmp_path):
    q = make_queue(tmp_path)
    ident = result(q.enqueue("a@here.org", ["b@there.net"], MSG))
    (job,) = q.due_jobs()
    result(q.record(job, [("b@there.net", OK)], remote="mx.there.net"))
    assert ident not in q and not list(q.dir.glob(f"{ident}*"))


def test_recipient_status_is_durable_partial_success(tmp_path):
    q = make_queue(tmp_path)
    ident = result(q.enqueue("a@here.org", ["b@there.net", "c@there.net"], MSG))
    (job,) = q.due_jobs()
    result(q.record(job, [("b@there.net", OK), ("c@there.net", LATER)]))
    # a crash now: the next process must not send to b again
    q2 = make_queue(tmp_path, clock=Clock())
    q2.clock.advance(10 ** 6)
    (job2,) = q2.due_jobs()
    assert [r.address for r in job2.recipients] == ["c@there.net"] and job2.id == ident


def test_permanent_failure_bounces_with_rfc3464_report(tmp_path):
    q = make_queue(tmp_path)
    result(q.enqueue("a@here.org", ["b@there.net"], MSG, {"envid": "ENV-7"}))
    (job,) = q.due_jobs()
    result(q.record(job, [("b@there.net", NO)], remote="mx.there.net"))
    ((sender, rcpts, report),) = dsns(q)
    assert sender == "" and rcpts == ["a@here.org"]
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    per_msg, per_rcpt = status_groups(report)
    assert per_msg["reporting-mta"] == "dns; mail.here.org" and per_msg["original-envelope-id"] == "ENV-7"
    assert per_rcpt["final-recipient"] == "rfc822; b@there.net"
    assert per_rcpt["action"] == "failed" and per_rcpt["status"] == "5.1.1"
    assert per_rcpt["diagnostic-code"] == "smtp; 550 5.1.1 no such user"
    assert per_rcpt["remote-mta"] == "dns; mx.there.net"
    returned = [p for p in report.walk() if p.get_content_type() == "message/rfc822"]
    assert returned and b"Message-ID: <1@here.org>" in returned[0].as_bytes()
    # the original is gone, only the bounce is queued
    assert len(q) == 1


def test_ret_hdrs_returns_headers_only(tmp_path):
    q = make_queue(tmp_path)
    result(q.enqueue("a@here.org", ["b@there.net"], MSG, {"ret": "HDRS"}))
    (job,) = q.due_jobs()
    result(q.record(job, [("b@there.net", NO)]))
    ((_, _, report),) = dsns(q)
    types = [p.get_content_type() for p in report.walk()]
    assert "text/rfc822-headers" in types and "message/rfc822" not in types


def test_never_bounce_the_null_sender_nor_notify_never(tmp_path):
    q = make_queue(tmp_path)
    result(q.enqueue("", ["b@there.net"], MSG))
    result(q.enqueue("a@here.org", ["c@there.net"], MSG, {"recipients": {"c@there.net": {"notify": "NEVER"}}}))
    for job in q.due_jobs():
        result(q.record(job, [(r.address, NO) for r in job.recipients]))
    assert len(q) == 0


def test_relayed_dsn_when_next_hop_lacks_dsn(tmp_path):
    q = make_queue(tmp_path)
    result(q.enqueue("a@here.org", ["b@there.net"], MSG, {"recipients": {"b@there.net": {"notify": "SUCCESS"}}}))
    (job,) = q.due_jobs()
    result(q.record(job, [("b@there.net", OK)], dsn_passed=False))
    ((_, rcpts, report),) = dsns(q)
    assert status_groups(report)[1]["action"] == "relayed" and rcpts == ["a@here.org"]


def test_retry_schedule_delay_warning_then_expiry(tmp_path):
    clock = Clock()
    q = make_queue(tmp_path, clock)
    ident = result(q.enqueue("a@here.org", ["b@there.net"], MSG))
    waits = []
    while ident in q and clock.seconds() < 6 * 86400:
        jobs = [j for j in q.due_jobs() if j.id == ident]
        if not jobs:
            clock.advance(q.next_wakeup() - clock.seconds())
            continue
        before = clock.seconds()
        result(q.record(jobs[0], [("b@there.net", LATER)]))
        e = q.get(ident)
        if e is not None:
            waits.append(e.recipients[0].next_attempt - before)
    assert waits[:5] == [300, 600, 1200, 2400, 3600] and set(waits[5:]) == {3600}
    reports = dsns(q)
    actions = [status_groups(r)[1]["action"] for _, _, r in reports]
    assert actions == ["delayed", "failed"]
    delayed = status_groups(reports[0][2])[1]
    assert delayed["status"] == "4.3.0" and "will-retry-until" in delayed
    assert status_groups(reports[1][2])[1]["status"] == "4.3.0"
    assert 5 * 86400 <= clock.seconds() < 5 * 86400 + 3700


def test_policy_from_settings_and_no_warning_when_off(tmp_path):
    assert QueuePolicy.from_settings(SimpleNamespace()).first_retry == 300
    clock = Clock()
    q = make_queue(tmp_path, clock, first_retry=60, max_retry_interval=120, max_lifetime=1000, delay_warning=0)
    ident = result(q.enqueue("a@here.org", ["b@there.net"], MSG))
    for _ in range(50):
        if ident not in q:
            break
        clock.advance(200)
        for j in q.due_jobs():
            if j.id == ident:
                result(q.record(j, [("b@there.net", LATER)]))
    assert [status_groups(r)[1]["action"] for _, _, r in dsns(q)] == ["failed"]


def test_admin_flush_delete_bounce_through_control_files(tmp_path):
    clock = Clock()
    q = make_queue(tmp_path, clock)
    a = result(q.enqueue("a@here.org", ["b@there.net"], MSG))
    b = result(q.enqueue("a@here.org", ["c@there.net"], MSG))
    for j in q.due_jobs():
        result(q.record(j, [(r.address, LATER) for r in j.recipients]))
    assert q.due_jobs() == []
    q.request("flush", None)
    assert result(q.process_control()) == ["flush all: 2 recipient(s) due now"]
    jobs = q.due_jobs()
    assert len(jobs) == 2
    for j in jobs:
        q.release(j)
    q.request("delete", a)
    q.request("bounce", b)
    result(q.process_control())
    assert a not in q and b not in q
    ((_, rcpts, report),) = dsns(q)
    assert status_groups(report)[1]["status"] == "5.0.0"
    assert list(q.control_dir.iterdir()) == []


def test_lock_excludes_a_second_process(tmp_path):
    q = Queue(tmp_path / "queue", clock=Clock(), executor=sync_executor)
    q.load()
    other = Queue(tmp_path / "queue", clock=Clock(), executor=sync_executor)
    with pytest.raises(RuntimeError):
        other.load()
    q.close()
    other.load()
    other.close()


class ManualExecutor:
    """Runs blocking work only when told, so updates of one message can overlap as with threads."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, fn, *args):
        from twisted.internet import defer
        d = defer.Deferred()
        self.pending.append((fn, args, d))
        return d

    def drain(self) -> None:
        for _ in range(1000):
            if not self.pending:
                return
            fn, args, d = self.pending.pop(0)
            d.callback(fn(*args))
        raise AssertionError("executor never drained")


def test_overlapping_failures_report_each_recipient_once(tmp_path):
    ex = ManualExecutor()
    settings = SimpleNamespace(hostname="mail.here.org", relay=SimpleNamespace())
    q = Queue(tmp_path / "queue", settings=settings, clock=Clock(), executor=ex)
    q.load(lock=False)
    d = q.enqueue("a@here.org", ["b@there.net", "c@other.org"], MSG)
    ex.drain()
    ident = result(d)
    jobs = q.due_jobs()
    assert len(jobs) == 2
    done = [q.record(j, [(r.address, NO) for r in j.recipients]) for j in jobs]   # both before any write
    ex.drain()
    for d in done:
        result(d)
    finals = []
    for _, rcpts, report in dsns(q):
        finals += [g["final-recipient"] for g in status_groups(report)[1:]]
    assert sorted(finals) == ["rfc822; b@there.net", "rfc822; c@other.org"]
    assert ident not in q
