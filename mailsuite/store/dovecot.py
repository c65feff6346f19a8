"""Dovecot Maildir metadata: ``dovecot-uidlist`` and ``dovecot-keywords`` (read and write).

``dovecot-uidlist`` (version 3), one per folder directory::

    3 V1700000000 N43 G3085f01b7f11094c501100008c4a11c1
    1 :1700000000.M1P2.host,S=120
    7 W130 S120 :1700000001.M5P2.host,S=130

The header's ``V`` is the UIDVALIDITY and ``N`` the next UID; each record is a UID, optional extension
fields, then ``:`` and the file's base name.  Version 1 files (``1 <uidvalidity> <nextuid>`` then
``<uid> <basename>``) are read too.  ``dovecot-keywords`` maps keyword letters: ``<index> <keyword>``
with index 0 = ``a`` ... 25 = ``z``.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "UIDLIST",
    "KEYWORDS",
    "UidList",
    "parse_uidlist",
    "read_uidlist",
    "format_uidlist",
    "parse_keywords",
    "read_keywords",
    "format_keywords",
    "write_file_atomic",
]

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
MAX_KEYWORD_LETTERS = 26


@dataclass
class UidList:
    """A parsed ``dovecot-uidlist``: UIDVALIDITY, next UID and base name -> UID."""

    uidvalidity: int
    nextuid: int
    uids: dict[str, int] = field(default_factory=dict)


def parse_uidlist(text: str) -> UidList | None:
    """Parse a ``dovecot-uidlist``; None if the header is not understood."""
    lines = text.splitlines()
    if not lines:
        return None
    head = lines[0].split()
    uidvalidity = nextuid = 0
    if head and head[0] == "3":
        for fld in head[1:]:
            if fld[:1] == "V" and fld[1:].isdigit():
                uidvalidity = int(fld[1:])
            elif fld[:1] == "N" and fld[1:].isdigit():
                nextuid = int(fld[1:])
    elif head and head[0] in ("1", "2") and len(head) >= 3 and head[1].isdigit() and head[2].isdigit():
        uidvalidity, nextuid = int(head[1]), int(head[2])
    else:
        return None
    if uidvalidity <= 0:
        return None
    result = UidList(uidvalidity, max(nextuid, 1))
    for line in lines[1:]:
        uid_text, sep, rest = line.partition(" ")
        if not sep or not uid_text.isdigit():
            continue
        uid = int(uid_text)
        if uid <= 0:
            continue
        i = rest.find(":")
        base = rest[i + 1 :] if i >= 0 else rest.strip()
        base = base.split(":", 1)[0].strip()
        if base:
            result.uids[base] = uid
    if result.uids:
        result.nextuid = max(result.nextuid, max(result.uids.values()) + 1)
    return result


def read_uidlist(folder_dir: Path) -> UidList | None:
    try:
        text = (folder_dir / UIDLIST).read_text("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse_uidlist(text)


def format_uidlist(uidvalidity: int, nextuid: int, records: list[tuple[int, str]]) -> str:
    """A version-3 ``dovecot-uidlist`` for ``(uid, base)`` records sorted by UID."""
    out = [f"3 V{uidvalidity} N{nextuid} G{uuid.uuid4().hex}"]
    out.extend(f"{uid} :{base}" for uid, base in records)
    return "\n".join(out) + "\n"


def parse_keywords(text: str) -> list[str | None]:
    """``dovecot-keywords`` -> list indexed by letter number (None where unused)."""
    table: list[str | None] = [None] * MAX_KEYWORD_LETTERS
    for line in text.splitlines():
        idx, sep, name = line.partition(" ")
        name = name.strip()
        if sep and idx.isdigit() and int(idx) < MAX_KEYWORD_LETTERS and name and " " not in name:
            table[int(idx)] = name
    while table and table[-1] is None:
        table.pop()
    return table


def read_keywords(folder_dir: Path) -> list[str | None]:
    try:
        return parse_keywords((folder_dir / KEYWORDS).read_text("utf-8", errors="replace"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def format_keywords(table: list[str | None]) -> str:
    return "".join(f"{i} {name}\n" for i, name in enumerate(table) if name)


def write_file_atomic(path: Path, text: str) -> None:
    """Replace a small metadata file atomically (write temp, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
