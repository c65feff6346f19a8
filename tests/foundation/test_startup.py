"""The real server: install, start on loopback, listen, stop on SIGTERM; clear errors for bad configs and ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server import REPO, TWISTD, MailServer, env


def test_starts_listens_and_stops_on_sigterm(mailserver: MailServer) -> None:
    mailserver.start()
    log = mailserver.log_text()
    assert "started" in log and "data directory: " + str(mailserver.data_dir) in log
    assert "no users yet; add the first one with: mailsuite --config" in log
    for service in ("smtp", "submission", "pop3", "imap"):
        assert f"listening: {service}" in log
    # implicit TLS on 465/993/995 with the self-signed certificate made on first start
    context = ssl.create_default_context(cafile=str(mailserver.data_dir / "tls" / "selfsigned-cert.pem"))
    context.check_hostname = False
    for service in ("submissions", "imaps", "pop3s"):
        with socket.create_connection(("127.0.0.1", mailserver.port(service)), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="mail.example.org") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # twistd re-raises SIGTERM after a clean shutdown, so the status is -SIGTERM (or 0 on older Twisted)
    assert mailserver.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down." in mailserver.log_text() and "Traceback" not in mailserver.log_text()


def test_tls_refuses_old_protocols(mailserver: MailServer) -> None:
    mailserver.start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
    except ValueError:
        pass
    with socket.create_connection(("127.0.0.1", mailserver.port("imaps")), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw).do_handshake()


def wait_started(proc: subprocess.Popen, srv: MailServer) -> None:
    """Until the banner's last line is in ``srv.logfile`` (ports accept connections before that, and a
    SIGTERM sent before twistd's handlers are in place kills the process without a clean stop)."""
    deadline = time.monotonic() + 30
    while " started (config: " not in srv.log_text():
        assert proc.poll() is None and time.monotonic() < deadline, srv.log_text()
        time.sleep(0.1)


def run_twistd(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TWISTD, "--nodaemon", "--pidfile=", "mailsuite", "--config",
                           str(config)], capture_output=True, text=True, env=env(), cwd=str(cwd), timeout=60)


@pytest.mark.parametrize("body, key", [
    ("[smtp]\nmax_recipients = \"lots\"\n", "smtp.max_recipients"),
    ("[listen]\nimap = [\"tcp:notaport\"]\n", "listen.imap"),
    ("[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n", "tls.cert"),
    ("[imap]\nmax_literal = 5\n", "imap.max_literal"),
])
def test_bad_config_exits_naming_the_key(tmp_path: Path, body: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n' + body)
    result = run_twistd(config, tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{config}:" in output and key in output and "Traceback" not in output
    check = subprocess.run([sys.executable, "-m", "mailsuite", "check-config", str(config)], capture_output=True,
                           text=True, env=env(), cwd=str(tmp_path))
    assert check.returncode == 1 and key in check.stderr and f"{config}:" in check.stderr


def test_check_config_accepts_a_good_file(mailserver: MailServer) -> None:
    result = mailserver.cli("check-config", str(mailserver.config))
    assert result.returncode == 0 and "OK" in result.stdout


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        srv = MailServer(tmp_path, services=("pop3",))
        srv.config.write_text(srv.config.read_text().replace(f"tcp:{srv.port('pop3')}:", f"tcp:{port}:"))
        result = run_twistd(srv.config, tmp_path)
    finally:
        blocker.close()
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and "Traceback" not in output
    line = [l for l in output.splitlines() if "cannot listen" in l]
    assert len(line) == 1 and f"port {port}" in line[0] and "pop3" in line[0] and "config" in line[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, low ports can be bound")
def test_low_port_without_root_says_how_to_fix(tmp_path: Path) -> None:
    srv = MailServer(tmp_path, services=("smtp",))
    srv.config.write_text(srv.config.read_text().replace(f"tcp:{srv.port('smtp')}:", "tcp:25:"))
    output = run_twistd(srv.config, tmp_path)
    assert "port 25" in output.stderr and "root" in output.stderr


def test_cli_users_and_aliases(mailserver: MailServer) -> None:
    mailserver.add_user("alice@example.org", "alice-password")
    assert mailserver.cli("user", "list").stdout.split() == ["alice@example.org"]
    assert (mailserver.maildir("alice@example.org") / "new").is_dir()
    for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (mailserver.maildir("alice@example.org", folder) / "cur").is_dir(), folder
    short = mailserver.cli("user", "add", "bob@example.org", "--password-stdin", input="short\n")
    assert short.returncode == 1 and "at least 8" in short.stderr
    mailserver.add_alias("info@example.org", "alice@example.org", "friend@elsewhere.com")
    assert mailserver.cli("alias", "list").stdout.strip() == "info@example.org: alice@example.org, friend@elsewhere.com"
    bad = mailserver.cli("alias", "add", "x@notours.com", "alice@example.org")
    assert bad.returncode == 1 and "not one of the local domains" in bad.stderr
    assert mailserver.cli("user", "del", "alice@example.org").returncode == 0
    assert mailserver.cli("user", "list").stdout.strip() == ""
    dns = mailserver.cli("dns").stdout
    assert "example.org.\tIN MX\t10 mail.example.org." in dns


def test_user_added_while_running_can_log_in(mailserver: MailServer) -> None:
    """Admin changes reach the running server without a restart."""
    import poplib
    srv = MailServer(mailserver.dir / "plain", allow_plaintext_loopback=True, services=("pop3",))
    srv.start()
    try:
        srv.add_user("carol@example.org", "carol-password")
        pop = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
        pop.user("carol@example.org")
        assert pop.pass_("carol-password").startswith(b"+OK")
        pop.quit()
    finally:
        srv.stop()


def test_installed_package_provides_plugin_and_command(tmp_path: Path) -> None:
    """A regular (non-editable) install into a fresh venv: `twistd mailsuite` and `mailsuite` work from anywhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", str(REPO)], capture_output=True, text=True, env=clean_env,
                         cwd=str(tmp_path), timeout=300)
    assert pip.returncode == 0, pip.stderr
    twistd = [str(venv / "bin" / "python"), "-c", "from twisted.scripts.twistd import run; run()"]
    helptext = subprocess.run([*twistd, "--help"], capture_output=True, text=True,
                              env=clean_env, cwd=str(tmp_path), timeout=60).stdout
    assert "mailsuite" in helptext
    srv = MailServer(tmp_path / "run", services=("smtp", "imap"))
    with open(srv.logfile, "wb") as logfile:
        proc = subprocess.Popen([*twistd, "-n", "--pidfile=", "mailsuite", "--config", str(srv.config)],
                                stdout=logfile, stderr=subprocess.STDOUT, env=clean_env, cwd=str(tmp_path))
    try:
        wait_started(proc, srv)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    out = srv.log_text()
    assert proc.returncode in (0, -signal.SIGTERM) and "Server Shut Down." in out, out
    cli = subprocess.run([str(venv / "bin" / "mailsuite"), "--config", str(srv.config), "user", "list"],
                         capture_output=True, text=True, env=clean_env, cwd=str(tmp_path), timeout=60)
    assert cli.returncode == 0, cli.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_root_start_drops_to_uid_and_hands_over_the_data_dir(tmp_path: Path) -> None:
    import pwd
    import tempfile
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="mailsuite-uid-", dir="/tmp"))
    base.chmod(0o755)
    try:
        srv = MailServer(base, services=("pop3",), allow_plaintext_loopback=True)
        srv.add_user("alice@example.org", "alice-password")       # as root, before the first start
        with open(srv.logfile, "wb") as logfile:
            proc = subprocess.Popen([*TWISTD, "--nodaemon", "--pidfile=", f"--uid={nobody.pw_uid}",
                                     f"--gid={nobody.pw_gid}", "mailsuite", "--config", str(srv.config)],
                                    stdout=logfile, stderr=subprocess.STDOUT, env=env(), cwd=str(base))
        try:
            wait_started(proc, srv)      # ports accept connections while still root; the banner comes after the drop
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uid_line = next(l for l in status.splitlines() if l.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
            assert srv.data_dir.stat().st_uid == nobody.pw_uid
            assert (srv.data_dir / "users").stat().st_uid == nobody.pw_uid
            # a user added by root while the server runs stays readable by the server
            srv.add_user("bob@example.org", "bob-password")
            assert (srv.data_dir / "users").stat().st_uid == nobody.pw_uid
            import poplib
            pop = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
            pop.user("bob@example.org")
            assert pop.pass_("bob-password").startswith(b"+OK")
            pop.quit()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case, expected", [
    ("users-syntax", "users:1: expected 'user@domain:{SCHEME}hash'"),
    ("users-not-utf8", "users: not valid UTF-8"),
    ("users-is-a-directory", "users: cannot read"),
    ("data-dir-is-a-file", "is not a directory; fix data_dir"),
    ("cert-not-pem", "no PEM certificate found"),
    ("systemd-without-socket", "systemd passed no sockets"),
])
def test_unusable_files_at_start_are_one_line(tmp_path: Path, case: str, expected: str) -> None:
    """Files the config points at but that can't be used end the start with one line naming the file."""
    srv = MailServer(tmp_path, services=("pop3",))
    data = srv.data_dir
    if case == "data-dir-is-a-file":
        data.write_text("not a directory\n")
    else:
        data.mkdir()
    if case == "users-syntax":
        (data / "users").write_text("alice@example.org secret\n")
    elif case == "users-not-utf8":
        (data / "users").write_bytes(b"\xff\xfe\n")
    elif case == "users-is-a-directory":
        (data / "users").mkdir()
    elif case == "systemd-without-socket":
        srv.config.write_text(srv.config.read_text().replace(f"tcp:{srv.port('pop3')}:interface=127.0.0.1",
                                                             "systemd:domain=INET:index=0"))
    elif case == "cert-not-pem":
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        srv.config.write_text(srv.config.read_text() + f'\n[tls]\ncert = "{tmp_path}/cert.pem"\n'
                              f'key = "{tmp_path}/cert.pem"\n')
    result = run_twistd(srv.config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert len([l for l in output.splitlines() if expected in l]) == 1, output


def test_cli_errors_are_one_line(mailserver: MailServer) -> None:
    """Bad input to the admin command: one line, status 1, and nothing half-done."""
    for bad in ("a/b@example.org", ".hidden@example.org"):
        result = mailserver.cli("user", "add", bad, "--password-stdin", input="long-enough-pw\n")
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "can't contain '/' or start with '.'" in result.stderr
    assert mailserver.cli("user", "list").stdout == ""
    mailserver.data_dir.mkdir()
    (mailserver.data_dir / "mail").write_text("a file where the store should be\n")
    result = mailserver.cli("user", "add", "alice@example.org", "--password-stdin", input="long-enough-pw\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(mailserver.data_dir / "mail") in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_root_only_certificate_key_is_reported_at_start(tmp_path: Path) -> None:
    """With --uid, SIGHUP re-reads [tls] cert/key as that user: a root-only key (Let's Encrypt's) is reported
    at start, and the server still runs with the certificate it loaded as root."""
    import pwd
    import tempfile
    from mailsuite.tls import make_self_signed
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="mailsuite-tls-", dir="/tmp"))
    base.chmod(0o755)
    try:
        live = base / "live"
        live.mkdir(mode=0o700)
        make_self_signed(live / "fullchain.pem", live / "privkey.pem", ["mail.example.org"])
        srv = MailServer(base, services=("pop3s",))
        srv.config.write_text(srv.config.read_text() + f'\n[tls]\ncert = "{live}/fullchain.pem"\n'
                              f'key = "{live}/privkey.pem"\n')
        with open(srv.logfile, "wb") as logfile:
            proc = subprocess.Popen([*TWISTD, "--nodaemon", "--pidfile=", f"--uid={nobody.pw_uid}",
                                     f"--gid={nobody.pw_gid}", "mailsuite", "--config", str(srv.config)],
                                    stdout=logfile, stderr=subprocess.STDOUT, env=env(), cwd=str(base))
        try:
            wait_started(proc, srv)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        out = srv.log_text()
        assert f"privkey.pem not readable by uid {nobody.pw_uid}" in out, out
        assert "fullchain.pem" in out and "Traceback" not in out
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_root_start_never_hands_over_a_foreign_directory(tmp_path: Path) -> None:
    """A mistyped data_dir (say /var) must not be chowned to the service user."""
    import pwd
    nobody = pwd.getpwnam("nobody")
    srv = MailServer(tmp_path, services=("pop3",))
    srv.data_dir.mkdir()
    precious = srv.data_dir / "someone-elses-file"
    precious.write_text("keep me root's")
    result = subprocess.run([*TWISTD, "--nodaemon", "--pidfile=", f"--uid={nobody.pw_uid}",
                             f"--gid={nobody.pw_gid}", "mailsuite", "--config", str(srv.config)],
                            capture_output=True, text=True, env=env(), cwd=str(tmp_path), timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "refusing to give it to uid" in output and "someone-elses-file" in output
    assert "Traceback" not in output
    assert precious.stat().st_uid == 0 and srv.data_dir.stat().st_uid == 0
