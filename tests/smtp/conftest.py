"""A running mailsuite (SMTP listeners only) shared by the end-to-end tests of one module."""

from __future__ import annotations

import os
import shutil
import ssl
from typing import Iterator

import pytest

from tests.server import MailServer

IN_CI = os.environ.get("CI") == "true"
USERS = {"alice@example.org": "alice-password-1", "bob@example.org": "bob-password-1",
         "carol@example.net": "carol-password-1"}


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    srv = MailServer(tmp_path_factory.mktemp("smtp"), services=("smtp", "submission", "submissions"))
    for user, password in USERS.items():
        srv.add_user(user, password)
    srv.add_alias("sales@example.org", "bob@example.org")
    srv.add_alias("team@example.org", "alice@example.org", "bob@example.org")
    srv.add_alias("@example.net", "carol@example.net")          # catch-all of example.net
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-5000:]


def client_tls() -> ssl.SSLContext:
    """The test server has a self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            raise AssertionError(f"{name} must be installed in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed")
    return path
