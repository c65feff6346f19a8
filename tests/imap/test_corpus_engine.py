"""The shared MIME corpus through the whole IMAP engine: APPEND, EXAMINE, the FETCH commands and
UID SEARCHes the reference server (Dovecot) answered, compared byte for byte where the corpus README
has no note that Dovecot departs from the RFC, and checked for well-formedness everywhere."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .harness import Session, make_store
from .imapcheck import responses, tagged

_REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("MAILSUITE_MIME_CORPUS", _REPO.parent / "shared" / "mime-corpus"))
needs_corpus = pytest.mark.skipif(not (CORPUS / "answers").is_dir(), reason=f"MIME corpus not found at {CORPUS}")
DATE = b'"14-Mar-2024 12:00:00 +0000"'


def _stems() -> list[str]:
    if not (CORPUS / "answers").is_dir():
        return []
    return sorted(p.stem for p in (CORPUS / "answers").glob("*.json"))


def _append(sess: Session, box: str, data: bytes) -> None:
    out = sess.send(b"ap APPEND %s () %s {%d+}\r\n" % (box.encode(), DATE, len(data)) + data + b"\r\n")
    assert b"ap OK" in out, out


@pytest.fixture(scope="module")
def sess(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("corpus"))
    s = Session(store)
    s.login()
    yield s
    store.close()


@needs_corpus
@pytest.mark.parametrize("stem", _stems())
def test_corpus_fetch(sess, stem):
    answer = json.loads((CORPUS / "answers" / f"{stem}.json").read_text("utf-8"))
    data = (CORPUS / "messages" / answer["message"]).read_bytes()
    box = "C" + re.sub(r"[^A-Za-z0-9]", "", stem)
    assert b"OK" in sess.cmd(f"c CREATE {box}")
    _append(sess, box, data)
    out = sess.cmd(f"e EXAMINE {box}")
    assert b"e OK" in out
    strict = not answer.get("dovecot_notes")
    for key, item in {**answer["fetch"], **answer.get("extra_fetch", {})}.items():
        if "command" not in item:
            continue
        out = sess.cmd(b"f " + item["command"].encode())
        resp = responses(out)  # well-formed in every case
        status = tagged(out, b"f")[1].decode()
        if strict:
            assert status == item["status"], (key, out)
        if strict and status == "OK":
            expected = item["response"].encode(item.get("encoding", "utf-8"))
            assert out.rsplit(b"f OK", 1)[0] == expected, (key, out, expected)
        assert resp


def _search_command(cmd: str) -> bytes:
    """The corpus writes literals as ``{n}\\r\\n<literal: text>``: make them LITERAL+ literals."""
    out = b""
    pos = 0
    cs = re.search(r"CHARSET (\S+)", cmd)
    codec = cs.group(1) if cs else "utf-8"
    for m in re.finditer(r"\{(\d+)\}\\r\\n<literal: ", cmd):
        n = int(m.group(1))
        out += cmd[pos : m.start()].encode() + b"{%d+}\r\n" % n
        rest = cmd[m.end() :]
        text = b""
        i = 0
        while len(text) < n:
            text += rest[i].encode(codec)
            i += 1
        assert len(text) == n
        out += text
        pos = m.end() + rest.index(">", i) + 1  # skip notes such as " (ISO-8859-1 bytes)"
    return out + cmd[pos:].encode()


@needs_corpus
def test_corpus_searches(tmp_path):
    spec = json.loads((CORPUS / "searches.json").read_text("utf-8"))
    store = make_store(tmp_path)
    try:
        s = Session(store)
        s.login()
        s.cmd("c CREATE Shared")
        for m in spec["messages"]:
            _append(s, "Shared", (CORPUS / "messages" / m["name"]).read_bytes())
        assert b"e OK" in s.cmd("e EXAMINE Shared")
        failures = []
        for case in spec["searches"]:
            out = s.cmd(b"s " + _search_command(case["command"]))
            responses(out)
            status = tagged(out, b"s")[1].decode()
            got = [int(x) for r in responses(out) if r[:2] == [b"*", b"SEARCH"] for x in r[2:]]
            if status != case["status"] or (status == "OK" and got != case["uids"]):
                failures.append((case["purpose"], case["command"], case["uids"], got, status))
        assert not failures, failures
    finally:
        store.close()
