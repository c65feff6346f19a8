"""Test harness: the real server (``twistd -n mailsuite --config <tmp>``) on free loopback ports.

    srv = MailServer(tmp_path)            # writes config, data dir; nothing runs yet
    srv.add_user("alice@example.org", "secret-pw")
    srv.start()                            # waits until every listener accepts connections
    srv.port("submission"); srv.messages("alice@example.org")
    srv.stop()                             # SIGTERM, waits; srv.kill() sends SIGKILL

Domains: example.org and example.net; host name mail.example.org. The server's log is ``srv.log_text()``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
HOST = "127.0.0.1"
#: the twistd command (``python -m twisted`` is the newer ``twist`` runner, not twistd)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    """Environment for child processes: the working tree first on the path (plugin included)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run_cli(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailsuite", "--config", str(config), *args], input=input,
                          capture_output=True, text=True, env=env(), cwd=str(REPO), timeout=60)


class MailServer:
    def __init__(self, tmp_path: Path, *, extra_config: str = "", services: tuple[str, ...] = SERVICES,
                 allow_plaintext_loopback: bool = False) -> None:
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.config = self.dir / "mailsuite.toml"
        self.ports = {name: free_port() for name in services}
        self.proc: subprocess.Popen | None = None
        self.logfile = self.dir / "server.log"
        listen = "\n".join(f'{name} = ["tcp:{self.ports.get(name, 0)}:interface={HOST}"]' if name in services
                           else f"{name} = []" for name in SERVICES)
        self.config.write_text(f"""
hostname = "mail.example.org"
domains = ["example.org", "example.net"]
data_dir = "{self.data_dir}"

[listen]
{listen}

[auth]
allow_plaintext_loopback = {str(allow_plaintext_loopback).lower()}
failure_delay = 0.1
max_failures = 3

{extra_config}
""")

    # -- process ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "MailServer":
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", "mailsuite",
             "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=str(self.dir))
        log.close()
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            for name, port in list(pending.items()):
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                    del pending[name]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not listen on {pending} in {timeout}s:\n{self.log_text()}")
            if pending:
                time.sleep(0.05)
        # the ports accept connections (kernel backlog) before startService has run: wait for its banner too
        while " started (config: " not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not finish starting in {timeout}s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server ignored SIGTERM:\n{self.log_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def port(self, service: str) -> int:
        return self.ports[service]

    # -- accounts (through the admin command, as a user would) -------------------------------------------
    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run_cli(self.config, *args, input=input)

    def add_user(self, user: str, password: str) -> None:
        result = self.cli("user", "add", user, "--password-stdin", input=password + "\n")
        if result.returncode != 0:
            raise RuntimeError(f"user add failed: {result.stderr}")

    def add_alias(self, source: str, *targets: str) -> None:
        result = self.cli("alias", "add", source, *targets)
        if result.returncode != 0:
            raise RuntimeError(f"alias add failed: {result.stderr}")

    # -- the store, read from disk ---------------------------------------------------------------------
    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        local, _, domain = user.lower().rpartition("@")
        base = self.data_dir / "mail" / domain / local
        return base if folder.upper() == "INBOX" else base / ("." + folder)

    def message_files(self, user: str, folder: str = "INBOX") -> list[Path]:
        box = self.maildir(user, folder)
        files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir() if p.is_file()]
        return sorted(files, key=lambda p: p.name)

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        return [p.read_bytes() for p in self.message_files(user, folder)]

    def wait_for_messages(self, user: str, count: int, folder: str = "INBOX", timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user, folder)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def __enter__(self) -> "MailServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rss_kb(srv: MailServer) -> int:
    """The server process's resident memory now (VmRSS, KiB)."""
    assert srv.proc is not None
    status = Path(f"/proc/{srv.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


class RssSampler(threading.Thread):
    """The server's largest resident size while the block runs (VmHWM is no use: argon2 sets it)."""

    def __init__(self, srv: MailServer) -> None:
        super().__init__(daemon=True)
        self.srv, self.stop, self.peak = srv, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss_kb(self.srv))

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
