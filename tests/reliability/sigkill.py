"""The SIGKILL round: SMTP load from several client threads, SIGKILL at a random moment, then the checks.

Used by ``test_sigkill.py`` (a few rounds) and ``bench/sigkill_loop.py`` (many rounds).  The promise under
test (DESIGN.md §3, RFC 5321 §6.1): a 250 after DATA means the message is on disk, so after a crash every
acknowledged message is in the recipient's Maildir exactly once, complete; a message whose 250 never arrived
may be there (once) or not.  The index must agree with the files and keep its UIDs, and IMAP and POP3 must
serve the same messages after the restart.
"""

from __future__ import annotations

import imaplib
import poplib
import random
import re
import shutil
import signal
import smtplib
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.server import HOST, MailServer

from .support import header_value, maildir_files

USERS = {"alice@example.org": "alice-sigkill-pw", "bob@example.org": "bob-sigkill-pw"}
RECIPIENT_SETS = (("alice@example.org",), ("bob@example.org",), ("alice@example.org", "bob@example.org"))
_ID_RE = re.compile(rb"^[0-9a-z-]+$")


@dataclass
class Ledger:
    """What the clients know: messages that got a 250 (``acked``) and those whose fate is unknown."""

    acked: dict[str, tuple[str, ...]] = field(default_factory=dict)     # test id -> recipients
    maybe: dict[str, tuple[str, ...]] = field(default_factory=dict)     # sent, no 250 seen (killed meanwhile)
    refused: set[str] = field(default_factory=set)                     # got a 4xx/5xx: must not be there
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Snapshot:
    """The store as checked with the server down: per user, file base name -> (test id, uid in the index)."""

    uidvalidity: dict[str, int]
    files: dict[str, dict[str, str]]          # user -> base name -> test id
    uids: dict[str, dict[str, int]]           # user -> base name -> uid


def make_message(test_id: str, recipients: tuple[str, ...], rng: random.Random) -> bytes:
    body_lines = rng.randint(1, 800)
    body = b"".join(b"line %d of %s %s\r\n" % (i, test_id.encode(), b"x" * rng.randint(0, 70))
                    for i in range(body_lines))
    head = (f"From: load@remote.test\r\nTo: {', '.join(recipients)}\r\nSubject: sigkill load {test_id}\r\n"
            f"Message-ID: <{test_id}@remote.test>\r\nX-Test-Id: {test_id}\r\n\r\n").encode()
    return head + body + b"END " + test_id.encode() + b"\r\n"


def _client(srv: MailServer, name: str, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    """One client: connections of 1-5 messages each, until ``stop`` or the server goes away."""
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        try:
            conn = smtplib.SMTP(HOST, srv.port("smtp"), local_hostname="load.test", timeout=15)
        except OSError:
            return
        try:
            for _ in range(rng.randint(1, 5)):
                if stop.is_set():
                    break
                n += 1
                test_id = f"{name}-{n}"
                rcpts = rng.choice(RECIPIENT_SETS)
                with ledger.lock:
                    ledger.maybe[test_id] = rcpts
                try:
                    refused = conn.sendmail("load@remote.test", list(rcpts), make_message(test_id, rcpts, rng))
                except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused):
                    with ledger.lock:
                        del ledger.maybe[test_id]
                        ledger.refused.add(test_id)
                    continue
                assert not refused, refused
                with ledger.lock:
                    del ledger.maybe[test_id]
                    ledger.acked[test_id] = rcpts
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                return
        except (smtplib.SMTPException, OSError):
            return          # the server was killed under us: what was in flight stays in ``maybe``
        finally:
            conn.close()


def load_and_kill(srv: MailServer, ledger: Ledger, rng: random.Random, *, clients: int = 4,
                  max_acked: int = 40, max_wait: float = 30.0, graceful: bool = False) -> int:
    """Start ``clients`` SMTP threads, SIGKILL the server (SIGTERM when ``graceful``) at a random moment under
    load; return the number of 250s seen."""
    stop = threading.Event()
    before = len(ledger.acked)
    prefix = f"r{rng.randrange(1 << 30):x}"
    threads = [threading.Thread(target=_client, args=(srv, f"{prefix}-c{i}", ledger, stop, rng.random()),
                                daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    target = before + rng.randint(1, max_acked)
    deadline = time.monotonic() + max_wait       # a bound on the loop, not an assertion
    while len(ledger.acked) < target and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    time.sleep(rng.random() * 0.05)              # land anywhere inside the next deliveries
    if graceful:
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        # twistd re-raises the signal once it has shut down, so "killed by SIGTERM" is the clean exit status
        assert code in (0, -signal.SIGTERM), f"the server exited with {code} on SIGTERM under load"
    else:
        srv.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a load client hung after the kill"
    return len(ledger.acked) - before


def _raw_index(user_dir: Path) -> tuple[int | None, dict[str, int]]:
    """(INBOX uidvalidity, base name -> uid) from a copy of the user's SQLite index (WAL replayed on the copy)."""
    db = user_dir / "mailsuite-index.sqlite"
    if not db.exists():
        return None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            src = db.with_name(db.name + suffix)
            if src.exists():
                shutil.copyfile(src, Path(tmp) / (db.name + suffix))
        con = sqlite3.connect(Path(tmp) / db.name)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            row = con.execute("SELECT id, uidvalidity FROM folders WHERE name = 'INBOX'").fetchone()
            if row is None:
                return None, {}
            uids = dict(con.execute("SELECT name, uid FROM messages WHERE folder = ?", (row[0],)).fetchall())
            return row[1], uids
        finally:
            con.close()


def check_offline(srv: MailServer, ledger: Ledger, previous: Snapshot | None) -> Snapshot:
    """With the server down: files complete, acked messages there exactly once, index consistent."""
    from mailsuite.store import Store

    files: dict[str, dict[str, str]] = {}
    for user in USERS:
        box = srv.maildir(user)
        seen: dict[str, str] = {}
        for path in maildir_files(box):
            data = path.read_bytes()
            base = path.name.split(":", 1)[0]
            declared = re.search(r",S=(\d+)", base)
            assert declared and int(declared.group(1)) == len(data), f"half-written file {path}"
            test_id = header_value(data, b"X-Test-Id")
            assert test_id is not None and _ID_RE.match(test_id), f"foreign or damaged file {path}"
            assert data.endswith(b"END " + test_id + b"\r\n"), f"truncated file {path}"
            seen[base] = test_id.decode()
        counts = Counter(seen.values())
        duplicated = [i for i, c in counts.items() if c > 1]
        assert not duplicated, f"{user}: delivered more than once: {duplicated}"
        for test_id, rcpts in ledger.acked.items():
            if user in rcpts:
                assert counts[test_id] == 1, f"{user}: acknowledged message {test_id} lost"
        for test_id in counts:
            assert test_id not in ledger.refused, f"{user}: refused message {test_id} delivered"
            expected = ledger.acked.get(test_id) or ledger.maybe.get(test_id) or ()
            assert user in expected, f"{user}: message {test_id} delivered to the wrong user"
        files[user] = seen

    uidvalidity: dict[str, int] = {}
    uids: dict[str, dict[str, int]] = {}
    raw: dict[str, tuple[int | None, dict[str, int]]] = {}
    for user in USERS:
        raw[user] = _raw_index(srv.maildir(user))
        # the index may miss files linked just before the kill (the next sync adds them), but it never
        # names a file that is not there
        missing = set(raw[user][1]) - set(files[user])
        assert not missing, f"{user}: index names files that do not exist: {sorted(missing)[:5]}"
    store = Store(srv.data_dir / "mail")
    try:
        for user in USERS:
            mb = store.mailbox(user, "INBOX")
            indexed = {m.name: m.uid for m in mb.messages()}
            assert set(indexed) == set(files[user]), f"{user}: the index disagrees with the files after sync"
            raw_validity, raw_uids = raw[user]
            if raw_validity is not None:
                assert mb.uidvalidity == raw_validity, f"{user}: index rebuilt (UIDVALIDITY changed)"
                changed = {n for n, u in raw_uids.items() if indexed[n] != u}
                assert not changed, f"{user}: UIDs changed for {sorted(changed)[:5]}"
            if previous is not None and user in previous.uids and previous.uidvalidity.get(user) == mb.uidvalidity:
                moved = {n for n, u in previous.uids[user].items() if n in indexed and indexed[n] != u}
                assert not moved, f"{user}: UIDs changed across restarts for {sorted(moved)[:5]}"
            assert len(set(indexed.values())) == len(indexed)
            uidvalidity[user] = mb.uidvalidity
            uids[user] = indexed
    finally:
        store.close()
    return Snapshot(uidvalidity, files, uids)


def check_live(srv: MailServer, snap: Snapshot) -> None:
    """With the server running again: IMAP and POP3 logins work and serve exactly the files on disk."""
    for user, password in USERS.items():
        expected = {snap.uids[user][base]: test_id for base, test_id in snap.files[user].items()}
        imap = imaplib.IMAP4(HOST, srv.port("imap"), timeout=30)
        try:
            imap.login(user, password)
            status, data = imap.select("INBOX", readonly=True)
            assert status == "OK" and int(data[0]) == len(expected), (user, data, len(expected))
            uidvalidity = imap.response("UIDVALIDITY")[1][0]
            assert int(uidvalidity) == snap.uidvalidity[user]
            got: dict[int, str] = {}
            if expected:
                status, items = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (X-TEST-ID)])")
                assert status == "OK"
                for item in items:
                    if isinstance(item, tuple):
                        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                        got[uid] = header_value(item[1], b"X-Test-Id").decode()
            assert got == expected, f"{user}: IMAP view differs from the files"
            imap.logout()
        finally:
            imap.shutdown() if imap.state != "LOGOUT" else None

        pop = poplib.POP3(HOST, srv.port("pop3"), timeout=30)
        try:
            pop.user(user)
            pop.pass_(password)
            count, _size = pop.stat()
            assert count == len(expected), f"{user}: POP3 sees {count} messages, files {len(expected)}"
            uidls = [line.split()[1].decode() for line in pop.uidl()[1]]
            assert len(set(uidls)) == count
            if count:
                lines = pop.retr(count)[1]
                assert any(line.startswith(b"X-Test-Id: ") for line in lines)
            pop.quit()
        finally:
            pop.close()


def new_server(directory: Path) -> MailServer:
    srv = MailServer(directory, services=("smtp", "pop3", "imap"), allow_plaintext_loopback=True,
                     extra_config="[smtp]\nmax_connections_per_ip = 100\n")
    for user, password in USERS.items():
        srv.add_user(user, password)
    return srv


def run_rounds(directory: Path, rounds: int, seed: int, *, clients: int = 4, max_acked: int = 40,
               report: bool = False, graceful: bool = False) -> dict[str, int]:
    """``rounds`` kill/restart rounds on one data directory; raises AssertionError on the first broken promise."""
    rng = random.Random(seed)
    srv = new_server(directory)
    ledger = Ledger()
    snap: Snapshot | None = None
    totals = Counter()
    try:
        for r in range(rounds):
            srv.start()
            if snap is not None:
                check_live(srv, snap)
            acked = load_and_kill(srv, ledger, rng, clients=clients, max_acked=max_acked, graceful=graceful)
            snap = check_offline(srv, ledger, snap)
            totals["rounds"] += 1
            totals["acked"] += acked
            if report:
                print(f"round {r + 1}/{rounds}: {acked} acknowledged, {len(ledger.maybe)} in flight so far, "
                      f"{sum(len(f) for f in snap.files.values())} files", flush=True)
        srv.start()
        assert snap is not None
        check_live(srv, snap)
    finally:
        srv.stop() if srv.proc is not None and srv.proc.poll() is None else None
    totals["in_flight"] = len(ledger.maybe)
    totals["files"] = sum(len(f) for f in snap.files.values()) if snap else 0
    log = srv.log_text()
    assert "Traceback" not in log, log[-4000:]
    return dict(totals)
