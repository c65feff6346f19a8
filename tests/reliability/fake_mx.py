"""A receiving SMTP server on loopback whose failures the test chooses (for the relay fault tests).

`FaultyMX(host, port)` speaks just enough ESMTP (EHLO with PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT)
and fails on demand, per session, as its attributes say when the session reaches that point:

- `greet = False`: accept the TCP connection and never send the greeting (blackhole);
- `greeting_drip` / `drip`: seconds between the bytes of the greeting / of every reply (slow drip, tarpit);
- `data_cmd = "silent"`: never answer DATA;
- `end`: what happens after the 354: "reply" (read the body, 250), "reset-mid" / "close-mid" (read
  `partial` bytes of the body, then RST / FIN), "silent" (read the whole body, never answer), "reset" (read
  the whole body, then RST), "hold" (read the whole body, then wait for `release` before the 250; the
  first `hold_from` messages are answered at once).

It counts what matters for exactly-once checks: `accepted` (messages whose 250 went out whole, i.e. the
ones a real MX would have delivered for sure) and `seen` (every complete body, answered or not: the RFC 1047
window).  A session whose client is gone ends quietly.  Nothing here is used by the product code.
"""

from __future__ import annotations

import select
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class Message:
    mail: str
    rcpts: list[str]
    data: bytes                 # dot-unstuffed, without the terminator

    @property
    def subject(self) -> str:
        for line in self.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                return line[9:].decode()
            if not line:
                break
        return ""


class _Gone(Exception):
    """The client closed or reset the connection."""


class FaultyMX:
    def __init__(self, host: str, port: int, name: str = "mx.remote.test") -> None:
        self.name = name
        self.cond = threading.Condition()
        self.connections = 0
        self.accepted: list[Message] = []
        self.seen: list[Message] = []
        self.holding = 0
        self._passed = 0                # messages answered at once (for hold_from)
        self.faults = 0                 # sessions in which a fault was played
        self.release = threading.Event()
        self.closing = threading.Event()
        self.heal()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    outer._session(self.request)
                except (_Gone, OSError, ValueError):
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    # -- control ------------------------------------------------------------------------------------------
    def heal(self) -> None:
        """Back to a healthy, prompt server (sessions already past the point keep their fault)."""
        self.greet = True
        self.greeting_drip = 0.0
        self.drip = 0.0
        self.data_cmd = "reply"
        self.end = "reply"
        self.partial = 8192
        self.hold_from = 0

    def start(self) -> "FaultyMX":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, predicate, timeout: float = 20.0) -> bool:
        """Wait (bounded) until `predicate()` holds; the counters change under `cond`."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def count(self, subject: str, where: str = "accepted") -> int:
        with self.cond:
            return sum(1 for m in getattr(self, where) if m.subject == subject)

    # -- one session ----------------------------------------------------------------------------------------
    def _bump(self, **changes: int) -> None:
        with self.cond:
            for key, delta in changes.items():
                setattr(self, key, getattr(self, key) + delta)
            self.cond.notify_all()

    def _add(self, where: str, message: Message) -> None:
        with self.cond:
            getattr(self, where).append(message)
            self.cond.notify_all()

    def _wait_gone(self, sock: socket.socket, until: threading.Event | None = None, limit: float = 60.0) -> bool:
        """Block until the client leaves (True) or `until` is set (False); bounded by `limit`."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.closing.is_set():
            if until is not None and until.is_set():
                return False
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                try:
                    if not sock.recv(65536):
                        return True
                except OSError:
                    return True
        return True

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close with an RST instead of a FIN."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _session(self, sock: socket.socket) -> None:
        self._bump(connections=1)
        f = sock.makefile("rb")

        def send(text: str, drip: float | None = None) -> None:
            data = text.encode() + b"\r\n"
            gap = self.drip if drip is None else drip
            if not gap:
                sock.sendall(data)
                return
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
                if i < len(data) - 1:
                    time.sleep(gap)

        def readline() -> bytes:
            line = f.readline(10000)
            if not line:
                raise _Gone()
            return line

        if not self.greet:
            self._bump(faults=1)
            self._wait_gone(sock)
            return
        send(f"220 {self.name} ESMTP fault-injecting test server", self.greeting_drip or None)
        mail, rcpts = "", []
        while True:
            line = readline().decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                mail, rcpts = "", []
                send(f"250-{self.name}\r\n250 PIPELINING" if verb == "EHLO" else f"250 {self.name}")
            elif verb == "MAIL":
                mail, rcpts = line, []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(line)
                send("250 2.1.5 ok")
            elif verb == "DATA":
                if not mail or not rcpts:
                    send("503 5.5.1 MAIL and RCPT first")
                    continue
                if self.data_cmd == "silent":
                    self._bump(faults=1)
                    self._wait_gone(sock)
                    return
                send("354 go ahead")
                end = self.end
                if end in ("reset-mid", "close-mid"):
                    got = 0
                    while got < self.partial:
                        chunk = readline()
                        got += len(chunk)
                        if chunk == b".\r\n":
                            raise AssertionError("the test message must be longer than `partial`")
                    self._bump(faults=1)
                    if end == "reset-mid":
                        self._reset(sock)
                    else:
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    return
                chunks = []
                while True:
                    chunk = readline()
                    if chunk == b".\r\n":
                        break
                    chunks.append(chunk)
                lines = b"".join(chunks).split(b"\r\n")
                message = Message(mail, list(rcpts), b"\r\n".join(x[1:] if x.startswith(b".") else x
                                                                  for x in lines))
                self._add("seen", message)
                mail, rcpts = "", []
                if end == "silent":
                    self._bump(faults=1)
                    self._wait_gone(sock)
                    return
                if end == "reset":
                    self._bump(faults=1)
                    self._reset(sock)
                    return
                with self.cond:         # decide atomically: with two sessions only `hold_from` pass
                    hold = end == "hold" and self._passed >= self.hold_from
                    if not hold:
                        self._passed += 1
                if hold:
                    self._bump(holding=1, faults=1)
                    try:
                        gone = self._wait_gone(sock, until=self.release)
                    finally:
                        self._bump(holding=-1)
                    if gone:
                        return
                send("250 2.0.0 queued")
                self._add("accepted", message)
            elif verb == "RSET":
                mail, rcpts = "", []
                send("250 2.0.0 reset")
            elif verb == "NOOP":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("500 5.5.2 unknown command")
