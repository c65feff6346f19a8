"""Accounts: users, passwords, aliases, catch-all, plus-addressing, and authentication for every protocol.

``Accounts`` reads ``<data_dir>/users`` and ``<data_dir>/aliases`` and re-reads them whenever their mtime
changes, so ``mailsuite user add`` takes effect in a running server at once. Authentication goes through a
twisted.cred ``Portal`` (``mailsuite.accounts.cred``) shared by SMTP, POP3 and IMAP; hashing runs in a
thread, and failures are logged in one stable line for fail2ban and answered only after a delay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger

from .cred import IMailAccount, make_portal
from .files import (ADDRESS_RE, USER_RE, AccountsFileError, UserEntry, locked, normalise_address,
                    parse_aliases, parse_users, write_lines)
from .passwords import PasswordFormatError, hash_password, verify_password

__all__ = ["Accounts", "Resolution", "LocalTarget", "AccountsFileError", "AUTH_FAILURE_FORMAT"]

log = Logger()
#: the one log line per failed login that etc/fail2ban/filter.d/mailsuite.conf matches
AUTH_FAILURE_FORMAT = "mailsuite auth failure: service={service} ip={ip} user={user}"
_MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class LocalTarget:
    user: str               # canonical local user, "alice@example.org"
    folder: str | None      # plus-address detail ("news" for alice+news@), delivered there if it exists


@dataclass(frozen=True)
class Resolution:
    local: tuple[LocalTarget, ...]
    external: tuple[str, ...]


class _Watched:
    """A file parsed again whenever its (mtime, size, inode) changes."""

    def __init__(self, path: Path, parse: Any) -> None:
        self.path, self._parse = path, parse
        self._stamp: tuple[int, int, int] | None = None
        self.value: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        except OSError as exc:
            # unreadable directory, a path component that is a file: the same rule as a syntax error
            stamp = (-1, exc.errno or 0, 0)
        if stamp != self._stamp:
            try:
                self.value = self._parse(self.path, self._read(stamp))
            except AccountsFileError as exc:
                if self._stamp is None:
                    raise
                log.error("{err}; keeping the previous version", err=str(exc))
            self._stamp = stamp
        return self.value

    def _read(self, stamp: tuple[int, int, int]) -> str:
        """The file's text ("" when it does not exist); AccountsFileError when it can't be read."""
        if stamp == (0, 0, 0):
            return ""
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise AccountsFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise AccountsFileError(f"{self.path}: not valid UTF-8 (byte {exc.start})") from None


class Accounts:
    """Users and aliases of the local domains; see docs/architecture.md for the contract."""

    def __init__(self, users_file: Path, aliases_file: Path, domains: tuple[str, ...], *,
                 plus_addressing: bool = True, recipient_delimiter: str = "+",
                 failure_delay: float = 2.0, reactor: Any = None) -> None:
        self.users_file, self.aliases_file = Path(users_file), Path(aliases_file)
        self.domains = tuple(d.lower() for d in domains)
        self.plus_addressing, self.delimiter = plus_addressing, recipient_delimiter
        self.failure_delay = failure_delay
        self._users = _Watched(self.users_file, parse_users)
        self._aliases = _Watched(self.aliases_file, parse_aliases)
        self._reactor = reactor
        self._portal: Any = None
        self.load()

    @classmethod
    def from_settings(cls, settings: Any, reactor: Any = None) -> "Accounts":
        return cls(settings.users_file, settings.aliases_file, settings.domains,
                   plus_addressing=settings.accounts.plus_addressing,
                   recipient_delimiter=settings.accounts.recipient_delimiter,
                   failure_delay=settings.auth.failure_delay, reactor=reactor)

    def load(self) -> None:
        """Read both files now (raises AccountsFileError naming file and line)."""
        self._users.get()
        self._aliases.get()

    # -- queries -------------------------------------------------------------------------------------
    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def users(self) -> list[str]:
        return sorted(self._users.get())

    def user_exists(self, user: str) -> bool:
        return normalise_address(user) in self._users.get()

    def aliases(self) -> dict[str, tuple[str, ...]]:
        return dict(self._aliases.get())

    def canonical_login(self, login: str) -> str:
        """The user a login name means: ``alice`` is ``alice@<first domain>``."""
        login = normalise_address(login)
        if "@" not in login and self.domains:
            return f"{login}@{self.domains[0]}"
        return login

    def resolve(self, address: str) -> Resolution | None:
        """Where mail for ``address`` goes, or None when no such local recipient exists.

        Order: a user; an alias; for ``user+detail`` the base address (folder ``detail``); the postmaster
        (RFC 5321 §4.5.1: every domain must accept it); the domain's catch-all ``@domain``.
        """
        address = normalise_address(address)
        local, _, domain = address.rpartition("@")
        if not local or not self.is_local_domain(domain):
            return None
        found = self._expand(address, set(), 0)
        if found is None and self.plus_addressing and self.delimiter in local:
            base, _, detail = local.partition(self.delimiter)
            if base:
                base_found = self._expand(f"{base}@{domain}", set(), 0)
                if base_found is not None:
                    found = Resolution(tuple(LocalTarget(t.user, t.folder or detail) for t in base_found.local),
                                       base_found.external)
        if found is None and local == "postmaster":
            same = [u for u in self.users() if u.endswith("@" + domain)] or self.users()
            if same:
                found = Resolution((LocalTarget(same[0], None),), ())
        if found is None:
            found = self._expand("@" + domain, set(), 0)
        return found

    def _expand(self, address: str, seen: set[str], depth: int) -> Resolution | None:
        users, aliases = self._users.get(), self._aliases.get()
        if address in users:
            return Resolution((LocalTarget(address, None),), ())
        if address not in aliases or address in seen or depth > _MAX_ALIAS_DEPTH:
            return None
        seen = seen | {address}
        local: list[LocalTarget] = []
        external: list[str] = []
        for target in aliases[address]:
            domain = target.rpartition("@")[2]
            if not self.is_local_domain(domain):
                external.append(target)
                continue
            sub = self._expand(target, seen, depth + 1)
            if sub is None:
                log.warn("alias {alias} points to unknown local address {target}", alias=address, target=target)
                continue
            local.extend(sub.local)
            external.extend(sub.external)
        if not local and not external:
            return None
        return Resolution(tuple(dict.fromkeys(local)), tuple(dict.fromkeys(external)))

    def sender_addresses(self, user: str) -> frozenset[str]:
        """Addresses ``user`` may send as: their own and every alias that delivers to them."""
        user = normalise_address(user)
        mine = {user}
        for source in self._aliases.get():
            if source.startswith("@"):
                continue
            found = self._expand(source, set(), 0)
            if found and any(t.user == user for t in found.local):
                mine.add(source)
        return frozenset(mine)

    def may_send_as(self, user: str, address: str) -> bool:
        """True if ``address`` (or its base without ``+detail``) is one of the user's addresses."""
        address = normalise_address(address)
        allowed = self.sender_addresses(user)
        if address in allowed:
            return True
        local, _, domain = address.rpartition("@")
        if self.plus_addressing and self.delimiter in local:
            return f"{local.partition(self.delimiter)[0]}@{domain}" in allowed
        return False

    # -- authentication ------------------------------------------------------------------------------
    def check_password_sync(self, login: str, password: str) -> str | None:
        """Blocking check (runs the hash); the canonical user on success, else None."""
        user = self.canonical_login(login)
        entry: UserEntry | None = self._users.get().get(user)
        if entry is None:
            # Spend the same time as a real check so timing does not tell which users exist.
            verify_password(_dummy_hash(), password)
            return None
        try:
            return user if verify_password(entry.password_hash, password) else None
        except PasswordFormatError as exc:
            log.error("{file}: {user}: {err}", file=str(self.users_file), user=user, err=str(exc))
            return None

    @property
    def portal(self) -> Any:
        if self._portal is None:
            self._portal = make_portal(self)
        return self._portal

    def authenticate(self, login: str, password: str, *, service: str, ip: str) -> defer.Deferred:
        """Check a password through the shared twisted.cred portal, off the reactor thread.

        Fires with the canonical user, or with None after ``failure_delay`` seconds when the check fails
        (and logs the fail2ban line).
        """
        d = self.portal.login(UsernamePassword(login.encode("utf-8"), password.encode("utf-8")), None,
                              IMailAccount)

        def ok(result: Any) -> str:
            _iface, avatar, _logout = result
            return avatar.user

        def failed(_failure: Any) -> defer.Deferred:
            shown = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in login)[:100]
            log.info(AUTH_FAILURE_FORMAT, service=service, ip=ip, user=shown or "-")
            return self._later(self.failure_delay, None)

        return d.addCallbacks(ok, failed)

    def _later(self, delay: float, value: Any) -> defer.Deferred:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        return _deferLater(reactor, delay, value)

    # -- administration (used by the CLI) --------------------------------------------------------------
    def add_user(self, user: str, password: str, scheme: str = "ARGON2ID") -> None:
        user = normalise_address(user)
        self._check_new_address(user)
        with locked(self.users_file):
            self._users._stamp = None
            if user in self._users.get():
                raise AccountsFileError(f"{self.users_file}: user {user} exists already")
            lines = self._read_lines(self.users_file)
            lines.append(f"{user}:{hash_password(password, scheme)}")
            write_lines(self.users_file, lines)

    def set_password(self, user: str, password: str, scheme: str = "ARGON2ID") -> None:
        user = normalise_address(user)
        with locked(self.users_file):
            lines, found = [], False
            for line in self._read_lines(self.users_file):
                if normalise_address(line.partition(":")[0]) == user and not line.lstrip().startswith("#"):
                    extra = line.partition(":")[2].partition(":")[2]
                    line = f"{user}:{hash_password(password, scheme)}" + (f":{extra}" if extra else "")
                    found = True
                lines.append(line)
            if not found:
                raise AccountsFileError(f"{self.users_file}: no user {user}")
            write_lines(self.users_file, lines)

    def delete_user(self, user: str) -> None:
        user = normalise_address(user)
        with locked(self.users_file):
            lines = self._read_lines(self.users_file)
            kept = [l for l in lines if l.lstrip().startswith("#") or normalise_address(l.partition(":")[0]) != user]
            if len(kept) == len(lines):
                raise AccountsFileError(f"{self.users_file}: no user {user}")
            write_lines(self.users_file, kept)

    def add_alias(self, source: str, targets: list[str]) -> None:
        source = normalise_address(source)
        targets = [normalise_address(t) for t in targets]
        domain = source.rpartition("@")[2]
        if not self.is_local_domain(domain):
            raise AccountsFileError(f"{source}: {domain} is not one of the local domains ({', '.join(self.domains)})")
        if not source.startswith("@") and self.user_exists(source):
            raise AccountsFileError(f"{source} is a user; an alias can't have the same address")
        for target in targets:
            if not ADDRESS_RE.match(target):
                raise AccountsFileError(f"bad target address {target!r}")
        with locked(self.aliases_file):
            self._aliases._stamp = None
            current = dict(self._aliases.get())
            merged = tuple(dict.fromkeys(current.get(source, ()) + tuple(targets)))
            lines = [l for l in self._read_lines(self.aliases_file)
                     if normalise_address(l.split("#", 1)[0].partition(":")[0]) != source or not l.split("#", 1)[0].strip()]
            lines.append(f"{source}: {', '.join(merged)}")
            parse_aliases(self.aliases_file, "\n".join(lines))
            write_lines(self.aliases_file, lines, 0o644)

    def delete_alias(self, source: str, targets: list[str] | None = None) -> None:
        source = normalise_address(source)
        with locked(self.aliases_file):
            self._aliases._stamp = None
            current = dict(self._aliases.get())
            if source not in current:
                raise AccountsFileError(f"{self.aliases_file}: no alias {source}")
            remaining = [t for t in current[source] if targets and t not in {normalise_address(x) for x in targets}]
            lines = [l for l in self._read_lines(self.aliases_file)
                     if normalise_address(l.split("#", 1)[0].partition(":")[0]) != source or not l.split("#", 1)[0].strip()]
            if remaining:
                lines.append(f"{source}: {', '.join(remaining)}")
            write_lines(self.aliases_file, lines, 0o644)

    def _check_new_address(self, user: str) -> None:
        if not ADDRESS_RE.match(user):
            raise AccountsFileError(f"{user!r} is not a valid address (expected name@domain)")
        if not USER_RE.match(user):
            raise AccountsFileError(f"{user}: a user name can't contain '/' or start with '.' (it names a directory)")
        domain = user.rpartition("@")[2]
        if not self.is_local_domain(domain):
            raise AccountsFileError(f"{user}: {domain} is not one of the local domains "
                                    f"({', '.join(self.domains)}); add it to 'domains' in the config")
        if self.plus_addressing and self.delimiter in user.partition("@")[0]:
            raise AccountsFileError(f"{user}: user names can't contain the recipient delimiter {self.delimiter!r}")

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []


def _deferLater(reactor: Any, delay: float, value: Any) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    if delay <= 0:
        d.callback(value)
    else:
        reactor.callLater(delay, d.callback, value)
    return d


_dummy: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against for unknown users, made once, lazily."""
    if not _dummy:
        _dummy.append(hash_password("mailsuite-timing-equaliser"))
    return _dummy[0]
