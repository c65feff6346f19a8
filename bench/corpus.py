"""Benchmark messages (deterministic, CRLF line ends) and pre-filled Maildirs.

A pre-filled folder is written once under ``<work>/corpus/<name>/`` and hard-linked into each server's
Maildir (``cur/``, Dovecot-style names with ``,S=<size>``), so both servers read the very same inodes and
filling a 100,000-message folder twice costs only the links.  Messages are immutable in Maildir and both
servers only rename entries, never rewrite files, so sharing inodes is safe.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from servers import DOMAIN, MAIL_GID, MAIL_UID

_WORDS = ("mail server benchmark message body text with some ordinary words like meeting report "
          "tomorrow project invoice attached please review thanks regards hello world lorem ipsum "
          "dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt").split()


def _text_block(size: int = 1 << 20, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    lines, total = [], 0
    while total < size:
        line = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(8, 12))).encode() + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


_BLOCK = _text_block()


def message(i: int, size: int, to: str = f"u0@{DOMAIN}") -> bytes:
    """A plain-text message of about ``size`` octets (at least its headers), CRLF line ends."""
    header = (f"Return-Path: <sender{i % 97}@example.com>\r\n"
              f"From: Sender {i % 97} <sender{i % 97}@example.com>\r\n"
              f"To: {to}\r\n"
              f"Cc: list{i % 7}@example.net\r\n"
              f"Subject: Benchmark message {i}\r\n"
              f"Date: Sat, 21 Nov 2026 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
              f"Message-ID: <{i}.bench@example.com>\r\n"
              f"MIME-Version: 1.0\r\n"
              f"Content-Type: text/plain; charset=us-ascii\r\n"
              f"\r\n").encode()
    need = max(size - len(header), 2)
    start = (i * 7919) % (len(_BLOCK) // 2)
    start = _BLOCK.find(b"\r\n", start) + 2  # start at a line boundary
    body = bytearray()
    while len(body) < need:
        body += _BLOCK[start:start + need - len(body)]
        start = 0
    body = bytes(body)
    cut = body.rfind(b"\r\n")
    body = body[:cut + 2] if cut > 0 else b"x\r\n"
    return header + body


def pop3_sizes(count: int, total: int) -> list[int]:
    """``count`` sizes from 1 KiB to 1 MiB whose sum is about ``total`` (1 KiB * 1024 ** x**p, x evenly
    spread over [0, 1], ``p`` found by bisection), shuffled deterministically."""
    def sizes(p: float) -> list[int]:
        return [int(1024 * 1024 ** ((k / max(count - 1, 1)) ** p)) for k in range(count)]
    lo, hi = 0.1, 50.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if sum(sizes(mid)) > total:
            lo = mid
        else:
            hi = mid
    out = sizes(lo)
    random.Random(3).shuffle(out)
    return out


def build_folder(work: Path, name: str, sizes: list[int]) -> list[Path]:
    """Write the corpus folder ``name`` once (files owned by nobody, mode 0600); returns its files."""
    folder = work / "corpus" / name
    done = folder / ".complete"
    if done.exists():
        return sorted(p for p in folder.iterdir() if p.name != ".complete")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        data = message(i, size)
        path = folder / f"{1795000000 + i}.M{i}P1Q1.bench,S={len(data)}:2,"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, MAIL_UID, MAIL_GID)
        finally:
            os.close(fd)
        paths.append(path)
    done.touch()
    return paths


def link_into(files: list[Path], maildir: Path) -> None:
    """Hard-link corpus files into ``maildir/cur``."""
    cur = maildir / "cur"
    for path in files:
        os.link(path, cur / path.name)
