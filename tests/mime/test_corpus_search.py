"""Every UID SEARCH of the corpus's searches.json, evaluated with the mime search helpers
by a tiny RFC 3501 §6.4.4 evaluator, gives Dovecot's UIDs."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from mailsuite.mime import (
    EPOCH_DATE,
    UnknownCharset,
    address_search_text,
    body_text,
    contains,
    decode_search_key,
    has_header,
    header_values,
    parse_message,
    sent_date,
    text_search_text,
)

from .corpus import CORPUS, needs_corpus

pytestmark = needs_corpus

INTERNALDATE = dt.date(2024, 3, 14)  # every message was APPENDed with this INTERNALDATE
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_TOKEN = re.compile(r'\{(\d+)\}\\r\\n<literal: (.*?)>|"((?:[^"\\]|\\.)*)"|(\S+)')


def _tokens(command: str) -> list[bytes]:
    out = []
    for n, lit, quoted, atom in _TOKEN.findall(command):
        if n:
            if lit.endswith(" (ISO-8859-1 bytes)"):
                raw = lit[: -len(" (ISO-8859-1 bytes)")].encode("latin-1")
            else:
                raw = lit.encode("utf-8")
            assert len(raw) == int(n)
            out.append(raw)
        elif atom:
            out.append(atom.encode())
        else:
            out.append(quoted.replace('\\"', '"').replace("\\\\", "\\").encode())
    return out


def _date(token: bytes) -> dt.date:
    d, m, y = token.decode().split("-")
    return dt.date(int(y), _MONTHS[m.lower()], int(d))


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self.root = parse_message(data)


def _evaluate(tokens: list[bytes], charset: str | None, msg: _Msg) -> bool:
    """Evaluate the search keys (implicitly ANDed) against one message."""
    pos = 0

    def text(raw: bytes) -> str:
        return decode_search_key(raw, charset)

    def key() -> bool:
        nonlocal pos
        k = tokens[pos].decode().upper()
        pos += 1
        if k == "ALL":
            return True
        if k == "NOT":
            return not key()
        if k == "OR":
            a = key()
            b = key()
            return a or b
        arg = tokens[pos]
        pos += 1
        root = msg.root
        if k == "SUBJECT":
            needle = text(arg)
            return any(contains(v, needle) for v in header_values(root, "Subject"))
        if k in ("FROM", "TO", "CC", "BCC"):
            return has_header(root, k) and contains(address_search_text(root, k), text(arg))
        if k == "BODY":
            return contains(body_text(root), text(arg))
        if k == "TEXT":
            return contains(text_search_text(root), text(arg))
        if k == "HEADER":
            field = arg.decode()
            needle = text(tokens[pos])
            pos += 1
            return any(contains(v, needle) for v in header_values(root, field))
        if k == "LARGER":
            return msg.size > int(arg)
        if k == "SMALLER":
            return msg.size < int(arg)
        sent = sent_date(root) or EPOCH_DATE
        when = {"SENTSINCE": sent, "SENTBEFORE": sent, "SENTON": sent}.get(k, INTERNALDATE)
        day = _date(arg)
        if k.endswith("SINCE"):
            return when >= day
        if k.endswith("BEFORE"):
            return when < day
        if k.endswith("ON"):
            return when == day
        raise AssertionError(f"unknown search key {k}")

    result = True
    while pos < len(tokens):
        result = key() and result
    return result


def _run(command: str, messages: dict[int, _Msg]) -> tuple[str, list[int]]:
    tokens = _tokens(command)
    assert tokens[:2] == [b"UID", b"SEARCH"]
    tokens = tokens[2:]
    charset = None
    if tokens[0].upper() == b"CHARSET":
        charset = tokens[1].decode()
        tokens = tokens[2:]
        try:
            decode_search_key(b"", charset)
        except UnknownCharset:
            return "NO", []
    return "OK", [uid for uid, m in sorted(messages.items()) if _evaluate(tokens, charset, m)]


def _searches() -> list[dict]:
    path = CORPUS / "searches.json"
    return json.loads(path.read_text("utf-8"))["searches"] if path.is_file() else []


@pytest.fixture(scope="module")
def mailbox() -> dict[int, _Msg]:
    meta = json.loads((CORPUS / "searches.json").read_text("utf-8"))
    return {m["uid"]: _Msg((CORPUS / "messages" / m["name"]).read_bytes()) for m in meta["messages"]}


@pytest.mark.parametrize("search", _searches(), ids=lambda s: s["command"][11:60])
def test_search(search: dict, mailbox: dict[int, _Msg]) -> None:
    status, uids = _run(search["command"], mailbox)
    assert status == search["status"]
    assert uids == search["uids"], search["purpose"]
