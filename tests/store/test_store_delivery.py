"""Durable delivery: concurrency, crash safety, indexing, notifications."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.internet import defer

from mailsuite.store import InvalidMailboxName, InvalidUser, Store

from .store_helpers import USER, make_message, result_of

REPO = Path(__file__).resolve().parents[2]


def _files(folder: Path, sub: str) -> list[Path]:
    return sorted((folder / sub).iterdir())


def test_concurrent_deliver_sync_8_threads_x_500(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(500):
                store.deliver_sync(USER, make_message(f"{t}-{i}", b"x" * (i % 7) + b"\r\n"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    udir = store.user_dir(USER)
    files = _files(udir, "new")
    assert len(files) == 4000
    assert len({f.name for f in files}) == 4000
    contents = {f.read_bytes() for f in files}
    expected = {make_message(f"{t}-{i}", b"x" * (i % 7) + b"\r\n") for t in range(8) for i in range(500)}
    assert contents == expected  # every message complete, none overwritten
    assert _files(udir, "tmp") == []
    # Base names carry the size; the index gives 4000 distinct UIDs.
    for f in files[:50]:
        assert f.name.endswith(",S=%d" % f.stat().st_size)
    mb = store.mailbox(USER, "INBOX")
    assert [m.uid for m in mb.messages()] == list(range(1, 4001))


_CHILD = r"""
import hashlib, os, sys
sys.path.insert(0, sys.argv[2])
from mailsuite.store import Store
store = Store(sys.argv[1])
store.create_user("alice@example.org")
print("ready", flush=True)
i = 0
while True:
    body = (b"%d " % i) * (20000 + (i % 5) * 7000) + b"\r\n"
    digest = hashlib.sha256(body).hexdigest().encode()
    msg = b"Subject: crash test %d\r\nX-Body-SHA256: " % i + digest + b"\r\n\r\n" + body
    store.deliver_sync("alice@example.org", msg, "Sent" if i % 3 == 0 else "INBOX", "S" if i % 2 else "")
    i += 1
"""


def _complete(path: Path) -> bool:
    data = path.read_bytes()
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    digest = [line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(b"X-Body-SHA256:")]
    return len(digest) == 1 and hashlib.sha256(body).hexdigest().encode() == digest[0]


def test_sigkill_mid_delivery_leaves_only_complete_messages(root: Path, reopen) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(REPO)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        udir = root / "example.org" / "alice"
        for _ in range(4000):  # bounded wait for a good number of deliveries
            if len(os.listdir(udir / "new")) + len(os.listdir(udir / "cur")) >= 40:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    delivered = []
    for folder in (udir, udir / ".Sent"):
        for sub in ("new", "cur"):
            for f in _files(folder, sub):
                assert _complete(f), f"partial message outside tmp/: {f}"
                delivered.append(f)
    assert delivered
    # A restarted store indexes exactly those files, without error.
    store = reopen()
    inbox = store.mailbox("alice@example.org", "INBOX")
    sent = store.mailbox("alice@example.org", "Sent")
    assert len(inbox) + len(sent) == len(delivered)
    assert all("\\Seen" in m.flags for m in inbox.messages() if m.subdir == "cur")


def test_deliver_indexes_and_notifies(store: Store) -> None:
    mb = store.mailbox(USER, "INBOX")
    calls: list[str] = []
    store.add_listener(USER, "INBOX", lambda: calls.append("inbox"))
    store.add_listener(USER, "Sent", lambda: calls.append("sent"))
    name = result_of(store.deliver(USER, b"Subject: hi\n\nbody\n"))
    assert calls == ["inbox"]
    (m,) = mb.messages()
    assert m.filename == name and m.subdir == "new" and m.recent
    assert m.uid == 1 and mb.uidnext == 2
    # LF-only input is stored with CRLF; the size is the file size.
    assert mb.read_message(1) == b"Subject: hi\r\n\r\nbody\r\n"
    assert m.size == len(b"Subject: hi\r\n\r\nbody\r\n") == m.path.stat().st_size
    assert mb.header_bytes(1) == b"Subject: hi\r\n\r\n"
    # A sync afterwards finds nothing new (the delivery was registered by name).
    mb.sync()
    assert [x.uid for x in mb.messages()] == [1]


def test_listener_removed_and_failing_listener_isolated(store: Store) -> None:
    calls: list[int] = []

    def bad() -> None:
        raise RuntimeError("listener bug")

    good = lambda: calls.append(1)  # noqa: E731
    store.add_listener(USER, "inbox", bad)
    store.add_listener(USER, "INBOX", good)
    result_of(store.deliver(USER, make_message(1)))
    assert calls == [1]
    store.remove_listener(USER, "INBOX", good)
    result_of(store.deliver(USER, make_message(2)))
    assert calls == [1]


def test_deliver_to_folder_flags_and_missing_folder(store: Store) -> None:
    udir = store.user_dir(USER)
    n1 = result_of(store.deliver(USER, make_message(1), folder="Sent", flags="S"))
    assert (udir / ".Sent" / "cur" / n1).exists() and n1.endswith(":2,S")
    n2 = result_of(store.deliver(USER, make_message(2), folder="NoSuchFolder"))
    assert (udir / "new" / n2).exists()
    sent = store.mailbox(USER, "Sent")
    assert [m.flags for m in sent.messages()] == [frozenset({"\\Seen"})]
    with pytest.raises(InvalidMailboxName):
        result_of(store.deliver(USER, b"x", folder="../x"))
    with pytest.raises(InvalidUser):
        result_of(store.deliver("../evil@example.org", b"x"))
    with pytest.raises(ValueError):
        store.deliver_sync(USER, b"x", flags="Z")


def test_deliver_creates_missing_user(store: Store) -> None:
    name = store.deliver_sync("bob@example.org", make_message(1))
    bdir = store.user_dir("bob@example.org")
    assert (bdir / "new" / name).exists()
    assert (bdir / ".Trash" / "cur").is_dir()
    assert "Sent" in store.subscriptions("bob@example.org")


def test_delivery_to_indexed_but_closed_folder(root: Path, reopen) -> None:
    s1 = reopen()
    s1.create_user(USER)
    result_of(s1.deliver(USER, make_message(1)))
    assert [m.uid for m in s1.mailbox(USER, "INBOX").messages()] == [1]
    s1.close()
    s2 = reopen()
    # Nobody has INBOX open in s2: the delivery is indexed directly in SQLite.
    result_of(s2.deliver(USER, make_message(2)))
    mb = s2.mailbox(USER, "INBOX")
    assert [m.uid for m in mb.messages()] == [1, 2]
    assert mb.header_bytes(2).startswith(b"From: a@example.com\r\n")


def test_deliver_through_a_thread_runner(root: Path) -> None:
    """deliver() with a runner that really uses another thread: the file work and the indexing happen
    there (under the user's lock); listeners are told on ours, when the Deferred fires."""
    main = threading.get_ident()
    seen_threads: list[int] = []
    pending: list[tuple[defer.Deferred, object]] = []

    def runner(fn):
        d: defer.Deferred = defer.Deferred()
        box: list = []
        th = threading.Thread(target=lambda: (seen_threads.append(threading.get_ident()), box.append(fn())))
        th.start()
        th.join()
        pending.append((d, box[0]))
        return d

    store = Store(root, runner=runner)
    told: list[int] = []
    try:
        store.create_user(USER)
        mb = store.mailbox(USER, "INBOX")
        store.add_listener(USER, "INBOX", lambda: told.append(threading.get_ident()))
        d = store.deliver(USER, make_message(1))
        assert len(mb) == 1 and seen_threads and seen_threads[0] != main
        assert told == []
        # "Back on the reactor thread": fire the Deferred here.
        for dd, value in pending:
            dd.callback(value)
        name = result_of(d)
        assert mb.messages()[0].filename == name
        assert told == [main]
    finally:
        store.close()


def test_stale_tmp_files_cleaned_on_open(store: Store) -> None:
    udir = store.user_dir(USER)
    old, fresh = udir / "tmp" / "old.partial", udir / "tmp" / "fresh.partial"
    old.write_bytes(b"half a mess")
    fresh.write_bytes(b"being written")
    past = time.time() - 37 * 3600
    os.utime(old, (past, past))
    store.mailbox(USER, "INBOX")
    assert not old.exists() and fresh.exists()


def test_clean_stale_tmp_everywhere(store: Store) -> None:
    store.create_user("bob@example.net")
    past = time.time() - 37 * 3600
    stale = [store.user_dir(USER) / "tmp" / "a", store.user_dir(USER) / ".Sent" / "tmp" / "b",
             store.user_dir("bob@example.net") / ".Trash" / "tmp" / "c"]
    for p in stale:
        p.write_bytes(b"partial")
        os.utime(p, (past, past))
    fresh = store.user_dir("bob@example.net") / "tmp" / "d"
    fresh.write_bytes(b"in progress")
    assert store.clean_stale_tmp() == 3
    assert not any(p.exists() for p in stale) and fresh.exists()
