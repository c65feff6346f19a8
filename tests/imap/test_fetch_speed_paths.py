"""The fast FETCH paths give the very bytes of the general ones: HEADER.FIELDS(.NOT) of the top-level
header by a plain scan (not a MIME parse), whole-file reads of small literals, per-command plans of
labels, the cached echoed section spec."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsuite import mime
from mailsuite.imap import mimeview
from mailsuite.imap.message import CHUNK, WHOLE_READ, Message
from mailsuite.imap.parser import _ATOM_SPECIALS, Section, _quote_if_needed
from mailsuite.store.maildir import header_block, read_header_block

from .harness import Session, make_store

_REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("MAILSUITE_MIME_CORPUS", _REPO.parent / "shared" / "mime-corpus"))
_MESSAGES = sorted((CORPUS / "messages").glob("*")) if (CORPUS / "messages").is_dir() else []

THUNDERBIRD = ("From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "Priority", "X-Priority", "References",
               "Newsgroups", "In-Reply-To", "Content-Type", "Reply-To", "Received")
FIELD_LISTS = [
    THUNDERBIRD,
    ("subject",),
    ("SUBJECT", "from", "x-unknown"),
    ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"),
    ("X y", "a:b", " from", "from ", "Subject\r", ""),  # names only the general scan can select
    ("Received", "DKIM-Signature", "Return-Path"),
]


def _reference(block: bytes, fields: tuple[str, ...], negate: bool) -> bytes:
    """What HEADER.FIELDS(.NOT) was before the fast path: mailsuite.mime on the parsed block."""
    text = "HEADER.FIELDS.NOT" if negate else "HEADER.FIELDS"
    return mime.section_bytes(mime.parse_message(block), mime.SectionSpec((), text, fields))


def _fast(block: bytes, fields: tuple[str, ...], negate: bool) -> bytes:
    return mimeview.header_fields(block, Section((), "HEADER.FIELDS", fields).field_keys, negate)


# -- HEADER.FIELDS(.NOT) scan ----------------------------------------------------------------------------


@pytest.mark.skipif(not _MESSAGES, reason=f"MIME corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", _MESSAGES, ids=lambda p: p.name)
def test_header_fields_scan_equals_mime_on_corpus(path):
    data = path.read_bytes()
    blocks = {header_block(data), read_header_block(io.BytesIO(data)), data}
    names = {f.name.decode("utf-8", "replace") for f in mime.parse_message(data).fields}
    lists = FIELD_LISTS + [tuple(sorted(names)), tuple(n.upper() for n in names)]
    for block in blocks:
        for fields in lists:
            for negate in (False, True):
                assert _fast(block, fields, negate) == _reference(block, fields, negate), (fields, negate)


_PIECES = [b"From", b"from", b"TO", b"Subject", b"X-Y", b"x y", b"a", b"\xc3\xa9", b":", b": ", b" ", b"\t",
           b"\r\n", b"\n", b"\r", b"value", b"--b", b"Content-Type: multipart/mixed; boundary=b"]
_NAMES = ["From", "to", "SUBJECT", "x-y", "X Y", "a", "a:b", " from", "from ", "é", "É", "value", "", "to\r"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4),
       st.booleans())
def test_header_fields_scan_equals_mime_on_generated_headers(pieces, fields, negate):
    block = b"".join(pieces)
    assert _fast(block, tuple(fields), negate) == _reference(block, tuple(fields), negate)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_PIECES[:-2] + [b"Received", b"Message-ID"]), max_size=60), st.booleans())
def test_header_fields_scan_equals_mime_for_thunderbird_list(pieces, negate):
    block = b"".join(pieces)
    assert _fast(block, THUNDERBIRD, negate) == _reference(block, THUNDERBIRD, negate)


def test_header_fields_keeps_order_continuations_and_blank_line():
    block = (b"Received: from a\r\n\tby b\r\nSubject: Hi\r\nX-Other: 1\r\nfrom : x\r\n  y\r\n"
             b"RECEIVED: 2\r\n\r\n")
    assert _fast(block, ("received", "From"), False) == (
        b"Received: from a\r\n\tby b\r\nfrom : x\r\n  y\r\nRECEIVED: 2\r\n\r\n")
    assert _fast(block, ("received", "From"), True) == b"Subject: Hi\r\nX-Other: 1\r\n\r\n"
    assert _fast(b"Subject: no line end", ("subject",), False) == b"Subject: no line end\r\n\r\n"
    assert _fast(b"", ("subject",), False) == b"\r\n"


def test_header_fields_section_does_not_parse(monkeypatch):
    msg = Message(lambda: pytest.fail("opened"), 0, lambda: b"From: a\r\nTo: b\r\n\r\n")
    monkeypatch.setattr(mimeview.mime, "parse_message", lambda data: pytest.fail("parsed"))
    sec = Section((), "HEADER.FIELDS", ("to",))
    assert mimeview.section(msg, sec) == b"To: b\r\n\r\n"
    assert mimeview.section(msg, Section((), "HEADER.FIELDS.NOT", ("to",))) == b"From: a\r\n\r\n"


# -- the echoed section spec -----------------------------------------------------------------------------


def _quote_reference(s: str) -> str:
    """RFC 3501 §9: an atom if every char is ASCII above SP and no atom-special, else a quoted string."""
    if s and all(c.isascii() and ord(c) > 0x20 and ord(c) not in _ATOM_SPECIALS for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.text(max_size=12))
def test_quote_if_needed_matches_the_atom_rule(s):
    assert _quote_if_needed(s) == _quote_reference(s)


def test_section_spec_is_computed_once():
    sec = Section((), "HEADER.FIELDS", ("From", "x y", "Message-ID"))
    assert sec.spec() == 'HEADER.FIELDS (FROM "X Y" MESSAGE-ID)'
    assert sec.spec() is sec.spec()
    assert sec.field_keys == frozenset({b"from", b"x y", b"message-id"})
    assert sec == Section((), "HEADER.FIELDS", ("From", "x y", "Message-ID")) and hash(sec) == hash(
        Section((), "HEADER.FIELDS", ("From", "x y", "Message-ID")))


# -- Message ranges --------------------------------------------------------------------------------------


def test_read_range_reads_once_and_pads_a_shrunk_file():
    opened = []

    def opener():
        opened.append(1)
        return io.BytesIO(b"0123456789")

    msg = Message(opener, 10, lambda: b"")
    assert msg.read_range(2, 5) == b"23456" and len(opened) == 1
    assert msg.read_range(8, 5) == b"89   "  # RFC 3501 §4.3: the announced length is kept
    assert msg.read_range(3, 0) == b""
    msg.raw()
    assert msg.read_range(8, 4) == b"89  "
    assert b"".join(msg.iter_range(8, 4)) == b"89  "


def test_iter_range_of_a_big_range_is_chunked():
    data = bytes(range(256)) * (WHOLE_READ // 256 + 3)
    msg = Message(lambda: io.BytesIO(data), len(data), lambda: b"")
    chunks = list(msg.iter_range(5, len(data) - 5))
    assert b"".join(chunks) == data[5:] and max(map(len, chunks)) == CHUNK


# -- whole FETCH responses through the engine ------------------------------------------------------------


def _crlf_message(i: int, body_size: int) -> bytes:
    head = (b"Received: from x%d\r\n\tby y\r\nFrom: A <a@example.org>\r\nTo: b@example.org\r\n"
            b"Subject: msg %d\r\nX-Other: z\r\n\r\n" % (i, i))
    line = b"the quick brown fox jumps over the lazy dog %d\r\n" % i
    return head + line * (body_size // len(line) + 1)


@pytest.fixture()
def sess(tmp_path):
    store = make_store(tmp_path)
    s = Session(store)
    s.login()
    yield s
    store.close()


def _append(s: Session, data: bytes) -> None:
    out = s.send(b"ap APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    assert b"ap OK" in out, out


def test_fetch_body_small_and_big_messages_byte_exact(sess):
    small, big = _crlf_message(1, 3000), _crlf_message(2, WHOLE_READ * 2 + 12345)
    _append(sess, small)
    _append(sess, big)
    sess.cmd("s SELECT INBOX")
    out = sess.cmd("f UID FETCH 1:* (FLAGS BODY.PEEK[])")
    assert out == (b"* 1 FETCH (UID 1 FLAGS (\\Recent) BODY[] {%d}\r\n" % len(small) + small + b")\r\n"
                   b"* 2 FETCH (UID 2 FLAGS (\\Recent) BODY[] {%d}\r\n" % len(big) + big + b")\r\n"
                   b"f OK FETCH completed\r\n")
    hlen = small.index(b"\r\n\r\n") + 4
    out = sess.cmd("g FETCH 1:2 (RFC822.SIZE BODY.PEEK[TEXT]<10.20> BODY.PEEK[]<5.7>)")
    bhlen = big.index(b"\r\n\r\n") + 4
    assert out == (b"* 1 FETCH (RFC822.SIZE %d BODY[TEXT]<10> {20}\r\n" % len(small) + small[hlen + 10:hlen + 30]
                   + b" BODY[]<5> {7}\r\n" + small[5:12] + b")\r\n"
                   b"* 2 FETCH (RFC822.SIZE %d BODY[TEXT]<10> {20}\r\n" % len(big) + big[bhlen + 10:bhlen + 30]
                   + b" BODY[]<5> {7}\r\n" + big[5:12] + b")\r\n"
                   b"g OK FETCH completed\r\n")
    out = sess.cmd("h FETCH 2 (RFC822.TEXT UID)")
    assert out.startswith(b"* 2 FETCH (RFC822.TEXT {%d}\r\n" % (len(big) - bhlen) + big[bhlen:] + b" UID 2 FLAGS (")
    assert out.endswith(b"h OK FETCH completed\r\n")


def test_fetch_header_fields_through_engine_equals_mime(sess):
    msgs = [_crlf_message(i, 200) for i in range(3)]
    for m in msgs:
        _append(sess, m)
    sess.cmd("s EXAMINE INBOX")
    fields = "(From To Cc Bcc Subject Date Message-ID Received)"
    out = sess.cmd(f"t UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS {fields}])")
    label = b"BODY[HEADER.FIELDS (FROM TO CC BCC SUBJECT DATE MESSAGE-ID RECEIVED)]"
    expected = b""
    for i, m in enumerate(msgs, 1):
        data = _reference(header_block(m), ("From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "Received"),
                          False)
        expected += b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS (\\Recent) %s {%d}\r\n%s)\r\n" % (
            i, i, len(m), label, len(data), data)
    assert out == expected + b"t OK FETCH completed\r\n"
    out = sess.cmd("u FETCH 2 (BODY.PEEK[HEADER.FIELDS.NOT (Received X-Other)]<0.12> ENVELOPE)")
    data = _reference(header_block(msgs[1]), ("Received", "X-Other"), True)
    assert out.startswith(b"* 2 FETCH (BODY[HEADER.FIELDS.NOT (RECEIVED X-OTHER)]<0> {12}\r\n" + data[:12]
                          + b" ENVELOPE (")


def test_plans_and_flag_caches_follow_each_command(sess):
    _append(sess, _crlf_message(1, 100))
    sess.cmd("s SELECT INBOX")
    assert sess.cmd("a FETCH 1 (FLAGS)").startswith(b"* 1 FETCH (FLAGS (\\Recent))")
    sess.cmd("b STORE 1 +FLAGS.SILENT (\\Seen $Work)")
    assert sess.cmd("c FETCH 1 (FLAGS)").startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent $Work))")
    assert sess.cmd("d UID FETCH 1 (FLAGS)").startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent $Work))")
    out = sess.cmd("e FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[HEADER.FIELDS (To)])")
    assert out == (b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: msg 1\r\n\r\n "
                   b"BODY[HEADER.FIELDS (TO)] {21}\r\nTo: b@example.org\r\n\r\n)\r\ne OK FETCH completed\r\n")
