"""Soak (issue 8): waves of connections opening and closing against every listener; RSS and open files.

    python bench/soak.py                    # 60 s (default)
    python bench/soak.py --minutes 10       # the full run of the issue
    python bench/soak.py --connections 1000 --seconds 120

Each wave opens ``--connections`` connections at once, spread over SMTP (25/587/465), POP3 (110/995) and
IMAP (143/993) — the implicit-TLS ones with a full handshake — reads every greeting, then closes them: half
politely (QUIT / LOGOUT) and half by just dropping the socket, a few in the middle of a command.  Waves
repeat until the time is up.  The server's RSS and open file descriptors (/proc/PID/status, /proc/PID/fd)
are read after a full warm-up wave (so the allocator has seen the peak) and again at the end, once the last wave has been closed; the run fails
(exit 1) if descriptors leaked or RSS grew beyond ``--rss-slack`` percent.
"""

from __future__ import annotations

import argparse
import random
import resource
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.reliability.support import client_tls, proc_status  # noqa: E402
from tests.server import HOST, MailServer  # noqa: E402

TLS_SERVICES = {"submissions", "pop3s", "imaps"}
GOODBYE = {"smtp": b"QUIT\r\n", "submission": b"QUIT\r\n", "submissions": b"QUIT\r\n", "pop3": b"QUIT\r\n",
           "pop3s": b"QUIT\r\n", "imap": b"z LOGOUT\r\n", "imaps": b"z LOGOUT\r\n"}
HALF_COMMAND = {"smtp": b"MAIL FROM:<a@", "pop3": b"US", "imap": b"a LOGIN {10}\r\nab"}


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))   # inherited by the server too


def _open(srv: MailServer, service: str, context: ssl.SSLContext) -> socket.socket:
    sock = socket.create_connection((HOST, srv.port(service)), timeout=30)
    if service in TLS_SERVICES:
        sock = context.wrap_socket(sock)
    greeting = sock.recv(4096)
    if not greeting:
        raise ConnectionError(f"{service}: closed before the greeting")
    return sock


def wave(srv: MailServer, count: int, rng: random.Random, context: ssl.SSLContext) -> int:
    """Open ``count`` connections, then close them all; returns how many were opened."""
    services = list(srv.ports)
    sockets: list[tuple[str, socket.socket]] = []
    try:
        for i in range(count):
            service = services[i % len(services)]
            sockets.append((service, _open(srv, service, context)))
    finally:
        rng.shuffle(sockets)
        for n, (service, sock) in enumerate(sockets):
            try:
                if n % 2 == 0:
                    sock.sendall(GOODBYE[service])
                elif n % 7 == 1 and service in HALF_COMMAND:
                    sock.sendall(HALF_COMMAND[service])
            except OSError:
                pass
            sock.close()
    return len(sockets)


def settle(pid: int, baseline: int, timeout: float = 30.0) -> dict[str, int]:
    """The server's figures once it has noticed every close (bounded wait)."""
    deadline = time.monotonic() + timeout
    status = proc_status(pid)
    while status["fds"] > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
        status = proc_status(pid)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, help="run time in minutes (the issue's full run: 10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="run time in seconds (default 60)")
    parser.add_argument("--connections", type=int, default=1000, help="connections open at once per wave")
    parser.add_argument("--rss-slack", type=float, default=25.0, help="allowed RSS growth in percent")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    _raise_fd_limit(args.connections + 512)
    rng = random.Random(args.seed)
    context = client_tls()
    limits = f"max_connections_per_ip = {args.connections * 2}"
    with tempfile.TemporaryDirectory(prefix="mailsuite-soak-") as work:
        srv = MailServer(Path(work), extra_config=f"[smtp]\n{limits}\n[imap]\n{limits}\n")
        srv.add_user("soak@example.org", "soak-password")
        srv.start()
        try:
            assert srv.proc is not None
            pid = srv.proc.pid
            idle_fds = proc_status(pid)["fds"]
            wave(srv, args.connections, rng, context)     # warm-up: imports, TLS, caches, the allocator's peak
            start = settle(pid, idle_fds)
            print(f"start: RSS {start['rss_kb'] / 1024:.1f} MB, {start['fds']} open files", flush=True)
            began = time.monotonic()
            waves = opened = 0
            peak_fds = start["fds"]
            while time.monotonic() - began < seconds:
                opened += wave(srv, args.connections, rng, context)
                waves += 1
                peak_fds = max(peak_fds, proc_status(pid)["fds"])
                if waves % 10 == 0:
                    now = proc_status(pid)
                    print(f"  {time.monotonic() - began:5.0f} s: {waves} waves, {opened} connections, "
                          f"RSS {now['rss_kb'] / 1024:.1f} MB", flush=True)
            elapsed = time.monotonic() - began
            end = settle(pid, start["fds"])
            alive = srv.proc.poll() is None
        finally:
            srv.stop()
        tracebacks = srv.log_text().count("Traceback")
    growth = 100.0 * (end["rss_kb"] - start["rss_kb"]) / max(1, start["rss_kb"])
    print(f"end:   RSS {end['rss_kb'] / 1024:.1f} MB ({growth:+.1f} %), {end['fds']} open files "
          f"(peak seen {peak_fds})")
    print(f"{opened} connections in {waves} waves of {args.connections}, {elapsed:.0f} s "
          f"({opened / max(elapsed, 1e-9):.0f}/s); tracebacks in the log: {tracebacks}")
    problems = []
    if not alive:
        problems.append("the server died")
    if end["fds"] > start["fds"]:
        problems.append(f"{end['fds'] - start['fds']} file descriptors leaked")
    if growth > args.rss_slack:
        problems.append(f"RSS grew {growth:.1f} % (> {args.rss_slack} %)")
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the server log")
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
