"""``mailsuite``: the admin command — users, aliases, the outbound queue, DNS records and config checks.

It works on the same files as the running server (the users and aliases files, the store, the queue
directory); the server notices the changes without a restart.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from pathlib import Path
from typing import Callable

from .accounts import Accounts, AccountsFileError
from .accounts.files import normalise_address
from .config import ConfigError, Settings, load_settings
from .store.errors import StoreError

__all__ = ["main"]


class CLIError(Exception):
    """A clear error for the user; printed as one line, exit status 1."""


def _settings(args: argparse.Namespace) -> Settings:
    from .service import config_path
    return load_settings(config_path(args.config))


def _match_owner(path: Path, reference: Path) -> None:
    """When root edits the data directory, give new files to the data directory's owner (the server user)."""
    if os.geteuid() != 0 or not reference.exists():
        return
    st = reference.stat()
    for root, dirs, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
        for entry in [root, *(os.path.join(root, n) for n in dirs + files)] if path.is_dir() else \
                [os.path.join(root, n) for n in files]:
            if os.lstat(entry).st_uid != st.st_uid:
                os.lchown(entry, st.st_uid, st.st_gid)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal to ask for the password; use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CLIError("the passwords differ; nothing changed")
    if len(password) < 8:
        raise CLIError("the password must be at least 8 characters long")
    return password


def _accounts(settings: Settings) -> Accounts:
    return Accounts.from_settings(settings)


def cmd_user(args: argparse.Namespace) -> int:
    settings = _settings(args)
    accounts = _accounts(settings)
    if args.action == "list":
        for user in accounts.users():
            print(user)
        return 0
    if args.action == "add":
        password = _read_password(args)
        user = normalise_address(args.address)
        accounts.add_user(user, password, args.scheme)
        from .store import Store
        store = Store(settings.mail_dir)
        store.create_user(user)
        _match_owner(settings.data_dir, settings.data_dir)
        print(f"added {user}")
    elif args.action == "passwd":
        if not accounts.user_exists(args.address):
            raise CLIError(f"no user {args.address}")
        accounts.set_password(args.address, _read_password(args), args.scheme)
        print(f"password changed for {args.address.lower()}")
    elif args.action == "del":
        accounts.delete_user(args.address)
        print(f"deleted {args.address.lower()} (the mail stays in {settings.mail_dir}; remove it by hand)")
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    settings = _settings(args)
    accounts = _accounts(settings)
    if args.action == "list":
        for source, targets in sorted(accounts.aliases().items()):
            print(f"{source}: {', '.join(targets)}")
        return 0
    if args.action == "add":
        if not args.targets:
            raise CLIError("alias add needs at least one target address")
        accounts.add_alias(args.source, args.targets)
        print(f"{args.source.lower()} -> {', '.join(t.lower() for t in args.targets)}")
    elif args.action == "del":
        accounts.delete_alias(args.source, args.targets or None)
        print(f"removed {args.source.lower()}" + (f" -> {', '.join(args.targets)}" if args.targets else ""))
    _match_owner(settings.aliases_file, settings.data_dir)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .service import config_path
    path = args.path or config_path(args.config)
    settings = load_settings(path)
    _accounts_check(settings)
    if settings.tls.cert is not None:
        from .tls import TLSError, TLSManager
        try:
            TLSManager(settings.tls.cert, settings.tls.key, data_dir=settings.data_dir, names=[settings.hostname])
        except TLSError as exc:
            raise CLIError(str(exc)) from None
    print(f"{settings.source}: OK (hostname {settings.hostname}, domains {', '.join(settings.domains)}, "
          f"data directory {settings.data_dir})")
    return 0


def _accounts_check(settings: Settings) -> None:
    if settings.users_file.exists() or settings.aliases_file.exists():
        _accounts(settings)


def cmd_dns(args: argparse.Namespace) -> int:
    settings = _settings(args)
    host = settings.hostname
    print("; DNS records for mailsuite (replace 203.0.113.1 / 2001:db8::1 by this server's public addresses)")
    print(f"{host}.\tIN A\t203.0.113.1")
    print(f"{host}.\tIN AAAA\t2001:db8::1")
    for domain in settings.domains:
        print(f"{domain}.\tIN MX\t10 {host}.")
        print(f"{domain}.\tIN TXT\t\"v=spf1 mx -all\"")
        print(f"_dmarc.{domain}.\tIN TXT\t\"v=DMARC1; p=none\"")
        print(f"autoconfig.{domain}.\tIN CNAME\t{host}.")
        print(f"_submissions._tcp.{domain}.\tIN SRV\t0 1 465 {host}.   ; RFC 6186 / 8314")
        print(f"_imaps._tcp.{domain}.\tIN SRV\t0 1 993 {host}.")
        print(f"_pop3s._tcp.{domain}.\tIN SRV\t10 1 995 {host}.")
    print(f"; and a PTR record for 203.0.113.1 pointing to {host}. (ask your provider)")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        admin = importlib.import_module("mailsuite.relay.admin")
    except ModuleNotFoundError:
        raise CLIError("the relay queue is not part of this build") from None
    return int(admin.run(settings, args.action, args.id) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailsuite", description="mailsuite admin command")
    parser.add_argument("-c", "--config", help="config file (default: /etc/mailsuite/mailsuite.toml if present)")
    sub = parser.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="add, change, delete and list users")
    user_sub = user.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user"), ("passwd", "change a password"), ("del", "delete a user")):
        p = user_sub.add_parser(action, help=text)
        p.add_argument("address")
        if action != "del":
            p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
            p.add_argument("--scheme", default="ARGON2ID", choices=["ARGON2ID", "SCRYPT"], type=str.upper)
    user_sub.add_parser("list", help="list users")
    user.set_defaults(func=cmd_user)

    alias = sub.add_parser("alias", help="add, delete and list aliases (source @domain is a catch-all)")
    alias_sub = alias.add_subparsers(dest="action", required=True)
    p = alias_sub.add_parser("add", help="alias SOURCE to one or more TARGETs")
    p.add_argument("source")
    p.add_argument("targets", nargs="+")
    p = alias_sub.add_parser("del", help="remove an alias, or some of its targets")
    p.add_argument("source")
    p.add_argument("targets", nargs="*")
    alias_sub.add_parser("list", help="list aliases")
    alias.set_defaults(func=cmd_alias)

    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("path", nargs="?")
    check.set_defaults(func=cmd_check_config)

    dns = sub.add_parser("dns", help="print the DNS records the domains need")
    dns.set_defaults(func=cmd_dns)

    queue = sub.add_parser("queue", help="the outbound queue: list, flush [id], delete id, bounce id")
    queue.add_argument("action", choices=["list", "flush", "delete", "bounce"])
    queue.add_argument("id", nargs="?")
    queue.set_defaults(func=cmd_queue)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, AccountsFileError, CLIError) as exc:
        print(f"mailsuite: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # a data directory that is a file, a read-only disk, no permission: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mailsuite: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"mailsuite: mail store: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
