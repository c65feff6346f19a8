"""End to end: smtplib, swaks and curl send through 587 (STARTTLS), 465 and 25 to the real server."""

from __future__ import annotations

import smtplib
import subprocess
import uuid
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

from tests.server import MailServer

from .conftest import USERS, client_tls, need_tool


def marker() -> str:
    return uuid.uuid4().hex


def find(srv: MailServer, user: str, mark: str, folder: str = "INBOX") -> list[bytes]:
    """Wait (bounded) for the messages with ``mark`` in the given Maildir."""
    import time
    for _ in range(100):
        found = [m for m in srv.messages(user, folder) if mark.encode() in m]
        if found:
            return found
        time.sleep(0.05)
    return []


def message(mark: str, extra: str = "") -> bytes:
    return (f"From: someone\r\nTo: you\r\nSubject: test {mark}\r\n{extra}\r\nbody {mark}\r\n").encode()


def headers(data: bytes) -> object:
    return BytesParser(policy=default_policy).parsebytes(data)


def test_smtplib_587_starttls_plain(smtp_server: MailServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", smtp_server.port("submission"), timeout=30) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=client_tls())
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        s.user, s.password = "alice@example.org", USERS["alice@example.org"]
        code, _ = s.auth("PLAIN", s.auth_plain)
        assert code == 235
        refused = s.sendmail("alice@example.org", ["bob@example.org"], message(mark, "Bcc: hidden@example.org\r\n"))
        assert refused == {}
    [data] = find(smtp_server, "bob@example.org", mark)
    msg = headers(data)
    assert msg["Return-Path"] == "<alice@example.org>"
    received = msg["Received"]
    assert "by mail.example.org (mailsuite) with ESMTPSA" in received
    assert "(using TLSv1." in received and "(Authenticated sender: alice@example.org)" in received
    assert "for <bob@example.org>" in received
    assert msg["Bcc"] is None and msg["Date"] and msg["Message-ID"].endswith("@mail.example.org>")
    assert data.count(b"\r\n") == data.count(b"\n")


def test_smtplib_587_starttls_login(smtp_server: MailServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", smtp_server.port("submission"), timeout=30) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        s.user, s.password = "bob@example.org", USERS["bob@example.org"]
        # initial_response_ok=False: wait for the exact "334 VXNlcm5hbWU6" prompt as Thunderbird does
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        s.sendmail("sales@example.org", ["alice@example.org"], message(mark))
    [data] = find(smtp_server, "alice@example.org", mark)
    assert headers(data)["Return-Path"] == "<sales@example.org>"


def test_smtplib_465_implicit_tls(smtp_server: MailServer) -> None:
    mark = marker()
    with smtplib.SMTP_SSL("127.0.0.1", smtp_server.port("submissions"), context=client_tls(), timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        s.login("carol@example.net", USERS["carol@example.net"])
        s.sendmail("carol@example.net", ["alice@example.org"], message(mark))
    [data] = find(smtp_server, "alice@example.org", mark)
    assert "with ESMTPSA" in headers(data)["Received"]


def test_smtplib_25_several_recipients_alias_catchall_plus(smtp_server: MailServer) -> None:
    mark = marker()
    rcpts = ["alice@example.org", "team@example.org", "whoever@example.net", "bob+Junk@example.org"]
    with smtplib.SMTP("127.0.0.1", smtp_server.port("smtp"), timeout=30) as s:
        s.ehlo("mx.remote.test")
        assert not s.has_extn("auth")
        refused = s.sendmail("sender@remote.test", rcpts, message(mark))
        assert refused == {}
    # alice: direct + via team, delivered once; bob: via team (INBOX) and plus-address into Junk
    assert len(find(smtp_server, "alice@example.org", mark)) == 1
    assert len(find(smtp_server, "bob@example.org", mark)) == 1
    assert len(find(smtp_server, "bob@example.org", mark, folder="Junk")) == 1
    [data] = find(smtp_server, "carol@example.net", mark)
    msg = headers(data)
    assert msg["Return-Path"] == "<sender@remote.test>"
    assert "from mx.remote.test ([127.0.0.1])" in msg["Received"] and "with ESMTP id" in msg["Received"]
    assert " for " not in msg["Received"]           # several recipients: no for-clause
    assert msg["Message-ID"] is None                 # MX does not touch the message


def test_smtplib_unknown_user_on_25(smtp_server: MailServer) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_server.port("smtp"), timeout=30) as s:
        s.ehlo()
        s.mail("x@remote.test")
        code, text = s.rcpt("nobody@example.org")
        assert (code, text[:5]) == (550, b"5.1.1")


def run_tool(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_swaks_587_starttls_plain_and_login(smtp_server: MailServer) -> None:
    swaks = need_tool("swaks")
    for mech in ("PLAIN", "LOGIN"):
        mark = marker()
        result = run_tool([swaks, "--server", "127.0.0.1", "--port", str(smtp_server.port("submission")),
                           "--tls", "--auth", mech, "--auth-user", "alice@example.org",
                           "--auth-password", USERS["alice@example.org"], "--from", "alice@example.org",
                           "--to", "bob@example.org", "--header", f"Subject: swaks {mark}",
                           "--body", f"swaks body {mark}", "--helo", "swaks.test"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0" in result.stdout
        [data] = find(smtp_server, "bob@example.org", mark)
        assert "ESMTPSA" in headers(data)["Received"]


def test_swaks_465_and_25(smtp_server: MailServer) -> None:
    swaks = need_tool("swaks")
    mark = marker()
    result = run_tool([swaks, "--server", "127.0.0.1", "--port", str(smtp_server.port("submissions")),
                       "--tlsc", "--auth", "PLAIN", "--auth-user", "bob@example.org",
                       "--auth-password", USERS["bob@example.org"], "--from", "bob@example.org",
                       "--to", "alice@example.org", "--header", f"Subject: swaks465 {mark}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert find(smtp_server, "alice@example.org", mark)
    mark = marker()
    result = run_tool([swaks, "--server", "127.0.0.1", "--port", str(smtp_server.port("smtp")),
                       "--from", "someone@remote.test", "--to", "sales@example.org", "--pipeline",
                       "--header", f"Subject: swaks25 {mark}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert find(smtp_server, "bob@example.org", mark)


def test_curl_587_465_25(smtp_server: MailServer, tmp_path: Path) -> None:
    curl = need_tool("curl")
    cases = [
        (f"smtp://127.0.0.1:{smtp_server.port('submission')}", ["--ssl-reqd", "--user",
         f"alice@example.org:{USERS['alice@example.org']}", "--login-options", "AUTH=LOGIN"], "alice@example.org"),
        (f"smtp://127.0.0.1:{smtp_server.port('submission')}", ["--ssl-reqd", "--user",
         f"alice@example.org:{USERS['alice@example.org']}", "--login-options", "AUTH=PLAIN"], "alice@example.org"),
        (f"smtps://127.0.0.1:{smtp_server.port('submissions')}", ["--user",
         f"alice@example.org:{USERS['alice@example.org']}"], "alice@example.org"),
        (f"smtp://127.0.0.1:{smtp_server.port('smtp')}", [], "stranger@remote.test"),
    ]
    for url, extra, sender in cases:
        mark = marker()
        body = tmp_path / f"{mark}.eml"
        body.write_bytes(message(mark))
        result = run_tool([curl, "--silent", "--show-error", "--insecure", "--url", url, "--mail-from", sender,
                           "--mail-rcpt", "bob@example.org", "--upload-file", str(body), *extra])
        assert result.returncode == 0, (url, result.stderr)
        [data] = find(smtp_server, "bob@example.org", mark)
        assert headers(data)["Return-Path"] == f"<{sender}>"


def test_submission_to_remote_is_queued(smtp_server: MailServer) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_server.port("submission"), timeout=30) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.org", USERS["alice@example.org"])
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("friend@elsewhere.test", options=["NOTIFY=FAILURE"])[0] == 250
        code, text = s.data(message(marker()))
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    assert "relay=1" in smtp_server.log_text()
