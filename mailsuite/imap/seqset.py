"""IMAP sequence sets (RFC 3501 §9 sequence-set, RFC 5182 ``$``).

Resolution costs time proportional to the number of ranges and of messages that exist, never to the
numbers written: ``1:4294967295`` on a 3-message mailbox touches 3 messages.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Sequence

STAR = 0  # "*": the largest number in use (RFC 3501 §9 seq-number)
MAX_NUMBER = 4294967295
_ITEM = re.compile(rb"(\*|[1-9][0-9]{0,9})(?::(\*|[1-9][0-9]{0,9}))?")


@dataclass(frozen=True)
class SequenceSet:
    ranges: tuple[tuple[int, int], ...]  # (a, b) unordered as written; STAR for "*"
    saved: bool = False  # "$" (RFC 5182): the saved search result

    @classmethod
    def parse(cls, raw: bytes) -> "SequenceSet":
        if raw == b"$":
            return cls((), saved=True)
        if not raw:
            raise ValueError("Expected a sequence set")
        ranges = []
        for item in raw.split(b","):
            m = _ITEM.fullmatch(item)
            if not m:
                raise ValueError("Invalid sequence set")
            a = STAR if m.group(1) == b"*" else int(m.group(1))
            b = a if m.group(2) is None else (STAR if m.group(2) == b"*" else int(m.group(2)))
            if a > MAX_NUMBER or b > MAX_NUMBER:
                raise ValueError("Sequence number out of range")
            ranges.append((a, b))
        return cls(tuple(ranges))

    def _intervals(self, last: int) -> list[tuple[int, int]]:
        out = []
        for a, b in self.ranges:
            a = last if a == STAR else a
            b = last if b == STAR else b
            out.append((a, b) if a <= b else (b, a))
        return out

    def seqnums(self, count: int) -> list[int]:
        """Sequence numbers (1..count) named by the set, sorted, without duplicates."""
        if count == 0:
            return []
        spans = []
        for lo, hi in self._intervals(count):
            lo, hi = max(lo, 1), min(hi, count)
            if lo <= hi:
                spans.append((lo, hi))
        return _expand(spans)

    def indexes(self, uids: Sequence[int]) -> list[int]:
        """0-based positions in ``uids`` (sorted ascending) of the UIDs named by the set.

        RFC 3501 §6.4.8: "*" is the largest UID in use, so ``n:*`` always includes it."""
        if not uids:
            return []
        spans = []
        for lo, hi in self._intervals(uids[-1]):
            i, j = bisect_left(uids, lo), bisect_right(uids, hi) - 1
            if i <= j:
                spans.append((i, j))
        return _expand(spans)

    def contains_uid(self, uid: int, max_uid: int) -> bool:
        return any(lo <= uid <= hi for lo, hi in self._intervals(max_uid))

    def contains_seq(self, seq: int, count: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self._intervals(count))


def _expand(spans: list[tuple[int, int]]) -> list[int]:
    spans.sort()
    out: list[int] = []
    cur_hi = -1
    for lo, hi in spans:
        lo = max(lo, cur_hi + 1)
        if lo <= hi:
            out.extend(range(lo, hi + 1))
            cur_hi = hi
    return out


def format_set(numbers: Sequence[int]) -> str:
    """Compact ``1:3,7`` form of sorted distinct numbers (for COPYUID, ESEARCH ALL)."""
    parts: list[str] = []
    i = 0
    n = len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)
