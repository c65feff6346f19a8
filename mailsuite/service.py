"""Builds the one twisted service that runs every listener of mailsuite (used by the twistd plugin).

Ports are bound in ``privilegedStartService`` — before twistd drops to ``--uid/--gid`` — so a root start can
use 25/110/143/465/587/993/995. A port that can't be bound ends the start with one clear line naming the port
and the fix, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from . import __version__
from .accounts import Accounts, AccountsFileError
from .config import IMPLICIT_TLS, SERVICES, Settings
from .context import ServerContext
from .fastaccept import install as fast_accept
from .fastpoll import install as fast_poll
from .memory import limit_malloc_arenas, trim_malloc
from .store.errors import StoreError
from .tls import TLSError, TLSManager

log = Logger()

#: which adapter module serves each listener name (each has ``build_factory(ctx, service)``)
ADAPTERS = {
    "smtp": "mailsuite.smtp.adapter", "submission": "mailsuite.smtp.adapter",
    "submissions": "mailsuite.smtp.adapter",
    "pop3": "mailsuite.pop3.adapter", "pop3s": "mailsuite.pop3.adapter",
    "imap": "mailsuite.imap.adapter", "imaps": "mailsuite.imap.adapter",
}


#: what mailsuite keeps at the top of its data directory (see README "Storage")
OWN_ENTRIES = frozenset({"users", "users.lock", "aliases", "aliases.lock", "mail", "queue", "tls",
                         ".users.lock", ".aliases.lock", "lost+found"})


class StartupError(Exception):
    """Start-up can't go on; the message is the one line shown to the user."""


def build_context(settings: Settings, reactor: Any) -> ServerContext:
    """Create the shared objects: accounts, store, TLS (self-signed certificate on first start)."""
    from .store import Store
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise StartupError(f"mailsuite: data_dir {settings.data_dir} is not a directory; fix data_dir in the config")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys([settings.hostname, *settings.domains,
                                *(f"mail.{d}" for d in settings.domains), "localhost"]))
    tls = TLSManager(settings.tls.cert, settings.tls.key, data_dir=settings.data_dir, names=names)
    accounts = Accounts.from_settings(settings, reactor=reactor)
    store = Store(settings.mail_dir)
    return ServerContext(settings=settings, accounts=accounts, store=store, tls=tls, reactor=reactor)


def _bind_hint(service_name: str, endpoint: str, exc: BaseException) -> str:
    port = endpoint.split(":")[1] if ":" in endpoint else endpoint
    err = getattr(getattr(exc, "socketError", None), "errno", None) or getattr(exc, "errno", None)
    text = str(getattr(exc, "socketError", "") or exc)
    if err == errno.EACCES or "Permission denied" in text:
        fix = ("ports below 1024 need root: start as root (add --uid/--gid to drop privileges) "
               f"or set [listen] {service_name} = [\"tcp:<port above 1024>\"] in the config")
    elif err == errno.EADDRINUSE or "in use" in text:
        fix = ("another program already listens there (is another mail server running? see `ss -ltnp`); "
               f"stop it or set [listen] {service_name} to another port in the config")
    else:
        fix = f"check [listen] {service_name} in the config"
    return f"mailsuite: cannot listen on port {port} for {service_name} ({endpoint}): {text.strip()} - {fix}"


def preload() -> None:
    """Import every mailsuite module now, while still root: after ``--uid`` the Python installation may not be
    readable (e.g. under /root), and a lazy import mid-session would fail there.  Only done when privileges
    will be dropped: otherwise rarely used code (POP3 when not listening, the admin CLI) stays unimported
    and costs no memory."""
    import pkgutil
    import mailsuite
    for info in pkgutil.walk_packages(mailsuite.__path__, "mailsuite."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    from .relay.dns import LAZY_MODULES   # what the relay imports only on first use
    for name in LAZY_MODULES:
        importlib.import_module(name)


#: Seconds between applications of put-off index writes (Store.apply_deferred), which wait while deliveries
#: are being written unless this many are pending.
DEFERRED_WRITE_INTERVAL = 5.0
DEFERRED_WRITE_BACKLOG = 20_000


class MailService(service.MultiService):
    """Every listener of one mailsuite process, plus the relay queue runner."""

    def __init__(self, settings: Settings, reactor: Any = None, *, run_as: tuple[int, int] | None = None,
                 fast_log: bool = False) -> None:
        super().__init__()
        #: twistd logs to standard output: give the application mailsuite.logtext's observer (same lines)
        self.fast_log = fast_log
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.settings, self.reactor, self.run_as = settings, reactor, run_as
        limit_malloc_arenas()      # before the thread pool starts
        self.ctx: ServerContext | None = None
        self.ports: list[tuple[str, str, Any]] = []

    def setServiceParent(self, parent: Any) -> None:
        # twistd passes its application here before it starts logging, and logs to an ILogObserver
        # component of the application if one is set (as a .tac file would set it)
        if self.fast_log:
            from mailsuite.logtext import install
            install(parent)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        fast_poll(self.reactor)        # the epoll reactor without a log context per I/O event
        try:
            if self.run_as is not None:
                preload()
            self.ctx = build_context(self.settings, self.reactor)
            self._start_relay()
            self._bind_all()
            self._own_data_dir()
            self._warn_unreadable_tls()
        except StartupError as exc:
            self._fail(str(exc))
        except (AccountsFileError, TLSError) as exc:
            # a users/aliases file or certificate that can't be used: the message names the file (and line)
            self._fail(f"mailsuite: {exc}")
        except StoreError as exc:
            self._fail(f"mailsuite: mail store {self.settings.mail_dir}: {exc}")
        except OSError as exc:
            # e.g. data_dir is a file, or not writable: name the path and the reason, not a traceback
            where = exc.filename or self.settings.data_dir
            self._fail(f"mailsuite: cannot use {where}: {exc.strerror or exc} (check data_dir in the config and the "
                       "permissions of the data directory)")
        super().privilegedStartService()

    @staticmethod
    def _fail(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        os._exit(1)  # twistd would print a traceback for anything else; the line above is the message

    def _start_relay(self) -> None:
        assert self.ctx is not None
        try:
            relay = importlib.import_module("mailsuite.relay.service")
        except ModuleNotFoundError as exc:
            if exc.name not in ("mailsuite.relay", "mailsuite.relay.service"):
                raise
            return
        relay.attach(self.ctx, self)

    def _factory(self, name: str) -> Any | None:
        module_name = ADAPTERS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                log.warn("{service}: not available in this build ({module} missing)", service=name,
                         module=module_name)
                return None
            raise
        factory = module.build_factory(self.ctx, name)
        if name in IMPLICIT_TLS:
            # RFC 8314 §3.3: implicit TLS on 465/993/995 — TLS starts before any protocol byte.
            assert self.ctx is not None
            factory = TLSMemoryBIOFactory(self.ctx.tls.server_options(), False, factory)
        return factory

    def _bind_all(self) -> None:
        for name in SERVICES:
            endpoint_strings = getattr(self.settings.listen, name)
            if not endpoint_strings:
                continue
            factory = self._factory(name)
            if factory is None:
                continue
            for description in endpoint_strings:
                try:
                    endpoint = endpoints.serverFromString(self.reactor, description)
                except Exception as exc:  # bad systemd index, bad option: name the key
                    hint = ""
                    if description.startswith("systemd:"):
                        hint = (f" (systemd passed {os.environ.get('LISTEN_FDS', 'no')} sockets: start mailsuite "
                                "through its .socket unit, one ListenStream per systemd: endpoint, in order)")
                    raise StartupError(f"mailsuite: [listen] {name}: cannot use endpoint {description!r}: "
                                       f"{exc}{hint}")
                result: list[Any] = []
                endpoint.listen(factory).addBoth(result.append)
                if not result:
                    raise StartupError(f"mailsuite: [listen] {name}: endpoint {description!r} did not bind at once")
                if isinstance(result[0], Failure):
                    raise StartupError(_bind_hint(name, description, result[0].value))
                fast_accept(result[0])     # a plain tcp.Port only (mailsuite/fastaccept.py)
                self.ports.append((name, description, result[0]))

    def _own_data_dir(self) -> None:
        """As root with --uid/--gid: hand the data directory to that user before privileges are dropped."""
        if self.run_as is None or os.geteuid() != 0:
            return
        uid, gid = self.run_as
        top = self.settings.data_dir
        entries = list(top.iterdir())
        if top.stat().st_uid == uid and all(p.lstat().st_uid == uid for p in entries):
            return
        strangers = sorted(p.name for p in entries if p.name not in OWN_ENTRIES)
        if strangers:
            # a mistyped data_dir (say /var) must never be handed over wholesale
            raise StartupError(f"mailsuite: data_dir {top} holds files mailsuite did not make "
                               f"({', '.join(strangers[:5])}); refusing to give it to uid {uid}. "
                               "Point data_dir at a directory of its own, or chown it yourself")
        os.lchown(top, uid, gid)
        for entry in entries:
            os.lchown(entry, uid, gid)
            if entry.is_dir() and not entry.is_symlink():
                for root, dirs, files in os.walk(entry):   # os.walk and lchown never follow symlinks
                    for name in dirs + files:
                        os.lchown(os.path.join(root, name), uid, gid)

    def _warn_unreadable_tls(self) -> None:
        """SIGHUP re-reads the [tls] files after --uid has dropped root: say at start if that user can't read them
        (Let's Encrypt keys are root-only), instead of failing at the first renewal."""
        assert self.ctx is not None
        if self.run_as is None or os.geteuid() != 0 or self.ctx.tls.self_signed:
            return
        import pwd
        uid, gid = self.run_as
        try:
            groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
        except KeyError:
            groups = [gid]
        saved, saved_egid = os.getgroups(), os.getegid()
        unreadable = []
        try:
            os.setgroups(groups)
            os.setegid(gid)
            os.seteuid(uid)
            for path in (self.ctx.tls.cert_path, self.ctx.tls.key_path):
                try:
                    open(path, "rb").close()
                except OSError:
                    unreadable.append(str(path))
        finally:
            os.seteuid(0)
            os.setegid(saved_egid)
            os.setgroups(saved)
        if unreadable:
            log.warn("TLS: {files} not readable by uid {uid}: the certificate in use stays, but SIGHUP can't "
                     "reload renewed files; copy them where that user can read them (e.g. a certbot deploy hook)",
                     files=", ".join(unreadable), uid=uid)

    def startService(self) -> None:
        super().startService()
        assert self.ctx is not None
        self.ctx.store.start_run()         # crash epoch: see Store.start_run and docs/architecture.md
        self.ctx.store.clean_stale_tmp()   # DESIGN §3: stale tmp/ files (a crash mid-delivery) go at start
        self._start_deferred_writer()
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.ctx.tls.reload))
        self._banner()

    def _start_deferred_writer(self) -> None:
        """Every few seconds, in a pool thread, apply the index writes put off for closed indexes
        (Store.apply_deferred): they reach the disk soon and their memory stays bounded."""
        from twisted.internet import task
        store = self.ctx.store
        busy = [False]

        def tick() -> None:
            if busy[0]:
                return
            pending = store.deferred_writes()
            # deliveries first: a burst (bench 7b) is not slowed by reopening indexes next to it
            if not pending or (store.delivering and pending < DEFERRED_WRITE_BACKLOG):
                return
            busy[0] = True

            def done(result: object) -> None:
                busy[0] = False
                if isinstance(result, Failure):
                    log.failure("store: applying put-off index writes", result)
            store.apply_deferred_in_thread().addBoth(done)
        self._deferred_writer = task.LoopingCall(tick)
        self._deferred_writer.clock = self.reactor
        self._deferred_writer.start(DEFERRED_WRITE_INTERVAL, now=False)

    def _banner(self) -> None:
        assert self.ctx is not None
        s = self.settings
        for name, description, port in self.ports:
            host = port.getHost()
            where = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}" if hasattr(host, "port") else str(host)
            log.info("listening: {service:<11} {where} ({description})", service=name, where=where,
                     description=description)
        log.info("data directory: {path}; domains: {domains}", path=str(s.data_dir), domains=", ".join(s.domains))
        if self.ctx.tls.self_signed:
            log.info("TLS: self-signed certificate {path} (set [tls] cert/key for a real one)",
                     path=str(self.ctx.tls.cert_path))
        if not self.ctx.accounts.users():
            config = f" --config {s.source}" if not s.source.startswith("<") else ""
            log.info("no users yet; add the first one with: mailsuite{config} user add you@{domain}",
                     config=config, domain=s.domains[0])
        trim_malloc()
        # the last line of the banner: everything is up (tests/server.py waits for it)
        log.info("mailsuite {version} started (config: {source})", version=__version__, source=s.source)

    def stopService(self) -> defer.Deferred:
        writer = getattr(self, "_deferred_writer", None)
        if writer is not None and writer.running:
            writer.stop()
        stopping = [defer.maybeDeferred(port.stopListening) for _n, _d, port in self.ports]
        self.ports = []
        done = defer.gatherResults(stopping + [defer.maybeDeferred(super().stopService)])

        def close_store(result: object) -> object:
            if self.ctx is not None:
                self.ctx.store.close()   # writes the cached headers back to the index
            return result
        return done.addBoth(close_store)


def config_path(explicit: str | None) -> str | None:
    """The config file to use: the explicit one, else /etc/mailsuite/mailsuite.toml if it exists."""
    if explicit:
        return explicit
    default = Path(os.environ.get("MAILSUITE_CONFIG", "/etc/mailsuite/mailsuite.toml"))
    return str(default) if default.is_file() else None
