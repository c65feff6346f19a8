"""Shared pytest fixtures: ``mailserver`` gives a MailServer (not started) in a temp dir, stopped afterwards."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import MailServer  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture
def mailserver(tmp_path: Path) -> Iterator[MailServer]:
    srv = MailServer(tmp_path)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
