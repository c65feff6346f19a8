"""The workloads of issue 7, each measured against mailsuite and its peer in the same run.

Each ``run_<name>(ctx)`` starts fresh servers in its own work sub-directory, measures ``ctx.runs`` times
(mailsuite and peer alternating, so a load change on the shared machine hits both), stops the servers and
returns :class:`Row` s with medians.  A mailsuite service that is not there yet gives a row marked
"not available" instead of an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import corpus
from clients import IMAPClient, POP3Client, SMTPClient, dot_stuff
from servers import DOMAIN, PASSWORD, Dovecot, Mailsuite, Postfix, cpu_tree_seconds, user_name


@dataclass
class Row:
    key: str
    workload: str
    unit: str
    mailsuite: float | None
    peer: float | None
    peer_name: str
    better: str                 # "higher", "lower" (ratio target) or "limit" (absolute limit on mailsuite)
    target: float
    note: str = ""
    status: str = ""            # why mailsuite has no figure

    @property
    def ratio(self) -> float | None:
        if self.mailsuite is None or not self.peer:
            return None
        return self.mailsuite / self.peer

    @property
    def target_text(self) -> str:
        if self.better == "higher":
            return f">= {self.target:g}x {self.peer_name}"
        if self.better == "lower":
            return f"<= {self.target:g}x {self.peer_name}"
        if self.better == "fraction":
            return "report"
        return f"<= {self.target:g} {self.unit}"

    @property
    def met(self) -> str:
        if self.better == "fraction":
            return "-"
        if self.mailsuite is None:
            return "n/a"
        if self.better == "limit":
            return "yes" if self.mailsuite <= self.target else "NO"
        ratio = self.ratio
        if ratio is None:
            return "n/a"
        ok = ratio >= self.target if self.better == "higher" else ratio <= self.target
        return "yes" if ok else "NO"


@dataclass
class Context:
    work: Path
    quick: bool
    runs: int
    profile_dir: Path | None = None
    profiles: dict[str, Path] = field(default_factory=dict)
    smtp1: dict[str, float] = field(default_factory=dict)   # msg/s of workload 1, for workload 9
    #: load generator of workloads 1-2: "python" (asyncio, bench/clients.py) or "smtp-source" (Postfix's, in C)
    smtp_client: str = "smtp-source"

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def sub(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        return path


def median(values: list[float]) -> float:
    return statistics.median(values)


def log(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextmanager
def profiled(ctx: Context, name: str, pid: int) -> Iterator[None]:
    """py-spy record (raw collapsed stacks) of mailsuite while the block runs, with ``--profile DIR``."""
    if ctx.profile_dir is None:
        yield
        return
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    out = ctx.profile_dir / f"{name}.txt"
    proc = subprocess.Popen(["py-spy", "record", "--nonblocking", "--rate", "200", "--format", "raw",
                             "-o", str(out), "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ctx.profiles[name] = out


def not_available(key: str, workload: str, unit: str, peer_name: str, better: str, target: float,
                  why: str, peer: float | None = None) -> Row:
    return Row(key, workload, unit, None, peer, peer_name, better, target, status=why)


def cpu_note(cpu: dict[str, list[float]], per: str, scale: float, unit: str) -> str:
    """"server CPU per <per>: mailsuite x, peer y" from per-run CPU seconds (medians)."""
    parts = [f"{name} {median(values) * scale:.3g} {unit}" for name, values in cpu.items() if values]
    return f"server CPU per {per}: " + ", ".join(parts) if parts else ""


def count_files(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                total += len(os.listdir(d / sub))
            except FileNotFoundError:
                pass
    return total


def wait_count(dirs: list[Path], expected: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while count_files(dirs) < expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- 1 and 2: SMTP ------------------------------------------------------------------------------------
async def smtp_burst(port: int, messages: list[tuple[str | list[str], bytes]], concurrency: int, reuse: bool,
                     lmtp: bool = False) -> float:
    """Send every (recipient(s), stuffed message) over ``concurrency`` sessions; seconds until the last 250."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in messages:
        queue.put_nowait(item)

    async def worker() -> None:
        client: SMTPClient | None = None
        while True:
            try:
                rcpt, data = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if client is None:
                client = SMTPClient(port, lmtp)
                await client.connect()
            await client.send("bench@example.com", [rcpt] if isinstance(rcpt, str) else rcpt, data)
            if not reuse:
                await client.quit()
                client = None
        if client is not None:
            await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def smtp_source_burst(port: int, work: Path, users: int, n: int, reuse: bool) -> float:
    """The same load with Postfix's C load generator ``smtp-source`` (it leaves more of the 2 cores to the
    server): one process with one session per user, ``n / users`` messages of the 10 KB corpus message each
    (``-d``: connection reuse).  Seconds until every process is done; a failed run raises."""
    msg = work / "smtp-source.txt"
    if not msg.exists():
        # smtp-source -F: a pre-formatted message, LF line ends (it adds the CR and stuffs the dots)
        msg.write_bytes(corpus.message(0, 10 * 1024, user_name(0)).replace(b"\r\n", b"\n"))
    per, extra = divmod(n, users)
    start = time.perf_counter()
    procs = [subprocess.Popen(["smtp-source", "-s", "1", "-m", str(per + (1 if i < extra else 0)),
                               *(["-d"] if reuse else []), "-M", "client.bench.test", "-f", "bench@example.com",
                               "-t", user_name(i), "-F", str(msg), f"inet:127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(users)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    secs = time.perf_counter() - start
    failed = [(p.returncode, e.decode(errors="replace").strip()[:200]) for p, e in zip(procs, errors) if p.returncode]
    if failed:
        raise RuntimeError(f"smtp-source failed: {failed[0]}")
    return secs


def run_smtp(ctx: Context, reuse: bool) -> list[Row]:
    key = "2" if reuse else "1"
    n = ctx.size(2000, 300)
    users = 10
    label = (f"SMTP {n} x 10 KB, 10 sessions, " + ("connection reuse" if reuse else "1 msg/connection")
             + (", smtp-source" if ctx.smtp_client == "smtp-source" else ""))
    work = ctx.sub(f"smtp{key}")
    ms, pf = Mailsuite(work, ("smtp",)), Postfix(work)
    ms.add_users(users)
    pf.add_users(users)
    messages = [(user_name(i % users), dot_stuff(corpus.message(i, 10 * 1024, user_name(i % users))))
                for i in range(n)]
    ms_dirs = [ms.user_maildir(i) for i in range(users)]
    pf_dirs = [pf.user_maildir(i) for i in range(users)]
    try:
        ms.start()
        pf.start()
        ms_rates, pf_rates, pf_delivered = [], [], []
        cpu: dict[str, list[float]] = {"mailsuite": [], "postfix": []}
        ms_ok = ms.has("smtp")
        problems: list[str] = []
        for r in range(ctx.runs):
            if ms_ok:
                try:
                    c0 = cpu_tree_seconds(ms.pid)
                    with profiled(ctx, f"smtp{key}-run{r}", ms.pid) if r == 0 else _nothing():
                        secs = (smtp_source_burst(ms.port("smtp"), work, users, n, reuse)
                                if ctx.smtp_client == "smtp-source"
                                else asyncio.run(smtp_burst(ms.port("smtp"), messages, 10, reuse)))
                    if not wait_count(ms_dirs, n * (r + 1), 60):
                        problems.append(f"mailsuite run {r}: only {count_files(ms_dirs)}/{n * (r + 1)} delivered")
                    cpu["mailsuite"].append((cpu_tree_seconds(ms.pid) - c0) / n)
                    ms_rates.append(n / secs)
                    log(f"smtp{key} mailsuite run {r}: {n / secs:.0f} msg/s")
                except Exception as exc:  # a half-ready service: report, don't crash the run
                    problems.append(f"mailsuite: {type(exc).__name__}: {exc}")
                    ms_ok = False
            c0 = cpu_tree_seconds(pf.master_pid())
            start = time.perf_counter()
            secs = (smtp_source_burst(pf.port, work, users, n, reuse) if ctx.smtp_client == "smtp-source"
                    else asyncio.run(smtp_burst(pf.port, messages, 10, reuse)))
            delivered = wait_count(pf_dirs, n * (r + 1), 300)
            all_secs = time.perf_counter() - start
            cpu["postfix"].append((cpu_tree_seconds(pf.master_pid()) - c0) / n)
            pf_rates.append(n / secs)
            pf_delivered.append(n / all_secs)
            log(f"smtp{key} postfix run {r}: accepted {n / secs:.0f} msg/s, delivered {n / all_secs:.0f} msg/s"
                + ("" if delivered else " (NOT all delivered)"))
        peer = median(pf_rates)
        note = (f"postfix accepts into its queue, then delivers: all delivered at {median(pf_delivered):.0f} msg/s; "
                "mailsuite delivers to the Maildir before 250; " + cpu_note(cpu, "msg", 1000, "ms"))
        if problems:
            note += "; " + "; ".join(problems[:2])
        if not ms_rates:
            return [not_available(key, label, "msg/s", "postfix", "higher", 1.5,
                                  problems[0] if problems else ms.why_not("smtp"), peer)]
        if key == "1":
            ctx.smtp1 = {"mailsuite": median(ms_rates), "postfix": peer}
        return [Row(key, label, "msg/s", median(ms_rates), peer, "postfix", "higher", 1.5, note)]
    finally:
        ms.stop()
        pf.stop()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# -- 3: POP3 ------------------------------------------------------------------------------------------
async def pop3_download(port: int, user: str, expect_bytes: int) -> float:
    start = time.perf_counter()
    client = POP3Client(port)
    await client.connect(user, PASSWORD)
    stat = await client.command(b"STAT")
    count = int(stat.split()[1])
    await client.multiline(b"LIST")
    got = 0
    for i in range(1, count + 1):
        got += len(await client.multiline(b"RETR %d" % i))
    await client.quit()
    secs = time.perf_counter() - start
    if got < expect_bytes:
        raise RuntimeError(f"POP3 downloaded {got} octets, expected at least {expect_bytes}")
    return secs


def run_pop3(ctx: Context) -> list[Row]:
    n = ctx.size(1000, 100)
    sizes = corpus.pop3_sizes(n, 58_000_000 * n // 1000)
    label = f"POP3 download {n} msgs 1 KB-1 MB ({sum(sizes) / 1e6:.0f} MB)"
    work = ctx.sub("pop3")
    files = corpus.build_folder(ctx.work, f"pop3-{n}", sizes)
    total = sum(f.stat().st_size for f in files)
    ms, dv = Mailsuite(work, ("pop3",)), Dovecot(work)
    ms.add_users(1)
    dv.add_users(1)
    corpus.link_into(files, ms.user_maildir(0))
    corpus.link_into(files, dv.user_maildir(0))
    try:
        ms.start()
        dv.start()
        ms_ok, problems = ms.has("pop3"), []
        ms_t, dv_t = [], []
        first: dict[str, float] = {}
        cpu: dict[str, list[float]] = {"mailsuite": [], "dovecot": []}
        for r in range(ctx.runs + 1):  # run 0 is the first (cold) download, not in the median
            if ms_ok:
                try:
                    c0 = cpu_tree_seconds(ms.pid)
                    with profiled(ctx, "pop3", ms.pid) if r == 1 else _nothing():
                        secs = asyncio.run(pop3_download(ms.port("pop3"), user_name(0), total))
                    if r:
                        cpu["mailsuite"].append(cpu_tree_seconds(ms.pid) - c0)
                    (ms_t.append(secs) if r else first.__setitem__("mailsuite", secs))
                    log(f"pop3 mailsuite run {r}: {secs:.2f} s")
                except Exception as exc:
                    problems.append(f"mailsuite: {type(exc).__name__}: {exc}")
                    ms_ok = False
            c0 = cpu_tree_seconds(dv.master_pid())
            secs = asyncio.run(pop3_download(dv.ports["pop3"], user_name(0), total))
            if r:
                cpu["dovecot"].append(cpu_tree_seconds(dv.master_pid()) - c0)
            (dv_t.append(secs) if r else first.__setitem__("dovecot", secs))
            log(f"pop3 dovecot run {r}: {secs:.2f} s")
        note = ("first download (not in the median): " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items())
                + "; " + cpu_note(cpu, "download", 1, "s"))
        if not ms_t:
            return [not_available("3", label, "s", "dovecot", "lower", 1.1,
                                  problems[0] if problems else ms.why_not("pop3"), median(dv_t))]
        return [Row("3", label, "s", median(ms_t), median(dv_t), "dovecot", "lower", 1.1, note)]
    finally:
        ms.stop()
        dv.stop()


# -- 4 and 5: IMAP FETCH ------------------------------------------------------------------------------
HEADER_SYNC = (b"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
               b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To "
               b"Received)])")
FULL_FETCH = b"UID FETCH 1:* (FLAGS BODY.PEEK[])"


async def imap_fetch(port: int, user: str, command: bytes, count: int, repeats: int) -> list[float]:
    """One session: SELECT, one warm-up fetch, then ``repeats`` timed fetches."""
    client = IMAPClient(port)
    await client.connect(user, PASSWORD)
    await client.command(b"SELECT INBOX")
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        untagged, _ = await client.command(command)
        secs = time.perf_counter() - start
        fetched = sum(1 for line in untagged if b" FETCH " in line)
        if fetched != count:
            raise RuntimeError(f"FETCH returned {fetched} messages, expected {count}")
        if r:
            times.append(secs)
    await client.logout()
    return times


def run_imap_fetch(ctx: Context) -> list[Row]:
    n = ctx.size(10_000, 2_000)
    rnd = random.Random(5)
    files = corpus.build_folder(ctx.work, f"small-{n}", [rnd.randint(1500, 4000) for _ in range(n)])
    work = ctx.sub("imapfetch")
    ms, dv = Mailsuite(work, ("imap",)), Dovecot(work)
    ms.add_users(1)
    dv.add_users(1)
    corpus.link_into(files, ms.user_maildir(0))
    corpus.link_into(files, dv.user_maildir(0))
    specs = [("4", f"IMAP UID FETCH 1:* (FLAGS BODY.PEEK[]), {n} msgs, warm", FULL_FETCH),
             ("5", f"IMAP header sync (Thunderbird HEADER.FIELDS), {n} msgs", HEADER_SYNC)]
    rows = []
    try:
        ms.start()
        dv.start()
        ms_ok, problem = ms.has("imap"), ""
        for key, label, command in specs:
            ms_t: list[float] = []
            cpu: dict[str, list[float]] = {"mailsuite": [], "dovecot": []}
            if ms_ok:
                try:
                    c0 = cpu_tree_seconds(ms.pid)
                    with profiled(ctx, f"imap{key}", ms.pid):
                        ms_t = asyncio.run(imap_fetch(ms.port("imap"), user_name(0), command, n, ctx.runs))
                    cpu["mailsuite"].append((cpu_tree_seconds(ms.pid) - c0) / (ctx.runs + 1))
                    log(f"imap{key} mailsuite: " + ", ".join(f"{t:.2f}" for t in ms_t) + " s")
                except Exception as exc:
                    problem = f"mailsuite: {type(exc).__name__}: {exc}"
                    ms_ok = False
            c0 = cpu_tree_seconds(dv.master_pid())
            dv_t = asyncio.run(imap_fetch(dv.ports["imap"], user_name(0), command, n, ctx.runs))
            cpu["dovecot"].append((cpu_tree_seconds(dv.master_pid()) - c0) / (ctx.runs + 1))
            log(f"imap{key} dovecot: " + ", ".join(f"{t:.2f}" for t in dv_t) + " s")
            if not ms_t:
                rows.append(not_available(key, label, "s", "dovecot", "lower", 1.5, problem or ms.why_not("imap"),
                                          median(dv_t)))
            else:
                rows.append(Row(key, label, "s", median(ms_t), median(dv_t), "dovecot", "lower", 1.5,
                                "one warm-up fetch in the same session first; "
                                + cpu_note(cpu, "fetch (session incl.)", 1, "s")))
        return rows
    finally:
        ms.stop()
        dv.stop()


# -- 6: SELECT of a big folder ------------------------------------------------------------------------
async def imap_select(port: int, user: str, count: int) -> tuple[float, float]:
    client = IMAPClient(port)
    start = time.perf_counter()
    await client.connect(user, PASSWORD)
    login = time.perf_counter() - start
    start = time.perf_counter()
    untagged, _ = await client.command(b"SELECT INBOX")
    secs = time.perf_counter() - start
    exists = [int(line.split()[1]) for line in untagged if line.rstrip().endswith(b" EXISTS")]
    if exists != [count]:
        raise RuntimeError(f"SELECT said EXISTS {exists}, expected {count}")
    await client.logout()
    return secs, login


def run_imap_select(ctx: Context) -> list[Row]:
    n = ctx.size(100_000, 10_000)
    files = corpus.build_folder(ctx.work, f"tiny-{n}", [600 + (i * 37) % 900 for i in range(n)])
    work = ctx.sub("imapselect")
    ms, dv = Mailsuite(work, ("imap",)), Dovecot(work)
    runs = ctx.runs
    ms.add_users(runs)
    dv.add_users(runs)
    for i in range(runs):  # one never-opened copy of the folder per first-open run
        corpus.link_into(files, ms.user_maildir(i))
        corpus.link_into(files, dv.user_maildir(i))
    cold_label, warm_label = f"IMAP SELECT {n}-msg folder, first open", f"IMAP SELECT {n}-msg folder, warm"
    try:
        ms.start()
        dv.start()
        ms_ok, problem = ms.has("imap"), ""
        res: dict[str, dict[str, list[float]]] = {"mailsuite": {"cold": [], "warm": [], "login": []},
                                                  "dovecot": {"cold": [], "warm": [], "login": []}}
        ports = {"mailsuite": ms.port("imap"), "dovecot": dv.ports["imap"]}
        # alternate the servers run by run, so a change of load on the shared machine hits both
        for kind in ("cold", "warm"):
            for r in range(runs):
                for server in ("mailsuite", "dovecot"):
                    if server == "mailsuite" and not ms_ok:
                        continue
                    user = user_name(r if kind == "cold" else 0)
                    try:
                        with profiled(ctx, f"imap6-{kind}", ms.pid) if server == "mailsuite" and r == 0 \
                                else _nothing():
                            secs, login = asyncio.run(imap_select(ports[server], user, n))
                    except Exception as exc:
                        if server == "dovecot":
                            raise
                        problem = f"mailsuite: {type(exc).__name__}: {exc}"
                        ms_ok = False
                        continue
                    res[server][kind].append(secs)
                    if kind == "cold":
                        res[server]["login"].append(login)
        for server in ("mailsuite", "dovecot"):
            log(f"imap6 {server}: first open " + ", ".join(f"{t:.2f}" for t in res[server]["cold"])
                + " s; warm " + ", ".join(f"{t:.3f}" for t in res[server]["warm"]) + " s")
        rows = []
        for kind, key, label in (("cold", "6a", cold_label), ("warm", "6b", warm_label)):
            peer = median(res["dovecot"][kind])
            if not res["mailsuite"][kind]:
                rows.append(not_available(key, label, "s", "dovecot", "lower", 2.0, problem or ms.why_not("imap"),
                                          peer))
            else:
                note = (f"LOGIN before it: mailsuite {max(res['mailsuite']['login']):.2f} s max, "
                        f"dovecot {max(res['dovecot']['login']):.2f} s max") if kind == "cold" else ""
                rows.append(Row(key, label, "s", median(res["mailsuite"][kind]), peer, "dovecot", "lower", 2.0, note))
        return rows
    finally:
        ms.stop()
        dv.stop()


# -- 7: IDLE ------------------------------------------------------------------------------------------
async def idle_round_trip(imap_port: int, deliver_port: int, lmtp: bool, users: int, rounds: int,
                          memory: Callable[[], int], watch_deliveries: Callable[[], Any] | None = None,
                          ) -> tuple[list[float], list[float], int, int, int]:
    """Open ``users`` IDLE sessions, then ``rounds`` times deliver one message to every user (10 SMTP/LMTP
    sessions with connection reuse) and time until every session saw EXISTS.  Returns (seconds until all
    saw EXISTS per round, delivery seconds per round, KiB with all sessions idle, peak KiB, KiB before)."""
    before = memory()
    sessions: list[IMAPClient] = [IMAPClient(imap_port) for _ in range(users)]
    gate = asyncio.Semaphore(50)

    async def open_one(i: int) -> None:
        async with gate:
            await sessions[i].connect(user_name(i), PASSWORD)
            await sessions[i].command(b"SELECT INBOX")
            await sessions[i].idle_start()

    await asyncio.gather(*(open_one(i) for i in range(users)))
    await asyncio.sleep(1.0)
    idle_kib = peak = memory()
    all_seen, delivery = [], []
    profiler = watch_deliveries() if watch_deliveries is not None else contextlib.nullcontext()
    profiler.__enter__()
    per_message = 100  # recipients per transaction (mailsuite's default max_recipients)
    for r in range(rounds):
        messages = [([user_name(i) for i in range(first, min(first + per_message, users))],
                     dot_stuff(corpus.message(r * users + first, 2048, f"idle-list@{DOMAIN}")))
                    for first in range(0, users, per_message)]
        seen: list[float] = []

        async def watch(s: IMAPClient) -> None:
            await s.wait_exists()
            seen.append(time.perf_counter())

        watchers = [asyncio.ensure_future(watch(s)) for s in sessions]
        start = time.perf_counter()
        sent = await smtp_burst(deliver_port, messages, min(10, len(messages)), True, lmtp)
        await asyncio.wait_for(asyncio.gather(*watchers), timeout=120)
        all_seen.append(max(seen) - start)
        delivery.append(sent)
        peak = max(peak, memory())
    profiler.__exit__(None, None, None)
    for s in sessions:
        s.close()
    return all_seen, delivery, idle_kib, peak, before


def run_idle(ctx: Context) -> list[Row]:
    n = ctx.size(2000, 200)
    work = ctx.sub("idle")
    ms, dv = Mailsuite(work, ("smtp", "imap")), Dovecot(work, max_sessions=n, uid_per_user=True)
    ms.add_users(n)
    dv.add_users(n)
    rss_label, time_label = f"{n} IMAP sessions in IDLE: server memory", f"{n} IDLE sessions: delivery to all seen"
    try:
        ms.start()
        dv.start()
        ms_res = None
        problem = ""
        if ms.has("imap") and ms.has("smtp"):
            try:
                def ms_memory() -> int:
                    ms.snapshot_memory()  # only with --tracemalloc
                    return ms.rss_kib()
                # the profile covers the timed part only: the deliveries until every session saw EXISTS
                ms_res = asyncio.run(idle_round_trip(ms.port("imap"), ms.port("smtp"), False, n, ctx.runs,
                                                     ms_memory, lambda: profiled(ctx, "idle", ms.pid)))
                log(f"idle mailsuite: all seen " + ", ".join(f"{t:.2f}" for t in ms_res[0])
                    + f" s; RSS idle {ms_res[2] / 1024:.0f} MB, peak {ms_res[3] / 1024:.0f} MB")
            except Exception as exc:
                problem = f"mailsuite: {type(exc).__name__}: {exc}"
        else:
            problem = ms.why_not("imap" if not ms.has("imap") else "smtp")
        dv_res = asyncio.run(idle_round_trip(dv.ports["imap"], dv.ports["lmtp"], True, n, ctx.runs, dv.pss_kib))
        log(f"idle dovecot: all seen " + ", ".join(f"{t:.2f}" for t in dv_res[0])
            + f" s; PSS idle {dv_res[2] / 1024:.0f} MB, peak {dv_res[3] / 1024:.0f} MB")
        peer_mem, peer_time = dv_res[3] / 1024, median(dv_res[0])
        if ms_res is None:
            return [not_available("7a", rss_label, "MB", "dovecot", "limit", 100, problem, peer_mem),
                    not_available("7b", time_label, "s", "dovecot", "limit", 2.0, problem, peer_time)]
        return [Row("7a", rss_label, "MB", ms_res[3] / 1024, peer_mem, "dovecot", "limit", 100,
                    "mailsuite: peak RSS of its one process; dovecot: peak PSS summed over all its processes; "
                    f"before the sessions: mailsuite {ms_res[4] / 1024:.0f} MB, dovecot {dv_res[4] / 1024:.0f} MB; "
                    f"all idle, before deliveries: mailsuite {ms_res[2] / 1024:.0f} MB, "
                    f"dovecot {dv_res[2] / 1024:.0f} MB"),
                Row("7b", time_label, "s", median(ms_res[0]), peer_time, "dovecot", "limit", 2.0,
                    f"from the first delivery to the last EXISTS; one message per 100 users (RCPT TO each), "
                    f"10 sessions "
                    f"(mailsuite SMTP {median(ms_res[1]):.2f} s, dovecot LMTP {median(dv_res[1]):.2f} s)")]
    finally:
        ms.stop()
        dv.stop()


# -- 8: IMAP mix --------------------------------------------------------------------------------------
async def imap_mix(port: int, clients: int, seconds: float, seed: int) -> int:
    """``clients`` loops of LOGIN, SELECT, FETCH (last 10, bodies), STORE \\Seen, APPEND, STORE \\Deleted +
    EXPUNGE, LOGOUT for ``seconds``; returns the number of commands completed."""
    deadline = time.perf_counter() + seconds
    done = [0]
    append = corpus.message(seed, 3000)

    async def loop(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        while time.perf_counter() < deadline:
            client = IMAPClient(port)
            await client.connect(user_name(i), PASSWORD)
            untagged, _ = await client.command(b"SELECT INBOX")
            exists = next(int(line.split()[1]) for line in untagged if line.rstrip().endswith(b" EXISTS"))
            await client.command(b"FETCH %d:%d (FLAGS BODY.PEEK[])" % (max(1, exists - 9), exists))
            await client.command(b"STORE %d +FLAGS (\\Seen)" % rnd.randint(1, exists))
            await client.command(b"APPEND INBOX ()", append)
            await client.command(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
            await client.command(b"EXPUNGE")
            await client.logout()
            done[0] += 8

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return done[0]


def run_imap_mix(ctx: Context) -> list[Row]:
    clients, seconds = ctx.size(50, 10), ctx.size(30, 5)
    files = corpus.build_folder(ctx.work, "mix-200", [2000 + (i * 53) % 3000 for i in range(200)])
    work = ctx.sub("imapmix")
    ms, dv = Mailsuite(work, ("imap",)), Dovecot(work, max_sessions=clients)
    ms.add_users(clients)
    dv.add_users(clients)
    for i in range(clients):
        corpus.link_into(files, ms.user_maildir(i))
        corpus.link_into(files, dv.user_maildir(i))
    label = f"IMAP mix, {clients} clients x {seconds} s"
    try:
        ms.start()
        dv.start()
        ms_ok, problem = ms.has("imap"), ""
        ms_r, dv_r = [], []
        cpu: dict[str, list[float]] = {"mailsuite": [], "dovecot": []}
        for r in range(ctx.runs):
            if ms_ok:
                try:
                    with profiled(ctx, "imap8", ms.pid) if r == 0 else _nothing():
                        start, c0 = time.perf_counter(), cpu_tree_seconds(ms.pid)
                        ops = asyncio.run(imap_mix(ms.port("imap"), clients, seconds, r))
                        ms_r.append(ops / (time.perf_counter() - start))
                        cpu["mailsuite"].append((cpu_tree_seconds(ms.pid) - c0) / ops)
                    log(f"imap8 mailsuite run {r}: {ms_r[-1]:.0f} ops/s")
                except Exception as exc:
                    problem = f"mailsuite: {type(exc).__name__}: {exc}"
                    ms_ok = False
            start, c0 = time.perf_counter(), cpu_tree_seconds(dv.master_pid())
            ops = asyncio.run(imap_mix(dv.ports["imap"], clients, seconds, r))
            dv_r.append(ops / (time.perf_counter() - start))
            cpu["dovecot"].append((cpu_tree_seconds(dv.master_pid()) - c0) / ops)
            log(f"imap8 dovecot run {r}: {dv_r[-1]:.0f} ops/s")
        if not ms_r:
            return [not_available("8", label, "ops/s", "dovecot", "higher", 1.0, problem or ms.why_not("imap"),
                                  median(dv_r))]
        return [Row("8", label, "ops/s", median(ms_r), median(dv_r), "dovecot", "higher", 1.0,
                    "ops = commands completed (LOGIN SELECT FETCH STORE APPEND STORE EXPUNGE LOGOUT); "
                    + cpu_note(cpu, "op", 1000, "ms"))]
    finally:
        ms.stop()
        dv.stop()


# -- 9: the disk ceiling ------------------------------------------------------------------------------
def disk_loop(directory: Path, count: int, size: int = 10 * 1024) -> float:
    """write + fsync + rename + directory fsync, one after the other; returns deliveries/s."""
    tmp, new = directory / "tmp", directory / "new"
    tmp.mkdir(parents=True, exist_ok=True)
    new.mkdir(exist_ok=True)
    data = corpus.message(0, size)
    dir_fd = os.open(new, os.O_RDONLY)
    start = time.perf_counter()
    try:
        for i in range(count):
            path = tmp / f"m{i}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(path, new / f"m{i}")
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return count / (time.perf_counter() - start)


def disk_parallel(directory: Path, count: int, writers: int = 10) -> float:
    """``writers`` threads running :func:`disk_loop` at once (each in its own directory, ``count`` in
    all): what the disk gives concurrent deliveries, whose fsyncs the file system can group."""
    from concurrent.futures import ThreadPoolExecutor
    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda w: disk_loop(directory / f"w{w}", count // writers), range(writers)))
    return (count // writers * writers) / (time.perf_counter() - start)


def run_disk(ctx: Context) -> list[Row]:
    n = ctx.size(2000, 300)
    rates, parallel = [], []
    for r in range(ctx.runs):
        rates.append(disk_loop(ctx.sub(f"disk/run{r}"), n))
        parallel.append(disk_parallel(ctx.sub(f"disk/par{r}"), n))
        log(f"disk run {r}: {rates[-1]:.0f} deliveries/s, 10 writers {parallel[-1]:.0f}/s")
    ceiling = median(rates)
    label = f"disk: write+fsync+rename+dir fsync loop, {n} x 10 KB"
    ms1, pf1 = ctx.smtp1.get("mailsuite"), ctx.smtp1.get("postfix")
    note = (f"ceiling {ceiling:.0f} deliveries/s (one loop, no concurrency); 10 such loops at once: "
            f"{median(parallel):.0f}/s in all")
    if ms1 is None:
        note += "; run workload smtp1 in the same invocation for the fractions"
    row = Row("9", label, "of disk", ms1 / ceiling if ms1 else None, pf1 / ceiling if pf1 else None,
              "postfix", "fraction", 0.0, note)
    if ms1 is None:
        row.status = "needs smtp1 in this run"
    return [row]


WORKLOADS: dict[str, Callable[[Context], list[Row]]] = {
    "smtp1": lambda ctx: run_smtp(ctx, reuse=False),
    "smtp2": lambda ctx: run_smtp(ctx, reuse=True),
    "pop3": run_pop3,
    "imapfetch": run_imap_fetch,
    "imapselect": run_imap_select,
    "idle": run_idle,
    "imapmix": run_imap_mix,
    "disk": run_disk,
}
