"""Accounts: users file, aliases, catch-all, plus-addressing, reload, and the shared cred checker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from twisted.internet import task

from mailsuite.accounts import Accounts, AccountsFileError, LocalTarget
from mailsuite.accounts.passwords import sha_crypt


def make(tmp_path: Path, **kw) -> Accounts:
    return Accounts(tmp_path / "users", tmp_path / "aliases", ("example.org", "example.net"), **kw)


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    a = make(tmp_path)
    a.add_user("alice@example.org", "alice-password", "SCRYPT")
    a.add_user("Bob@Example.NET", "bob-password", "SCRYPT")
    return a


def test_users_file_is_dovecot_passwd_style(accounts: Accounts, tmp_path: Path) -> None:
    lines = (tmp_path / "users").read_text().splitlines()
    assert [l.split(":")[0] for l in lines] == ["alice@example.org", "bob@example.net"]
    assert all(l.split(":", 1)[1].startswith("{SCRYPT}$scrypt$") for l in lines)
    assert oct((tmp_path / "users").stat().st_mode & 0o777) == "0o600"


def test_passwords(accounts: Accounts) -> None:
    assert accounts.check_password_sync("alice@example.org", "alice-password") == "alice@example.org"
    assert accounts.check_password_sync("ALICE@example.org", "alice-password") == "alice@example.org"
    assert accounts.check_password_sync("alice", "alice-password") == "alice@example.org"  # first domain
    assert accounts.check_password_sync("alice@example.org", "wrong") is None
    assert accounts.check_password_sync("nobody@example.org", "alice-password") is None


def test_dovecot_passwd_file_lines_accepted(tmp_path: Path) -> None:
    (tmp_path / "users").write_text(
        "# migrated from dovecot\n"
        "carol@example.org:{SHA512-CRYPT}" + sha_crypt(b"carol-pw", "$6$0123456789abcdef") + ":1000:1000::/home/carol::\n")
    a = make(tmp_path)
    assert a.check_password_sync("carol@example.org", "carol-pw") == "carol@example.org"


def test_bad_users_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "users").write_text("a@example.org:{ARGON2ID}$argon2id$x\nbroken line\n")
    with pytest.raises(AccountsFileError, match=r"users:2: expected"):
        make(tmp_path)
    (tmp_path / "users").write_text("a@example.org:{PLAIN}secret\n")
    with pytest.raises(AccountsFileError, match=r"users:1: a@example.org: unsupported or weak"):
        make(tmp_path)


def test_changes_by_another_process_are_seen(accounts: Accounts, tmp_path: Path) -> None:
    other = make(tmp_path)            # the admin command's own instance
    other.add_user("dave@example.org", "dave-password", "SCRYPT")
    assert accounts.user_exists("dave@example.org")
    other.delete_user("dave@example.org")
    assert not accounts.user_exists("dave@example.org")


def test_add_user_checks(accounts: Accounts) -> None:
    with pytest.raises(AccountsFileError, match="exists already"):
        accounts.add_user("alice@example.org", "x" * 10, "SCRYPT")
    with pytest.raises(AccountsFileError, match="not one of the local domains"):
        accounts.add_user("eve@elsewhere.com", "x" * 10, "SCRYPT")
    with pytest.raises(AccountsFileError, match="recipient delimiter"):
        accounts.add_user("eve+x@example.org", "x" * 10, "SCRYPT")


def test_set_password(accounts: Accounts) -> None:
    accounts.set_password("alice@example.org", "new-password", "SCRYPT")
    assert accounts.check_password_sync("alice@example.org", "new-password")
    assert accounts.check_password_sync("alice@example.org", "alice-password") is None


def test_resolution(accounts: Accounts) -> None:
    accounts.add_alias("info@example.org", ["alice@example.org", "bob@example.net", "friend@elsewhere.com"])
    accounts.add_alias("team@example.org", ["info@example.org"])
    accounts.add_alias("@example.net", ["bob@example.net"])
    assert accounts.resolve("alice@example.org").local == (LocalTarget("alice@example.org", None),)
    info = accounts.resolve("Info@Example.org")
    assert {t.user for t in info.local} == {"alice@example.org", "bob@example.net"}
    assert info.external == ("friend@elsewhere.com",)
    assert {t.user for t in accounts.resolve("team@example.org").local} == {"alice@example.org", "bob@example.net"}
    assert accounts.resolve("alice+news@example.org").local == (LocalTarget("alice@example.org", "news"),)
    assert accounts.resolve("anything@example.net").local == (LocalTarget("bob@example.net", None),)  # catch-all
    assert accounts.resolve("nobody@example.org") is None
    assert accounts.resolve("alice@elsewhere.com") is None
    assert accounts.resolve("postmaster@example.org").local[0].user == "alice@example.org"


def test_plus_addressing_can_be_off(tmp_path: Path) -> None:
    a = make(tmp_path, plus_addressing=False)
    a.add_user("alice@example.org", "alice-password", "SCRYPT")
    assert a.resolve("alice+news@example.org") is None


def test_alias_loops_terminate(accounts: Accounts) -> None:
    accounts.add_alias("a@example.org", ["b@example.org"])
    accounts.add_alias("b@example.org", ["a@example.org", "alice@example.org"])
    assert accounts.resolve("a@example.org").local == (LocalTarget("alice@example.org", None),)


def test_sender_addresses(accounts: Accounts) -> None:
    accounts.add_alias("info@example.org", ["alice@example.org"])
    assert accounts.sender_addresses("alice@example.org") == {"alice@example.org", "info@example.org"}
    assert accounts.may_send_as("alice@example.org", "Alice+lists@example.org")
    assert not accounts.may_send_as("alice@example.org", "bob@example.net")


def test_alias_delete(accounts: Accounts) -> None:
    accounts.add_alias("info@example.org", ["alice@example.org", "bob@example.net"])
    accounts.delete_alias("info@example.org", ["bob@example.net"])
    assert accounts.aliases()["info@example.org"] == ("alice@example.org",)
    accounts.delete_alias("info@example.org")
    assert "info@example.org" not in accounts.aliases()


def test_authenticate_through_the_portal(accounts: Accounts) -> None:
    """The Deferred API hashes in a thread; a failure fires None after the delay and logs the fail2ban line."""
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    seen: list[str] = []

    def observer(event: dict) -> None:
        from twisted.logger import formatEvent
        seen.append(formatEvent(event))

    clock = task.Clock()
    accounts._reactor = clock
    accounts.failure_delay = 5
    globalLogPublisher.addObserver(observer)
    fresh = reactor.threadpool is None
    pool = reactor.getThreadPool()
    if not pool.started:
        pool.start()  # the reactor is not running under pytest; its pool must run for deferToThread
    results: list = []
    try:
        accounts.authenticate("alice@example.org", "alice-password", service="imap", ip="192.0.2.7").addBoth(results.append)
        accounts.authenticate("alice@example.org", "nope", service="smtp", ip="192.0.2.8").addBoth(results.append)
        deadline = time.monotonic() + 20
        while len(results) < 1 or not any("auth failure" in s for s in seen):
            reactor.iterate(0.05)  # threads report back through the reactor
            assert time.monotonic() < deadline
        assert results == ["alice@example.org"]
        clock.advance(5)
        assert results == ["alice@example.org", None]
        assert "mailsuite auth failure: service=smtp ip=192.0.2.8 user=alice@example.org" in seen
    finally:
        if fresh:
            reactor._stopThreadPool()  # detach it again, so later trial tests find the reactor as it was
        globalLogPublisher.removeObserver(observer)


def test_user_names_that_would_escape_the_store_are_refused(accounts: Accounts, tmp_path: Path) -> None:
    """The local part names a directory (mail/<domain>/<local>): no '/', no leading '.' (DESIGN §4)."""
    for bad in ("a/b@example.org", "../x@example.org", ".hidden@example.org", "..@example.org"):
        with pytest.raises(AccountsFileError, match="can't contain '/' or start with '.'"):
            accounts.add_user(bad, "x" * 10, "SCRYPT")
    assert accounts.users() == ["alice@example.org", "bob@example.net"]
    line = (tmp_path / "users").read_text().splitlines()[0].replace("alice@", "../../etc@", 1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "users").write_text(line + "\n")
    with pytest.raises(AccountsFileError, match=r"users:1: \.\./\.\./etc@example.org: a user name can't"):
        Accounts(tmp_path / "other" / "users", tmp_path / "other" / "aliases", ("example.org",))


def test_bad_edit_while_running_keeps_the_previous_version(accounts: Accounts, tmp_path: Path) -> None:
    """A users file broken by hand (syntax, encoding, made unreadable) never takes the running server down."""
    users = tmp_path / "users"
    good = users.read_text()
    assert accounts.users() == ["alice@example.org", "bob@example.net"]     # the version the server runs with
    for broken in (b"alice@example.org has no hash\n", b"\xff\xfe not UTF-8\n"):
        users.write_bytes(broken)
        os.utime(users, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert accounts.user_exists("alice@example.org")
        assert accounts.check_password_sync("alice@example.org", "alice-password") == "alice@example.org"
    users.unlink()
    users.mkdir()                     # read() fails with an OSError
    assert accounts.users() == ["alice@example.org", "bob@example.net"]
    users.rmdir()
    users.write_text(good)
    assert accounts.users() == ["alice@example.org", "bob@example.net"]


def test_unreadable_users_file_at_start_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "users").write_bytes(b"\xff\xfe\n")
    with pytest.raises(AccountsFileError, match=r"users: not valid UTF-8"):
        make(tmp_path)
    (tmp_path / "users").unlink()
    (tmp_path / "users").mkdir()
    with pytest.raises(AccountsFileError, match=r"users: cannot read"):
        make(tmp_path)
