"""Client-address rules shared by every protocol: per-IP connection counting (DESIGN §4: connection floods)
and the loopback test behind ``[auth] allow_plaintext_loopback``."""

from __future__ import annotations

import ipaddress

__all__ = ["PerIPCounter", "is_loopback"]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x.y.z (an IPv4 client on a dual-stack listener), DESIGN §4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


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

    def total(self) -> int:
        """Connections counted from every address."""
        return sum(self._open.values())
