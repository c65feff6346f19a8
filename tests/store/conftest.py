"""Fixtures for the store tests: a Store whose "thread" work runs inline (no reactor needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from .store_helpers import USER, inline_runner

from mailsuite.store import Store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def store(root: Path):
    s = Store(root, runner=inline_runner)
    s.create_user(USER)
    yield s
    s.close()


@pytest.fixture
def reopen(root: Path):
    """Call to get a fresh Store on the same root (a server restart); closes them all at the end."""
    stores: list[Store] = []

    def _open() -> Store:
        s = Store(root, runner=inline_runner)
        stores.append(s)
        return s

    yield _open
    for s in stores:
        s.close()
