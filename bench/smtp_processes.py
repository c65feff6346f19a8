"""A design experiment for issue 7, not a workload: what would a second SMTP process give?

Workload 1 (2000 messages of 10 KB, ten ``smtp-source`` sessions, one message per connection) against
one mailsuite server, against two independent mailsuite servers (SMTP only, each with its own data
directory, five of the ten sessions each: the upper bound of two processes sharing the listeners) and
against Postfix, alternated round by round.  mailsuite runs as one process with one reactor by design
(README, DESIGN.md); this measures what that rule costs on this machine.  Prints msg/s per round and the
medians; checks that every message was delivered.

    sudo python bench/smtp_processes.py [--rounds N] [--reuse]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from servers import Mailsuite, Postfix, user_name
from workloads import count_files, smtp_source_burst, wait_count

MESSAGES = 2000
SESSIONS = 10


def burst(ports: list[int], message: Path, reuse: bool) -> float:
    """Ten ``smtp-source`` processes, one session and one user each, spread over ``ports``; seconds."""
    per = MESSAGES // SESSIONS
    start = time.perf_counter()
    procs = [subprocess.Popen(["smtp-source", "-s", "1", "-m", str(per), *(["-d"] if reuse else []),
                               "-M", "client.bench.test", "-f", "bench@example.com", "-t", user_name(i),
                               "-F", str(message), f"inet:127.0.0.1:{ports[i % len(ports)]}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(SESSIONS)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    secs = time.perf_counter() - start
    for p, err in zip(procs, errors):
        if p.returncode:
            raise RuntimeError(f"smtp-source failed: {err.decode(errors='replace').strip()[:200]}")
    return secs


def one_round(kind: str, reuse: bool) -> float:
    """msg/s of one measurement: ``one`` or ``two`` mailsuite servers, or ``postfix``."""
    work = Path(tempfile.mkdtemp(prefix="mailsuite-procs-"))
    work.chmod(0o755)
    started: list = []
    try:
        if kind == "postfix":
            pf = Postfix(work)
            pf.add_users(SESSIONS)
            pf.start()
            started.append(pf)
            ports = [pf.port]
            dirs = [pf.user_maildir(i) for i in range(SESSIONS)]
        else:
            ports, dirs = [], []
            for k in range(1 if kind == "one" else 2):
                sub = work / f"mailsuite{k}"
                sub.mkdir()
                sub.chmod(0o755)
                ms = Mailsuite(sub, ("smtp",))
                ms.add_users(SESSIONS)
                ms.start()
                started.append(ms)
                ports.append(ms.port("smtp"))
                dirs += [ms.user_maildir(i) for i in range(SESSIONS)]
        for port in ports:       # warm-up; also writes work/smtp-source.txt, the 10 KB message
            smtp_source_burst(port, work, SESSIONS, 200, reuse)
        before = count_files(dirs)
        secs = burst(ports, work / "smtp-source.txt", reuse)
        if not wait_count(dirs, before + MESSAGES, 300):
            raise RuntimeError(f"{kind}: only {count_files(dirs) - before} of {MESSAGES} delivered")
        return MESSAGES / secs
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (default 5)")
    parser.add_argument("--reuse", action="store_true", help="connection reuse (workload 2) instead")
    args = parser.parse_args()
    kinds = ("one", "two", "postfix")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            rates[kind].append(one_round(kind, args.reuse))
        print(" | ".join(f"{k}: {rates[k][-1]:.0f} msg/s" for k in kinds), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("median: " + " | ".join(f"{k}: {med[k]:.0f} msg/s" for k in kinds))
    print(f"against postfix: one process {med['one'] / med['postfix']:.2f}x, "
          f"two processes {med['two'] / med['postfix']:.2f}x")
    print("Clients and servers share this machine's CPUs; compare within one run only.")


if __name__ == "__main__":
    main()
