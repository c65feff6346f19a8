"""The objects every protocol adapter shares (one of each per process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .accounts import Accounts
from .config import Settings
from .tls import TLSManager

__all__ = ["ServerContext"]


@dataclass
class ServerContext:
    settings: Settings
    accounts: Accounts
    store: Any            # mailsuite.store.Store
    tls: TLSManager
    reactor: Any
    queue: Any | None = None   # mailsuite.relay queue, once the relay service is running
