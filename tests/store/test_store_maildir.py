"""File-level helpers: names, flag letters, header blocks, line ends, Dovecot metadata parsing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsuite.store import dovecot
from mailsuite.store.maildir import (
    header_block,
    link_no_clobber,
    make_suffix,
    normalize_line_ends,
    read_header_block,
    size_from_base,
    split_filename,
    unique_base,
    write_message,
)


def test_unique_base_format() -> None:
    names = {unique_base(123) for _ in range(1000)}
    assert len(names) == 1000
    base = names.pop()
    sec, rest = base.split(".", 1)
    assert sec.isdigit() and rest.startswith("M") and "P%d" % os.getpid() in rest and "Q" in rest
    assert ":" not in base and "/" not in base
    assert size_from_base(base) == 123


def test_unique_base_sorts_in_creation_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first scan hands out UIDs in name order (RFC 3501 §2.3.1.1: ascending in arrival order), so
    names made later sort later even when the clock's microseconds gain a digit or stand still.
    (The CI failure this guards against: ``M99999`` sorted after ``M100000``.)"""
    clock = iter([1_700_000_000_099_999_000, 1_700_000_000_100_000_000, 1_700_000_000_100_000_000,
                  1_700_000_000_000_000_000, 1_700_000_001_000_005_000])
    monkeypatch.setattr("mailsuite.store.maildir.time.time_ns", lambda: next(clock))
    monkeypatch.setattr("mailsuite.store.maildir._last_usec", 0)
    made = [unique_base(1) for _ in range(5)]
    assert sorted(made) == made and len(set(made)) == 5


def test_split_and_suffix() -> None:
    assert split_filename("a.b,S=5:2,FS") == ("a.b,S=5", ":2,FS")
    assert split_filename("a.b") == ("a.b", "")
    assert make_suffix("SFRaS") == ":2,FRSa"


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (b"A: b\r\n\r\nbody\n\n", b"A: b\r\n\r\n"),
        (b"A: b\n\nbody", b"A: b\n\n"),
        (b"A: b\r\nC: d\n\nx\r\n\r\n", b"A: b\r\nC: d\n\n"),
        (b"A: b", b"A: b"),
        (b"\r\nbody", b"\r\n"),
    ],
)
def test_header_blocks(data: bytes, header: bytes) -> None:
    assert header_block(data) == header
    assert read_header_block(io.BytesIO(data)) == header


def test_read_header_block_across_chunks() -> None:
    data = b"X: " + b"y" * 8190 + b"\r\n\r\nbody"
    assert read_header_block(io.BytesIO(data)) == data[: data.index(b"\r\n\r\n") + 4]


@given(st.binary(max_size=200))
def test_normalize_line_ends(data: bytes) -> None:
    out = normalize_line_ends(data)
    assert out.replace(b"\r\n", b"").count(b"\n") == 0
    assert out.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


def test_write_message_durable_and_never_overwrites(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    w1 = write_message(tmp_path, b"one", None)
    w2 = write_message(tmp_path, b"two", "S", mtime=1_000_000_000.0)
    assert (tmp_path / "new" / w1.filename).read_bytes() == b"one"
    assert w2.subdir == "cur" and w2.filename.endswith(":2,S") and w2.mtime == 1_000_000_000.0
    assert os.listdir(tmp_path / "tmp") == []
    src = tmp_path / "tmp" / "x"
    src.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        link_no_clobber(src, tmp_path / "new" / w1.filename)
    assert (tmp_path / "new" / w1.filename).read_bytes() == b"one"


def test_parse_uidlist_variants() -> None:
    ul = dovecot.parse_uidlist("3 V42 N7 Gabc\n1 :a.b\n3 W10 S9 :c.d:2,S\nbad line\n0 :zero\n")
    assert ul is not None and (ul.uidvalidity, ul.nextuid) == (42, 7)
    assert ul.uids == {"a.b": 1, "c.d": 3}
    assert dovecot.parse_uidlist("1 42 9\n5 x.y\n").uids == {"x.y": 5}
    assert dovecot.parse_uidlist("") is None
    assert dovecot.parse_uidlist("9 nonsense\n") is None
    assert dovecot.parse_uidlist("3 N5\n1 :a\n") is None  # no UIDVALIDITY
    text = dovecot.format_uidlist(42, 7, [(1, "a.b"), (3, "c.d")])
    again = dovecot.parse_uidlist(text)
    assert again is not None and again.uids == {"a.b": 1, "c.d": 3} and again.nextuid == 7


def test_parse_keywords() -> None:
    assert dovecot.parse_keywords("0 $Junk\n2 work\nx bad\n30 toolarge\n") == ["$Junk", None, "work"]
    assert dovecot.format_keywords(["$Junk", None, "work"]) == "0 $Junk\n2 work\n"
