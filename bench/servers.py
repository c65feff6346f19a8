"""The servers a benchmark talks to: mailsuite, and its peers Postfix and Dovecot.

Every server runs on 127.0.0.1, on free non-standard ports, from its own private configuration and
directories under the run's work directory; nothing under /etc is written and no system instance is
started.  The peers get the same durability as mailsuite: Postfix fsyncs its queue file before 250 (its
default) and Dovecot is run with ``mail_fsync = always``.
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DOMAIN = "bench.test"
PASSWORD = "bench-pw"
#: never used by a benchmark: the standard mail ports
STANDARD_PORTS = frozenset({25, 110, 143, 465, 587, 993, 995})
MAIL_UID = MAIL_GID = 65534  # nobody/nogroup: owns the peers' mail (Dovecot refuses root)
UID_BASE = 40000             # Dovecot users with a uid each (IDLE workload): 40000 + i, no passwd entry


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in STANDARD_PORTS:
            return port


def wait_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def user_name(i: int) -> str:
    return f"u{i}@{DOMAIN}"


_HASH: str | None = None


def password_hash() -> str:
    """One bcrypt hash (cost 4) shared by every benchmark user: both servers verify the same scheme, and
    setting up 2000 users costs no more than a moment."""
    global _HASH
    if _HASH is None:
        import bcrypt
        _HASH = "{BLF-CRYPT}" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    return _HASH


def maildir(base: Path, owner: tuple[int, int] | None = None) -> Path:
    """Make ``base/{cur,new,tmp}`` (and its parents up to the mail root)."""
    for sub in ("cur", "new", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if owner:
        for path in (base.parent, base, base / "cur", base / "new", base / "tmp"):
            os.chown(path, *owner)
    return base


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_tree_kib(root_pid: int) -> int:
    """Proportional set size (shared pages split between sharers) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def cpu_tree_seconds(root_pid: int | None) -> float:
    """CPU time (user + system) used so far by a process and all its descendants, reaped ones included
    (each live process counts its own time and that of the children it has waited for)."""
    if not root_pid:
        return 0.0
    time.sleep(0.3)  # let a process that just ended be reaped, so its time shows in its parent's cutime
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    ticks, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        fields = stats.get(pid)
        if fields:  # after ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


# -- installation -------------------------------------------------------------------------------------
def install_peers() -> None:
    """apt-get install postfix, dovecot-imapd, dovecot-pop3d, dovecot-lmtpd (as root) if missing.  Postfix is preseeded to
    "No configuration", so no system instance is configured or started."""
    if shutil.which("postfix") and shutil.which("dovecot") and Path("/usr/lib/dovecot/imap").exists() \
            and Path("/usr/lib/dovecot/pop3").exists() and Path("/usr/lib/dovecot/lmtp").exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("bench: installing postfix/dovecot needs root (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                   text=True, check=True)
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix", "dovecot-imapd", "dovecot-pop3d",
                    "dovecot-lmtpd"], env=env, check=True)


# -- mailsuite ----------------------------------------------------------------------------------------
class Mailsuite:
    """``twistd -n mailsuite --config <work>/mailsuite.toml`` with only the services a workload needs."""

    name = "mailsuite"
    #: set by ``run.py --tracemalloc DIR``: run under traced_twistd.py, memory snapshots land in DIR
    tracemalloc_dir: Path | None = None

    def __init__(self, work: Path, services: tuple[str, ...]) -> None:
        self.dir = work / "mailsuite"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.config = self.dir / "mailsuite.toml"
        self.logfile = self.dir / "server.log"
        self.ports = {name: free_port() for name in services}
        self.available: dict[str, bool] = {}
        self.proc: subprocess.Popen | None = None
        listen = "\n".join(f'{name} = ["tcp:{port}:interface={HOST}"]' for name, port in self.ports.items())
        off = "\n".join(f"{name} = []" for name in ("smtp", "submission", "submissions", "pop3", "pop3s",
                                                    "imap", "imaps") if name not in self.ports)
        self.config.write_text(f"""
hostname = "mail.{DOMAIN}"
domains = ["{DOMAIN}"]
data_dir = "{self.data_dir}"

[listen]
{listen}
{off}

[auth]
allow_plaintext_loopback = true

{self._limits()}""")

    @staticmethod
    def _limits() -> str:
        """Per-IP connection limits raised (every client is 127.0.0.1), for the sections that have the key
        in this version of mailsuite (an unknown key would stop the server)."""
        sys.path.insert(0, str(REPO))
        try:
            from dataclasses import fields
            from mailsuite import config
        finally:
            sys.path.remove(str(REPO))
        out = []
        for section, cls in (("smtp", "SMTPSettings"), ("pop3", "POP3Settings"), ("imap", "IMAPSettings")):
            klass = getattr(config, cls, None)
            if klass is not None and "max_connections_per_ip" in {f.name for f in fields(klass)}:
                out.append(f"[{section}]\nmax_connections_per_ip = 100000\n")
        return "\n".join(out)

    def mail_root(self) -> Path:
        return self.data_dir / "mail" / DOMAIN

    def user_maildir(self, i: int) -> Path:
        return self.mail_root() / f"u{i}"

    def add_users(self, count: int) -> None:
        """Write the users file directly (the same ``user:{SCHEME}hash`` lines ``mailsuite user add``
        writes) and make each INBOX."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        line = password_hash()
        users = self.data_dir / "users"
        users.write_text("".join(f"{user_name(i)}:{line}\n" for i in range(count)))
        users.chmod(0o600)
        for i in range(count):
            maildir(self.user_maildir(i))

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(self.logfile, "ab")
        runner = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        self.snapshots = 0
        if self.tracemalloc_dir is not None:
            self.tracemalloc_dir.mkdir(parents=True, exist_ok=True)
            self.trace_out = self.tracemalloc_dir / f"{self.dir.parent.name}.txt"
            runner = [sys.executable, str(Path(__file__).with_name("traced_twistd.py")), str(self.trace_out)]
        self.proc = subprocess.Popen(
            [*runner, "--nodaemon", "--pidfile=", "--logfile=-", "mailsuite", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.dir))
        log.close()
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            for name, port in list(pending.items()):
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                    self.available[name] = True
                    del pending[name]
                except OSError:
                    if f"{name}: not available" in self.log_text():
                        self.available[name] = False
                        del pending[name]
            time.sleep(0.05)
        for name in pending:
            self.available[name] = False

    def port(self, service: str) -> int:
        return self.ports[service]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def has(self, service: str) -> bool:
        return self.available.get(service, False) and self.proc is not None and self.proc.poll() is None

    def why_not(self, service: str) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_text().strip().splitlines()[-1:] or ["?"]
            return f"mailsuite exited ({self.proc.returncode}): {tail[0][:120]}"
        return f"mailsuite {service} not available"

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def snapshot_memory(self) -> Path | None:
        """With ``--tracemalloc``: have the server write its top allocation sites (copied to ``<out>.N``)."""
        if self.tracemalloc_dir is None or self.proc is None or self.proc.poll() is not None:
            return None
        before = self.trace_out.stat().st_mtime_ns if self.trace_out.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.trace_out.exists() and self.trace_out.stat().st_mtime_ns != before:
                time.sleep(0.5)  # let the writer finish
                self.snapshots += 1
                copy = self.trace_out.with_suffix(f".{self.snapshots}.txt")
                shutil.copyfile(self.trace_out, copy)
                return copy
            time.sleep(0.1)
        return None

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- Postfix ------------------------------------------------------------------------------------------
_POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance (``postfix -c <dir>``): its own config_directory, queue_directory and
    data_directory, smtpd on 127.0.0.1:<port>, virtual(8) delivery into Maildirs owned by nobody.
    Everything else is Postfix's default, including the queue-file fsync before 250."""

    name = "postfix"

    def __init__(self, work: Path) -> None:
        self.dir = work / "postfix"
        self.etc, self.queue, self.data = self.dir / "etc", self.dir / "queue", self.dir / "data"
        self.vmail = self.dir / "vmail"
        self.logfile = self.dir / "postfix.log"
        self.port = free_port()
        self.users = 0

    def user_maildir(self, i: int) -> Path:
        return self.vmail / f"u{i}"

    def add_users(self, count: int) -> None:
        self.users = count

    def start(self) -> None:
        for path in (self.etc, self.queue, self.data, self.vmail):
            path.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        os.chown(self.data, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)
        self.data.chmod(0o700)
        os.chown(self.vmail, MAIL_UID, MAIL_GID)
        (self.etc / "vmailbox").write_text("".join(f"{user_name(i)} u{i}/\n" for i in range(self.users)))
        (self.etc / "master.cf").write_text(f"{HOST}:{self.port} inet n - n - - smtpd\n" + _POSTFIX_SERVICES)
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
config_directory = {self.etc}
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.{DOMAIN}
mydomain = {DOMAIN}
mydestination =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {self.logfile}
maillog_file_prefixes = {self.dir}
smtp_dns_support_level = disabled
biff = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.vmail}
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_uid_maps = static:{MAIL_UID}
virtual_gid_maps = static:{MAIL_GID}
smtpd_banner = $myhostname ESMTP
""")
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["postfix", "-c", str(self.etc), "check"], **quiet)  # makes the queue directories
        result = subprocess.run(["postfix", "-c", str(self.etc), "start"], **quiet)
        if result.returncode != 0 or not wait_port(self.port):
            raise RuntimeError(f"postfix did not start (exit {result.returncode}): {self.log_tail()}")

    def log_tail(self) -> str:
        return self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = self.master_pid()
        deadline = time.monotonic() + 15
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


# -- Dovecot ------------------------------------------------------------------------------------------
class Dovecot:
    """A private Dovecot instance (``dovecot -c <conf>``): own base_dir/state_dir/log, IMAP, POP3 and LMTP
    on 127.0.0.1:<ports>, a passwd-file of the same bcrypt hashes, Maildir store owned by nobody,
    ``mail_fsync = always``."""

    name = "dovecot"

    def __init__(self, work: Path, max_sessions: int = 200, uid_per_user: bool = False) -> None:
        self.uid_per_user = uid_per_user
        self.dir = work / "dovecot"
        self.conf = self.dir / "dovecot.conf"
        self.mail = self.dir / "mail"
        self.logfile = self.dir / "dovecot.log"
        self.ports = {"imap": free_port(), "pop3": free_port(), "lmtp": free_port()}
        self.max_sessions = max_sessions
        self.users = 0

    def user_maildir(self, i: int) -> Path:
        return self.mail / DOMAIN / f"u{i}"

    def uid(self, i: int) -> int:
        """Mail owner of user i.  With ``uid_per_user`` each user has a uid of its own (as system users
        do): the kernel's per-uid inotify limit (fs.inotify.max_user_instances, often 128) would otherwise
        make Dovecot fall back to polling IDLE every 30 s beyond 128 sessions."""
        return UID_BASE + i if self.uid_per_user else MAIL_UID

    def add_users(self, count: int) -> None:
        self.users = count
        self.mail.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail, MAIL_UID, MAIL_GID)
        (self.mail / DOMAIN).mkdir(exist_ok=True)
        os.chown(self.mail / DOMAIN, MAIL_UID, MAIL_GID)
        for i in range(count):
            maildir(self.user_maildir(i), (self.uid(i), MAIL_GID))
            if self.uid_per_user:
                os.chown(self.user_maildir(i).parent, MAIL_UID, MAIL_GID)

    def start(self) -> None:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        passwd = self.dir / "passwd"
        # Dovecot passwd-file: user:password:uid:gid:gecos:home:shell (also the userdb)
        passwd.write_text("".join(f"{user_name(i)}:{password_hash()}:{self.uid(i)}:{MAIL_GID}::"
                                  f"{self.user_maildir(i)}::\n" for i in range(self.users)))
        passwd.chmod(0o644)
        n = self.max_sessions
        self.conf.write_text(f"""\
protocols = imap pop3 lmtp
listen = {HOST}
base_dir = {self.dir}/run
state_dir = {self.dir}/state
instance_name = mailsuite-bench-dovecot
log_path = {self.logfile}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{self.mail}/%d/%n
mail_fsync = always
mail_save_crlf = yes
first_valid_uid = 100
mail_max_userip_connections = {n + 100}
default_process_limit = {n + 100}
default_client_limit = {2 * n + 1000}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  user = root
  unix_listener lmtp {{
    mode = 0600
  }}
  inet_listener lmtp {{
    address = {HOST}
    port = {self.ports['lmtp']}
  }}
}}
service imap {{
  process_limit = {n + 100}
}}
service anvil {{
  client_limit = {4 * n + 1000}
}}
service auth {{
  client_limit = {4 * n + 1000}
}}
""")
        # the master daemonizes and keeps its stdio: no pipes here, or we would wait for it forever
        with open(self.dir / "start.err", "w") as err:
            result = subprocess.run(["dovecot", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        if result.returncode != 0 or not all(wait_port(p) for p in self.ports.values()):
            raise RuntimeError(f"dovecot did not start: {(self.dir / 'start.err').read_text().strip()} "
                               f"{self.log_tail()}")

    def master_pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pss_kib(self) -> int:
        pid = self.master_pid()
        return pss_tree_kib(pid) if pid else 0

    def log_tail(self) -> str:
        return self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""

    def stop(self) -> None:
        pid = self.master_pid()
        subprocess.run(["dovecot", "-c", str(self.conf), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
