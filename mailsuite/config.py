"""TOML configuration → frozen, typed settings with built-in defaults.

Every key has a default, so the server runs without a config file. Errors name the file, the line (found by
looking for the key under its ``[section]``) and the key: ``ConfigError("etc/m.toml:12: smtp.max_recipients:
expected an integer, got 'many'")``.  ``etc/mailsuite.toml`` documents every key; keep it in step with the
``_SCHEMA`` below.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Settings", "load_settings", "default_settings", "SERVICES", "IMPLICIT_TLS"]

#: listener names, in the order the server starts them
SERVICES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
#: services on which mailsuite itself wraps the endpoint in TLS (RFC 8314 implicit TLS)
IMPLICIT_TLS = frozenset({"submissions", "pop3s", "imaps"})
DEFAULT_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "pop3": 110, "pop3s": 995,
                 "imap": 143, "imaps": 993}


class ConfigError(Exception):
    """A bad configuration; the message names file, line and key."""


def _default_hostname() -> str:
    name = socket.getfqdn() or socket.gethostname() or "localhost"
    return name.lower().rstrip(".") or "localhost"


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/mailsuite")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mailsuite"


@dataclass(frozen=True)
class ListenSettings:
    smtp: tuple[str, ...] = ("tcp:25",)
    submission: tuple[str, ...] = ("tcp:587",)
    submissions: tuple[str, ...] = ("tcp:465",)
    pop3: tuple[str, ...] = ("tcp:110",)
    pop3s: tuple[str, ...] = ("tcp:995",)
    imap: tuple[str, ...] = ("tcp:143",)
    imaps: tuple[str, ...] = ("tcp:993",)


@dataclass(frozen=True)
class TLSSettings:
    cert: Path | None = None      # PEM chain, leaf first (e.g. Let's Encrypt fullchain.pem)
    key: Path | None = None       # PEM private key


@dataclass(frozen=True)
class AuthSettings:
    allow_plaintext_loopback: bool = False
    max_failures: int = 3
    failure_delay: float = 2.0


@dataclass(frozen=True)
class AccountSettings:
    plus_addressing: bool = True
    recipient_delimiter: str = "+"


@dataclass(frozen=True)
class SMTPSettings:
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_received_headers: int = 50
    max_line_length: int = 8192
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections_per_ip: int = 20
    vrfy: str = "252"
    sender_must_match: bool = True


@dataclass(frozen=True)
class POP3Settings:
    mark_seen_on_retr: bool = True
    timeout: float = 600.0
    max_connections_per_ip: int = 20


@dataclass(frozen=True)
class IMAPSettings:
    timeout: float = 1800.0
    max_literal_size: int = 50 * 1024 * 1024
    quota_bytes: int = 0
    max_connections_per_ip: int = 20


@dataclass(frozen=True)
class RelaySettings:
    smarthost: str = ""
    smarthost_port: int = 587
    smarthost_tls: str = "starttls"
    smarthost_user: str = ""
    smarthost_password: str = ""
    port: int = 25
    resolvers: tuple[str, ...] = ()
    starttls: str = "opportunistic"
    require_tls_domains: tuple[str, ...] = ()
    first_retry: float = 300.0
    max_retry_interval: float = 3600.0
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0
    max_concurrency: int = 10
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 120.0
    data_end_timeout: float = 600.0
    data_block_timeout: float = 180.0
    smarthost_verify: bool = True
    smarthost_ca_file: str = ""
    max_per_destination: int = 2
    max_messages_per_connection: int = 100
    max_recipients_per_transaction: int = 50
    scan_interval: float = 5.0
    ipv6: bool = True
    local_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    hostname: str = field(default_factory=_default_hostname)
    domains: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=_default_data_dir)
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    pop3: POP3Settings = field(default_factory=POP3Settings)
    imap: IMAPSettings = field(default_factory=IMAPSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    source: str = "<built-in defaults>"

    @property
    def users_file(self) -> Path:
        return self.data_dir / "users"

    @property
    def aliases_file(self) -> Path:
        return self.data_dir / "aliases"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"


SECTIONS: dict[str, type] = {
    "listen": ListenSettings, "tls": TLSSettings, "auth": AuthSettings, "accounts": AccountSettings,
    "smtp": SMTPSettings, "pop3": POP3Settings, "imap": IMAPSettings, "relay": RelaySettings,
}
TOP_KEYS = ("hostname", "domains", "data_dir")

_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_ENDPOINT_TYPES = {"tcp", "tcp6", "unix", "systemd", "ssl"}


class _Located:
    """Finds the line of ``key`` inside ``[section]`` in the raw TOML text (1-based, or None)."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, section: str | None, key: str | None) -> int | None:
        current: str | None = None
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
            if header:
                current = header.group(1)
                if key is None and current == section:
                    return number
                continue
            if key is not None and current == section and re.match(rf"^{re.escape(key)}\s*=", line):
                return number
        return None

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        line = self.line_of(section, key)
        where = f"{self.path}:{line}" if line else self.path
        dotted = ".".join(p for p in (section, key) if p)
        return ConfigError(f"{where}: {dotted}: {message}")


def _check_endpoint(value: str) -> str | None:
    """Return an error text for a malformed Twisted server endpoint string, else None."""
    kind = value.split(":", 1)[0]
    if kind not in _ENDPOINT_TYPES:
        return f"unknown endpoint type {kind!r} in {value!r} (use tcp:, tcp6:, unix:, systemd:)"
    if kind in ("tcp", "tcp6"):
        parts = value.split(":")
        port = next((p for p in parts[1:] if "=" not in p), None)
        kw = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        port = kw.get("port", port)
        if port is None or not port.isdigit() or not 0 <= int(port) <= 65535:
            return f"bad port in endpoint {value!r} (expected tcp:PORT[:interface=ADDR])"
    if kind == "ssl":
        return (f"{value!r}: give a plain tcp: endpoint; mailsuite applies TLS itself on the implicit-TLS "
                "services with the [tls] certificate")
    return None


def _coerce(loc: _Located, section: str | None, key: str, default: Any, value: Any) -> Any:
    """Check ``value`` against the type of ``default`` and convert it."""
    def bad(expected: str) -> ConfigError:
        return loc.error(section, key, f"expected {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if value < 0:
            raise loc.error(section, key, f"must not be negative, got {value}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if value < 0:
            raise loc.error(section, key, f"must not be negative, got {value}")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if isinstance(default, Path) or (default is None and key in ("cert", "key")):
        if not isinstance(value, str):
            raise bad("a path string")
        return Path(value).expanduser() if value else None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise bad(type(default).__name__)  # pragma: no cover - schema error


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("smtp", "vrfy"): ("252", "502"),
    ("relay", "smarthost_tls"): ("starttls", "implicit"),
    ("relay", "starttls"): ("opportunistic", "required", "off"),
}
_POSITIVE = {("auth", "max_failures"), ("smtp", "max_message_size"), ("smtp", "max_recipients"),
             ("smtp", "max_line_length"), ("smtp", "max_connections_per_ip"), ("smtp", "command_timeout"),
             ("smtp", "data_timeout"), ("pop3", "timeout"), ("imap", "timeout"), ("imap", "max_literal_size"),
             ("imap", "max_connections_per_ip"), ("pop3", "max_connections_per_ip"), ("relay", "max_concurrency"),
             ("relay", "max_per_destination"), ("relay", "max_messages_per_connection"),
             ("relay", "max_recipients_per_transaction"), ("relay", "scan_interval"),
             ("relay", "connect_timeout"), ("relay", "command_timeout"), ("relay", "data_timeout"),
             ("relay", "data_end_timeout"), ("relay", "data_block_timeout")}


def _build_section(loc: _Located, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise loc.error(None, name, "expected a [section] table")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise loc.error(name, key, f"unknown key (known keys: {', '.join(sorted(known))})")
        values[key] = _coerce(loc, name, key, getattr(defaults, key), value)
        choices = _CHOICES.get((name, key))
        if choices and values[key] not in choices:
            raise loc.error(name, key, f"must be one of {', '.join(choices)}, got {value!r}")
        if (name, key) in _POSITIVE and values[key] <= 0:
            raise loc.error(name, key, f"must be greater than 0, got {value!r}")
    if name == "listen":
        for key, endpoints in values.items():
            for endpoint in endpoints:
                problem = _check_endpoint(endpoint)
                if problem:
                    raise loc.error(name, key, problem)
    if name == "accounts" and "recipient_delimiter" in values:
        delim = values["recipient_delimiter"]
        if len(delim) != 1 or delim.isalnum() or delim in "@.\"\\ ":
            raise loc.error(name, "recipient_delimiter", f"must be one punctuation character such as '+' or '-', got {delim!r}")
    return cls(**values)


def _validate_files(loc: _Located, settings: Settings) -> None:
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        raise loc.error("tls", "cert" if tls.cert is None else "key", "tls.cert and tls.key must be given together")
    for key in ("cert", "key"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            raise loc.error("tls", key, f"file not found: {path}")
    if settings.relay.smarthost and not _HOST_RE.match(settings.relay.smarthost.lower()) \
            and not re.match(r"^[0-9.:]+$", settings.relay.smarthost):
        raise loc.error("relay", "smarthost", f"not a host name: {settings.relay.smarthost!r}")


def parse_settings(text: str, path: str = "<string>") -> Settings:
    """Parse TOML text into Settings, raising ConfigError naming path, line and key."""
    loc = _Located(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{match.group(1)}" if match else path
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            kwargs[key] = _build_section(loc, key, SECTIONS[key], value)
        elif key == "hostname":
            if not isinstance(value, str) or not _HOST_RE.match(value.lower().rstrip(".")):
                raise loc.error(None, key, f"not a valid host name: {value!r}")
            kwargs[key] = value.lower().rstrip(".")
        elif key == "domains":
            domains = _coerce(loc, None, key, (), value)
            for domain in domains:
                if not _HOST_RE.match(domain.lower().rstrip(".")):
                    raise loc.error(None, key, f"not a valid domain: {domain!r}")
            kwargs[key] = tuple(d.lower().rstrip(".") for d in domains)
        elif key == "data_dir":
            if not isinstance(value, str) or not value:
                raise loc.error(None, key, f"expected a directory path, got {value!r}")
            kwargs[key] = Path(value).expanduser()
        else:
            known = ", ".join(list(TOP_KEYS) + [f"[{s}]" for s in SECTIONS])
            raise loc.error(None, key, f"unknown key (known: {known})")
    settings = Settings(source=path, **kwargs)
    if not settings.domains:
        settings = _replace(settings, domains=(settings.hostname,) if "." in settings.hostname else ("localhost",))
    _validate_files(loc, settings)
    return settings


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace
    return replace(settings, **changes)


def default_settings() -> Settings:
    """The built-in defaults (no config file)."""
    return parse_settings("", "<built-in defaults>")


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Load a TOML config file, or the built-in defaults when ``path`` is None."""
    if path is None:
        return default_settings()
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: config file is not valid UTF-8") from None
    return parse_settings(text, name)
