"""Process memory knobs of glibc's malloc (no-ops elsewhere): fewer arenas, and giving freed heap back."""

from __future__ import annotations

import ctypes

__all__ = ["limit_malloc_arenas", "trim_malloc"]

#: glibc mallopt() parameter: the most malloc arenas (per-thread heaps) the process may use.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas (the default is 8 per core).  SQLite connections are opened and closed both
    on the reactor thread and in the delivery threads; with an arena per thread, memory freed in one heap is
    not reused by the other and the RSS grew by half during bench 7b (93 -> 139 MB; 98 MB with the cap).
    Returns False where it does not apply (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def trim_malloc() -> bool:
    """Give freed C heap back to the OS (glibc ``malloc_trim``): start-up (imports, TLS set-up) and bursts
    leave free pages the RSS still counts.  False where it does not apply."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
