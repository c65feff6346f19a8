"""The users file (Dovecot passwd-file style) and the aliases file: parsing, and safe rewriting.

users:   ``alice@example.org:{ARGON2ID}$argon2id$...`` — one user a line; Dovecot's further ``:uid:gid:...``
         fields are accepted and ignored, so an existing passwd-file can be copied in.
aliases: ``source: target, target ...`` — source ``name@domain`` or ``@domain`` (catch-all); targets are
         local users, other aliases or external addresses. ``#`` starts a comment.

Both files are rewritten atomically (temp file, fsync, rename, dir fsync) under an ``flock`` so that the admin
command and a running server never see half a file. Errors name the file and line.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .passwords import PasswordFormatError, scheme_of

__all__ = ["AccountsFileError", "parse_users", "parse_aliases", "write_lines", "locked", "normalise_address",
           "ADDRESS_RE", "USER_RE"]

ADDRESS_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
#: a local user: like ADDRESS_RE, but the local part names a directory of the store (``mail/<domain>/<local>``),
#: so no ``/`` and no leading ``.`` (no ``..``, no hidden or Maildir++ folder names; DESIGN §4)
USER_RE = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~-][a-z0-9!#$%&'*+=?^_`{|}~.-]{0,254}@[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


class AccountsFileError(Exception):
    """A malformed line in the users or aliases file (message names file and line)."""


def normalise_address(address: str) -> str:
    """Lower-case an address (local parts are treated case-insensitively, as every home server does)."""
    return address.strip().lower()


@dataclass(frozen=True)
class UserEntry:
    user: str
    password_hash: str


def parse_users(path: Path, text: str) -> dict[str, UserEntry]:
    users: dict[str, UserEntry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        name = normalise_address(name)
        if not sep or not ADDRESS_RE.match(name):
            raise AccountsFileError(f"{path}:{number}: expected 'user@domain:{{SCHEME}}hash', got {raw[:60]!r}")
        if not USER_RE.match(name):
            raise AccountsFileError(f"{path}:{number}: {name}: a user name can't contain '/' or start with '.'")
        # The hash itself may contain ':' only in no scheme we support; Dovecot's extra fields follow it.
        password_hash = rest.split(":", 1)[0]
        try:
            scheme_of(password_hash)
        except PasswordFormatError as exc:
            raise AccountsFileError(f"{path}:{number}: {name}: {exc}") from None
        if name in users:
            raise AccountsFileError(f"{path}:{number}: {name}: user listed twice")
        users[name] = UserEntry(name, password_hash)
    return users


def parse_aliases(path: Path, text: str) -> dict[str, tuple[str, ...]]:
    aliases: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        source, sep, rest = line.partition(":")
        source = normalise_address(source)
        targets = tuple(normalise_address(t) for t in re.split(r"[,\s]+", rest) if t.strip())
        if not sep or not targets:
            raise AccountsFileError(f"{path}:{number}: expected 'alias@domain: target[, target...]', got {raw[:60]!r}")
        if source.startswith("@"):
            if not _DOMAIN_RE.match(source[1:]):
                raise AccountsFileError(f"{path}:{number}: bad catch-all domain {source!r}")
        elif not ADDRESS_RE.match(source):
            raise AccountsFileError(f"{path}:{number}: bad alias address {source!r}")
        for target in targets:
            if not ADDRESS_RE.match(target):
                raise AccountsFileError(f"{path}:{number}: {source}: bad target address {target!r}")
        if source in aliases:
            raise AccountsFileError(f"{path}:{number}: {source}: alias listed twice")
        aliases[source] = targets
    return aliases


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (admin commands editing the same file wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_lines(path: Path, lines: list[str], mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``lines`` (durable: file and directory fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        # keep the owner (a root-run admin command must not take the file away from the server's user)
        st = path.stat() if path.exists() else path.parent.stat()
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
