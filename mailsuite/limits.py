"""Per-client-address connection counting, shared by the protocol factories (DESIGN §4: connection floods)."""

from __future__ import annotations

__all__ = ["PerIPCounter"]


class PerIPCounter:
    """Counts open connections per client address; ``open()`` refuses beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False (and nothing counted) when it is over the limit."""
        current = self._open.get(ip, 0)
        if current >= self.limit:
            return False
        self._open[ip] = current + 1
        return True

    def close(self, ip: str) -> None:
        current = self._open.get(ip, 0) - 1
        if current > 0:
            self._open[ip] = current
        else:
            self._open.pop(ip, None)

    def count(self, ip: str) -> int:
        return self._open.get(ip, 0)
