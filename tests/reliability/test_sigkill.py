"""SIGKILL under SMTP load: nothing acknowledged is lost or duplicated, no half-written file, the index agrees
with the files, IMAP and POP3 work after the restart (issue 8; the long variant is bench/sigkill_loop.py).
SIGTERM under load: the same promises, and a clean exit."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.server import MailServer

from .sigkill import USERS, Ledger, check_offline, make_message, run_rounds
from .support import header_value


def test_sigkill_rounds_lose_nothing_acknowledged(tmp_path: Path) -> None:
    totals = run_rounds(tmp_path, rounds=3, seed=8)
    assert totals["rounds"] == 3
    assert totals["acked"] >= 3           # every round killed the server with load on it


def test_sigterm_under_load_finishes_or_aborts_cleanly(tmp_path: Path) -> None:
    """Restart under load: SIGTERM ends the process with status 0; acknowledged mail is there, nothing twice."""
    totals = run_rounds(tmp_path, rounds=1, seed=15, graceful=True)
    assert totals["acked"] >= 1


def _checker_setup(tmp_path: Path) -> tuple[MailServer, Ledger, Path]:
    srv = MailServer(tmp_path, services=("smtp",))
    ledger = Ledger()
    from mailsuite.store import Store
    store = Store(srv.data_dir / "mail")
    for user in USERS:
        store.create_user(user)
    for n in range(3):
        ledger.acked[f"t-{n}"] = ("alice@example.org",)
        store.deliver_sync("alice@example.org", make_message(f"t-{n}", ("alice@example.org",), random.Random(n)))
    store.close()
    return srv, ledger, srv.maildir("alice@example.org") / "new"


def test_checker_accepts_a_clean_store(tmp_path: Path) -> None:
    srv, ledger, _new = _checker_setup(tmp_path)
    snap = check_offline(srv, ledger, None)
    assert sorted(snap.files["alice@example.org"].values()) == ["t-0", "t-1", "t-2"]


@pytest.mark.parametrize("damage", ["lost", "duplicate", "truncated", "refused"])
def test_checker_catches_broken_promises(tmp_path: Path, damage: str) -> None:
    """The SIGKILL checks are not vacuous: each kind of damage is reported."""
    srv, ledger, new = _checker_setup(tmp_path)
    victim = sorted(new.iterdir())[0]
    if damage == "lost":
        victim.unlink()
    elif damage == "duplicate":
        shutil.copyfile(victim, new / ("9" + victim.name))
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-5])
    else:
        test_id = header_value(victim.read_bytes(), b"X-Test-Id").decode()
        del ledger.acked[test_id]
        ledger.refused.add(test_id)
    with pytest.raises(AssertionError):
        check_offline(srv, ledger, None)
