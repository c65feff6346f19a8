#!/usr/bin/env python3
"""Benchmarks of issue 7: mailsuite against Postfix and Dovecot on this machine, in one run.

    python bench/run.py                  # every workload, full sizes (as root: installs the peers)
    python bench/run.py smtp1 pop3       # some workloads
    python bench/run.py --quick          # small sizes: a smoke run of everything
    python bench/run.py --profile DIR    # also py-spy mailsuite while it is measured (hot spots printed)

Workloads: smtp1 smtp2 pop3 imapfetch (4 and 5) imapselect (6) idle (7) imapmix (8) disk (9).
Every server listens on 127.0.0.1, non-standard ports, with its own configuration and directories under
the work directory (default: a new /tmp/mailsuite-bench-*; removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers  # noqa: E402
from workloads import WORKLOADS, Context, Row  # noqa: E402

ORDER = ["smtp1", "smtp2", "pop3", "imapfetch", "imapselect", "idle", "imapmix", "disk"]
ALIASES = {"1": "smtp1", "2": "smtp2", "3": "pop3", "4": "imapfetch", "5": "imapfetch", "6": "imapselect",
           "7": "idle", "8": "imapmix", "9": "disk"}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    disk = subprocess.run(["df", "-h", "--output=source,fstype", "/tmp"], capture_output=True,
                          text=True).stdout.splitlines()[-1].split()
    dev = Path(disk[0]).name
    rot = Path(f"/sys/block/{dev}/queue/rotational")
    kind = ("rotational" if rot.read_text().strip() == "1" else "non-rotational") if rot.exists() else "?"
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} MiB RAM, disk {disk[0]} {disk[1]} "
            f"(reports {kind}), Python {platform.python_version()}, "
            f"postfix {_version(['postconf', '-dh', 'mail_version'])}, dovecot {_version(['dovecot', '--version'])}")


def host_speed() -> str:
    """How fast this (shared, virtual) machine is right now: the time of a fixed Python loop and the share
    of CPU time stolen by the host over one second.  Ratios of one run compare; absolute figures of runs in
    different phases of the host do not (bench/RESULTS.md: such a loop ran three times slower in slow phases)."""
    start = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    loop = time.perf_counter() - start

    def ticks() -> list[int]:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    try:
        before = ticks()
        time.sleep(1.0)
        delta = [b - a for a, b in zip(before, ticks())]
        steal = f", {100 * delta[7] / max(1, sum(delta)):.0f}% CPU steal" if len(delta) > 7 else ""
    except OSError:
        steal = ""
    return f"a 2-million-step Python loop took {loop:.2f} s{steal}"


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.split()[0]
    except (OSError, IndexError):
        return "?"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "of disk":
        return f"{value:.0%}"
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def table(rows: list[Row]) -> str:
    head = ["#", "workload", "mailsuite", "peer", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ms = fmt(row.mailsuite, row.unit) if row.mailsuite is not None else f"not available ({row.status})"
        peer = f"{fmt(row.peer, row.unit)} ({row.peer_name})" if row.peer is not None else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None and row.better != "limit" else "-"
        lines.append("| " + " | ".join([row.key, row.workload, ms, peer, ratio, row.target_text, row.met]) + " |")
    notes = [f"- {row.key}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + ([""] + notes if notes else []))


_STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _frame(frame: str) -> str:
    """``func (path:line)`` -> ``func (short path)``."""
    if " (" not in frame:
        return frame
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].split("/site-packages/")[-1].replace(str(servers.REPO) + "/", "")
    return f"{func} ({path})"


def _ours(frame: str) -> bool:
    path = frame.rpartition(" (")[2].rstrip(")")
    if path.startswith(("twisted/", "<")) or "/" in path and not path.startswith("mailsuite/"):
        return False
    return path.startswith("mailsuite/") or not (_STDLIB / path).exists()


def hot_spots(path: Path, top: int = 12) -> str:
    """Top frames of a py-spy raw (collapsed) profile, reactor thread apart from the thread pool:
    self samples (where the time is spent) and inclusive samples of mailsuite's own functions."""
    if not path.exists():
        return f"(no profile written: {path})"
    groups = {"reactor thread": (Counter(), Counter()), "thread pool": (Counter(), Counter())}
    totals = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        group = "reactor thread" if any(f.startswith("ReactorBase.mainLoop") for f in frames) else "thread pool"
        if group == "reactor thread" and frames[-1].startswith("EPollReactor.doPoll"):
            totals["reactor idle"] += n
            continue
        if frames[-1].startswith(("Condition.wait", "Queue.get")):  # pool threads waiting for work
            continue
        totals[group] += n
        own, incl = groups[group]
        own[frames[-1]] += n
        for frame in set(frames):
            if _ours(frame):
                incl[frame] += n
    out = [f"samples at 200/s: reactor busy {totals['reactor thread']}, reactor idle in epoll "
           f"{totals['reactor idle']}, thread pool busy {totals['thread pool']}"]
    for group, (own, incl) in groups.items():
        total = totals[group]
        if not total:
            continue
        out.append(f"{group}, self time (share of its busy samples):")
        out += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
        out.append(f"{group}, inclusive, mailsuite code:")
        out += [f"  {n / total:6.1%}  {name}" for name, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", help=f"some of: {' '.join(ORDER)} (or 1-9); default all")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per workload (median; default 3)")
    parser.add_argument("--workdir", type=Path, help="where servers keep their data (default: new dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy mailsuite into DIR while measured")
    parser.add_argument("--tracemalloc", type=Path, metavar="DIR",
                        help="run mailsuite under tracemalloc; the idle workload writes allocation tops to DIR "
                             "(slows mailsuite: for diagnosis, not for figures)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--no-install", action="store_true", help="don't apt-get install the peers")
    parser.add_argument("--smtp-client", choices=("python", "smtp-source"), default="smtp-source",
                        help="load generator of workloads 1-2: Postfix's smtp-source (default; C, the tool the "
                             "issue names: leaves more CPU to the servers) or the asyncio client")
    args = parser.parse_args(argv)

    chosen: list[str] = []
    for name in args.workloads or ORDER:
        name = ALIASES.get(name, name)
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r} (known: {' '.join(ORDER)})")
        if name not in chosen:
            chosen.append(name)
    chosen.sort(key=ORDER.index)  # disk last: it reports smtp1 as a fraction of the ceiling
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        parser.error("run as root: the peers need root to start (they drop privileges themselves)")
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every started server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    if not args.no_install:
        servers.install_peers()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mailsuite-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    servers.Mailsuite.tracemalloc_dir = args.tracemalloc
    ctx = Context(work=work, quick=args.quick, runs=args.runs, profile_dir=args.profile,
                  smtp_client=args.smtp_client)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"mailsuite benchmarks, {started}{' (--quick sizes)' if args.quick else ''}, median of {args.runs}")
    print(f"machine: {machine()}")
    print(f"host speed now: {host_speed()}")
    print(f"work directory: {work}\n")
    rows: list[Row] = []
    try:
        for name in chosen:
            print(f"== {name}", flush=True)
            try:
                rows.extend(WORKLOADS[name](ctx))
            except Exception as exc:  # the peer or the set-up failed: say so, go on with the others
                traceback.print_exc()
                rows.append(Row(name, name, "", None, None, "-", "fraction", 0.0,
                                status=f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
        print()
        print(table(rows))
        print("\nClients and servers share this machine's CPUs (the load generators, smtp-source or the Python "
              "clients, run on the same 2 cores as the server under test), so every figure is a lower bound of "
              "what the server alone could do.", flush=True)
        for name, path in ctx.profiles.items():
            print(f"\n-- profile of mailsuite during {name} ({path})\n{hot_spots(path)}")
        if args.json:
            args.json.write_text(json.dumps([dict(vars(r), ratio=r.ratio, met=r.met, target_text=r.target_text)
                                             for r in rows], indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
