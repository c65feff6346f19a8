"""Access to the shared MIME corpus (Dovecot's answers) and a FETCH-line renderer.

The corpus lives outside the repository (``../shared/mime-corpus`` next to the checkout,
or ``$MAILSUITE_MIME_CORPUS``); tests that need it skip with a clear reason without it.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import pytest

from mailsuite.mime import (
    BinaryError,
    MessagePart,
    binary,
    binary_literal8,
    binary_size,
    bodystructure,
    envelope,
    find_part,
    parse_message,
    parse_section_spec,
    section_bytes,
)

_REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("MAILSUITE_MIME_CORPUS", _REPO.parent / "shared" / "mime-corpus"))

#: CI always has ../shared beside the clone: there a missing corpus is an error, not a skip
if os.environ.get("CI") == "true" and not (CORPUS / "answers").is_dir():
    raise RuntimeError(f"MIME corpus not found at {CORPUS}: CI must have shared/ beside the clone "
                       "(or set MAILSUITE_MIME_CORPUS)")
needs_corpus = pytest.mark.skipif(
    not (CORPUS / "answers").is_dir(), reason=f"MIME corpus not found at {CORPUS} (set MAILSUITE_MIME_CORPUS)"
)


def answer_names() -> list[str]:
    if not (CORPUS / "answers").is_dir():
        return []
    return sorted(p.stem for p in (CORPUS / "answers").glob("*.json"))


@lru_cache(maxsize=None)
def load(stem: str) -> tuple[dict, bytes, MessagePart]:
    d = json.loads((CORPUS / "answers" / f"{stem}.json").read_text("utf-8"))
    data = (CORPUS / "messages" / d["message"]).read_bytes()
    return d, data, parse_message(data)


def entries(d: dict):
    """(item, entry) for every fetch and extra_fetch entry; item is what was asked for."""
    for group in ("fetch", "extra_fetch"):
        for entry in d.get(group, {}).values():
            item = entry["command"][len("UID FETCH 1 (") : -1]
            yield item, entry


def reference(entry: dict) -> bytes:
    return entry["response"].encode(entry["encoding"])


def _literal(value: bytes, eight: bool = False) -> bytes:
    return (b"~" if eight else b"") + b"{%d}\r\n" % len(value) + value


_ITEM = re.compile(r"(BODY|BINARY)(?:\.PEEK)?\[(.*)\](?:<(\d+)\.(\d+)>)?")

NOT_OURS = ("INTERNALDATE",)  # answered by the IMAP engine from the store, not parsed


def render(root: MessagePart, data: bytes, item: str) -> tuple[bytes, str]:
    """Our answer to ``UID FETCH 1 (<item>)`` as Dovecot would print it, and its status.

    A BINARY error gives the untagged line without the item and status "NO".
    """
    if item == "RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY":
        line = b"* 1 FETCH (UID 1 RFC822.SIZE %d ENVELOPE %s BODYSTRUCTURE %s BODY %s)\r\n" % (
            len(data),
            envelope(root),
            bodystructure(root),
            bodystructure(root, extensible=False),
        )
        return line, "OK"
    if item.startswith("BINARY.SIZE["):
        sec = item[len("BINARY.SIZE[") : -1]
        part = find_part(root, parse_section_spec(sec).part)
        assert part is not None
        try:
            return b"* 1 FETCH (UID 1 BINARY.SIZE[%s] %d)\r\n" % (sec.encode(), binary_size(part)), "OK"
        except BinaryError:
            return b"* 1 FETCH (UID 1)\r\n", "NO"
    m = _ITEM.fullmatch(item)
    assert m is not None, item
    kind, sec, offset, length = m.groups()
    spec = parse_section_spec(sec)
    if kind == "BINARY":
        part = find_part(root, spec.part)
        assert part is not None
        try:
            value = binary(part)
        except BinaryError:
            return b"* 1 FETCH (UID 1)\r\n", "NO"
        eight = binary_literal8(part) or b"\x00" in value
        return b"* 1 FETCH (UID 1 BINARY[%s] %s)\r\n" % (sec.encode(), _literal(value, eight)), "OK"
    value = section_bytes(root, spec)
    name = sec
    if spec.fields:  # RFC 3501 §7.4.2: Dovecot echoes the field names upper-cased
        name = spec.text + " (" + " ".join(f.upper() for f in spec.fields) + ")"
    name += "]"
    if offset is not None:
        value = value[int(offset) : int(offset) + int(length)]
        name += f"<{offset}>"
    return b"* 1 FETCH (UID 1 BODY[%s %s)\r\n" % (name.encode(), _literal(value)), "OK"
