"""`mailsuite queue ...` functions: offline they change the queue; with a server running they leave requests."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

from twisted.internet.task import Clock

from mailsuite.relay import admin
from mailsuite.relay.client import Reply
from mailsuite.relay.queue import Queue, sync_executor

MSG = b"From: a@here.org\r\nSubject: x\r\n\r\nbody\r\n"


def settings(tmp: Path) -> SimpleNamespace:
    return SimpleNamespace(hostname="mail.here.org", data_dir=tmp, relay=SimpleNamespace())


def fill(tmp: Path) -> tuple[str, str]:
    clock = Clock()
    clock.advance(time.time() - 7200)
    q = Queue(tmp / "queue", settings=settings(tmp), clock=clock, executor=sync_executor)
    q.load()
    ids = []
    for rcpt in ("b@there.net", "c@else.org"):
        d = q.enqueue("a@here.org", [rcpt], MSG)
        d.addCallback(ids.append)
    clock.advance(7100)                # the attempt was 100 s ago: next one in 200 s
    for job in q.due_jobs():
        q.record(job, [(r.address, Reply(451, ("4.4.1 connection refused",))) for r in job.recipients])
    q.close()
    return ids[0], ids[1]


def run(tmp: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = admin.run(settings(tmp), *args, out=out)
    return code, out.getvalue()


def test_list_shows_id_age_recipients_next_attempt_and_error(tmp_path):
    a, b = fill(tmp_path)
    code, text = run(tmp_path, "list")
    assert code == 0
    assert a in text and b in text and "age 2h00m" in text
    assert re.search(r"<b@there\.net>  queued, attempts 1, next attempt in [0-3]m\d\ds", text)
    assert "last error: 451 4.4.1 connection refused" in text
    assert text.strip().endswith("2 message(s), 2 recipient(s) queued")


def test_empty_queue_and_bad_arguments(tmp_path):
    assert run(tmp_path, "list") == (0, "queue is empty\n")
    assert run(tmp_path, "delete")[0] == 2
    assert run(tmp_path, "delete", "0123456789abcdef")[0] == 1


def test_offline_flush_delete_bounce_change_the_files(tmp_path):
    a, b = fill(tmp_path)
    code, text = run(tmp_path, "flush")
    assert code == 0 and "2 recipient(s) due now" in text
    assert "next attempt now" in run(tmp_path, "list")[1]
    assert run(tmp_path, "delete", a)[0] == 0
    assert run(tmp_path, "bounce", b)[0] == 0
    entries = admin.list_entries(tmp_path / "queue")
    # only the bounce report is left, to the sender, with the null reverse-path
    assert [(e.sender, [r.address for r in e.recipients]) for e in entries] == [("", ["a@here.org"])]
    report = (tmp_path / "queue" / f"{entries[0].id}.eml").read_bytes()
    assert b"Action: failed" in report and b"Final-Recipient: rfc822; c@else.org" in report


def test_with_the_server_running_requests_are_left_for_it(tmp_path):
    a, b = fill(tmp_path)
    server = Queue(tmp_path / "queue", settings=settings(tmp_path), clock=Clock(), executor=sync_executor)
    server.clock.advance(time.time())
    server.load()                      # holds the lock, as the running server does
    try:
        code, text = run(tmp_path, "delete", a)
        assert code == 0 and "handed to the running server" in text
        assert a in server                          # nothing changed behind the server's back
        assert len(list(server.control_dir.iterdir())) == 1
        results = []
        server.process_control().addCallback(results.append)
        assert results == [[f"delete {a}"]]
        assert a not in server and not (tmp_path / "queue" / f"{a}.json").exists()
        run(tmp_path, "flush", b)
        server.process_control()
        assert [j.id for j in server.due_jobs()] == [b]
    finally:
        server.close()
