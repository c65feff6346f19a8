"""Byte-level tests of the IMAP framer, parser and sequence sets."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from mailsuite.imap.framing import Continue, Framer, Line, RawCommand, Refused, TooLong
from mailsuite.imap.parser import ParseError, Section, parse_command
from mailsuite.imap.seqset import SequenceSet, format_set


def events(data: bytes | list[bytes], limit: int = 1000, max_line: int = 200) -> list:
    f = Framer(lambda first, size, total: size <= limit, max_line=max_line)
    out = []
    for chunk in [data] if isinstance(data, bytes) else data:
        f.feed(chunk)
        while (e := f.next_event()) is not None:
            out.append(e)
    return out


def parse(line: bytes):
    (raw,) = [e for e in events(line, max_line=100000) if isinstance(e, RawCommand)]
    return parse_command(raw)


# -- framing


def test_synchronizing_literal_asks_for_continuation():
    ev = events(b"a LOGIN {5}\r\n")
    assert ev == [Continue("a", 5)]


def test_literal_bytes_are_never_commands():
    ev = events(b"a LOGIN {14}\r\nb LOGOUT\r\nxx\r\n pw\r\n")
    assert isinstance(ev[0], Continue)
    cmd = parse_command(ev[1])
    assert cmd.name == "LOGIN" and cmd.args["user"] == b"b LOGOUT\r\nxx\r\n"
    assert len(ev) == 2


def test_oversized_sync_literal_refused_before_continuation():
    ev = events(b"a APPEND INBOX {5000}\r\nb NOOP\r\n")
    assert isinstance(ev[0], Refused) and ev[0].tag == "a" and ev[0].synchronizing
    assert parse_command(ev[1]).name == "NOOP"


def test_oversized_nonsync_literal_is_swallowed():
    body = b"c LOGOUT\r\n" * 200  # 2000 bytes that must not run
    ev = events(b"a APPEND INBOX {2000+}\r\n" + body + b" trailing\r\nb NOOP\r\n")
    assert isinstance(ev[0], Refused) and not ev[0].synchronizing
    assert [parse_command(e).name for e in ev[1:]] == ["NOOP"]


def test_literal_plus_and_literal8():
    ev = events(b"a APPEND INBOX (\\Seen) ~{3+}\r\nabc\r\n")
    cmd = parse_command(ev[0])
    assert cmd.args["message"] == b"abc" and cmd.args["binary"] and cmd.args["flags"] == ["\\Seen"]


def test_line_too_long_is_bad_and_discarded():
    ev = events(b"a NOOP " + b"x" * 300 + b"\r\nb NOOP\r\n")
    assert isinstance(ev[0], TooLong) and ev[0].tag == "a"
    assert parse_command(ev[1]).tag == "b"


def test_unterminated_long_line_is_bounded():
    f = Framer(lambda *a: True, max_line=100)
    f.feed(b"a " + b"x" * 1000)
    assert isinstance(f.next_event(), TooLong)
    for _ in range(100):
        f.feed(b"y" * 1000)
        assert f.next_event() is None
    assert f.buffered() <= 1100
    f.feed(b"\r\nb NOOP\r\n")
    assert parse_command(f.next_event()).tag == "b"


def test_line_mode_and_clear():
    f = Framer(lambda *a: True)
    f.feed(b"a STARTTLS\r\nb LOGIN x y\r\n")
    assert parse_command(f.next_event()).name == "STARTTLS"
    f.clear()
    assert f.next_event() is None
    f.line_mode = True
    f.feed(b"DONE\r\n")
    assert f.next_event() == Line(b"DONE")


def test_literal_total_passed_to_policy():
    seen = []
    f = Framer(lambda first, size, total: seen.append((first, size, total)) or True)
    f.feed(b"a LOGIN {1}\r\nx {2}\r\nyy\r\n")
    while f.next_event() is not None:
        pass
    assert [s[1] for s in seen] == [1, 2] and seen[1][2] > seen[0][2]


# -- commands


def test_thunderbird_header_fetch():
    cmd = parse(
        b"5 UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
        b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To Received)])\r\n"
    )
    assert cmd.uid and cmd.name == "FETCH"
    names = [a.name for a in cmd.args["atts"]]
    assert names == ["UID", "RFC822.SIZE", "FLAGS", "BODY[]"]
    att = cmd.args["atts"][3]
    assert att.peek and att.section.text == "HEADER.FIELDS" and len(att.section.fields) == 15


def test_fetch_partial_and_sections():
    cmd = parse(b"a FETCH 1 (BODY.PEEK[]<0.65536> BODY[1.2.MIME] BINARY[2]<5.10> BINARY.SIZE[1] RFC822)\r\n")
    a = cmd.args["atts"]
    assert a[0].partial == (0, 65536) and a[0].section == Section()
    assert a[1].section == Section((1, 2), "MIME") and not a[1].peek
    assert a[2].name == "BINARY[]" and a[2].partial == (5, 10)
    assert a[3].name == "BINARY.SIZE[]" and a[4].name == "RFC822"
    assert Section((1,), "HEADER.FIELDS", ("From", "X y")).spec() == '1.HEADER.FIELDS (FROM "X Y")'


@pytest.mark.parametrize("macro,n", [(b"ALL", 4), (b"FAST", 3), (b"FULL", 5), (b"flags", 1)])
def test_fetch_macros(macro, n):
    assert len(parse(b"a FETCH 1:3 " + macro + b"\r\n").args["atts"]) == n


@pytest.mark.parametrize(
    "line",
    [
        b"a FETCH 1 (BODY[MIME])\r\n",
        b"a FETCH 1 (BODY[1.])\r\n",
        b"a FETCH 1 (BODY[HEADER.FIELDS ()])\r\n",
        b"a FETCH 1 (BINARY[TEXT])\r\n",
        b"a FETCH 1 ()\r\n",
        b"a FETCH 0 FLAGS\r\n",
        b"a FETCH 1 FLAGS extra\r\n",
        b"a FETCH 1:5000000000 FLAGS\r\n",
        b"a STORE 1 +FLAGS (\\Recent)\r\n",
        b"a SEARCH FOO\r\n",
        b"a SEARCH\r\n",
        b"a SEARCH (ALL\r\n",
        b"a SEARCH BEFORE 31-Feb-2020\r\n",
        b"a LOGIN\r\n",
        b"a  NOOP\r\n",
        b"a FROB\r\n",
        b"a UID NOOP\r\n",
        b"* NOOP\r\n",
        b"a SELECT \"x\xff\"\r\n",
        b"a APPEND INBOX \"bad\" {1+}\r\nx\r\n",
    ],
)
def test_bad_syntax(line):
    (raw,) = [e for e in events(line) if isinstance(e, RawCommand)]
    with pytest.raises(ParseError):
        parse_command(raw)


def test_search_full_grammar():
    cmd = parse(
        b"t UID SEARCH RETURN (MIN MAX COUNT ALL) CHARSET UTF-8 ANSWERED BCC b BEFORE 1-Feb-2020 BODY x "
        b"CC c DELETED DRAFT FLAGGED FROM f HEADER X-Y z KEYWORD $k LARGER 5 NEW NOT OLD ON 2-Feb-2020 "
        b"OR RECENT SEEN SENTBEFORE 3-Mar-2021 SENTON 4-Mar-2021 SENTSINCE 5-Mar-2021 SINCE 6-Mar-2021 "
        b"SMALLER 9 SUBJECT \"s s\" TEXT t TO o UID 1:* UNANSWERED UNDELETED UNDRAFT UNFLAGGED "
        b"UNKEYWORD k UNSEEN 1,3:* (ALL (SEEN)) MODSEQ 5 MODSEQ \"/flags/\\\\seen\" all 7\r\n"
    )
    keys = cmd.args["keys"][1]
    assert cmd.args["returns"] == ["MIN", "MAX", "COUNT", "ALL"] and cmd.args["charset"] == "UTF-8"
    assert ("HEADER", "SUBJECT", b"s s") in keys
    assert ("DATE", "internal", "<", dt.date(2020, 2, 1)) in keys
    assert ("SIZE", ">", 5) in keys and ("MODSEQ", 7) in keys
    assert ("OR", ("FLAG", "\\Recent", True), ("FLAG", "\\Seen", True)) in keys


def test_search_nesting_limit():
    deep = b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100 + b"\r\n"
    with pytest.raises(ParseError):
        parse(deep)
    nots = b"a SEARCH " + b"NOT " * 100 + b"ALL\r\n"
    with pytest.raises(ParseError):
        parse(nots)
    assert parse(b"a SEARCH " + b"(" * 10 + b"ALL" + b")" * 10 + b"\r\n").name == "SEARCH"


def test_list_forms():
    cmd = parse(b'a list (subscribed) "" "*" return (special-use)\r\n')
    assert cmd.args["selection"] == ["SUBSCRIBED"] and cmd.args["returns"] == ["SPECIAL-USE"]
    cmd = parse(b'a LIST "" %\r\n')
    assert cmd.args["patterns"] == ["%"] and not cmd.args["extended"]
    cmd = parse(b'a LIST "" ("INBOX" Sent*) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n')
    assert cmd.args["patterns"] == ["INBOX", "Sent*"] and cmd.args["status"] == ["MESSAGES", "UNSEEN"]


def test_misc_commands():
    assert parse(b'a select "inbox" (CONDSTORE)\r\n').args == {"mailbox": "INBOX", "condstore": True}
    assert parse(b"a STATUS Sent (UIDNEXT MESSAGES UNSEEN RECENT)\r\n").args["items"][0] == "UIDNEXT"
    assert parse(b'a ID ("name" "Thunderbird" "version" NIL)\r\n').args["params"] == {
        "name": "Thunderbird", "version": None}
    assert parse(b"a ID NIL\r\n").args["params"] is None
    assert parse(b"a AUTHENTICATE PLAIN AGFsaWNlAHg=\r\n").args["initial"] == b"AGFsaWNlAHg="
    assert parse(b"a ENABLE UTF8=ACCEPT CONDSTORE\r\n").args["capabilities"] == ["UTF8=ACCEPT", "CONDSTORE"]
    st_ = parse(b"a UID STORE 1:3 (UNCHANGEDSINCE 9) -FLAGS.SILENT \\Seen \\Flagged\r\n")
    assert st_.args["unchangedsince"] == 9 and st_.args["mode"] == "-" and st_.args["silent"]
    assert parse(b"a UID MOVE 1:* Trash\r\n").args["mailbox"] == "Trash"
    assert parse(b"a RENAME a b\r\n").args == {"old": "a", "new": "b"}
    assert parse(b"a APPEND Drafts UTF8 (~{2+}\r\nhi)\r\n").args["message"] == b"hi"


@pytest.mark.parametrize("line, key, value", [
    (b"a STORE 1 FLAGS ()\r\n", "flags", []),                                   # an empty flag list
    (b'a LIST () "" *\r\n', "selection", []),
    (b'a ID ()\r\n', "params", {}),
    (b"a SETQUOTA \"\" ()\r\n", "limits", []),
    (b"a SETQUOTA \"\" (STORAGE 512 MESSAGE 9)\r\n", "limits", [("STORAGE", 512), ("MESSAGE", 9)]),
    (b"a FETCH 1 (UID FLAGS) (CHANGEDSINCE 7)\r\n", "changedsince", 7),
    (b"a SELECT INBOX ()\r\n", "condstore", False),
])
def test_parenthesised_lists(line, key, value):
    """RFC 3501 §9: ``"(" x *(SP x) ")"``; the lists that may be empty parse as empty."""
    assert parse(line).args[key] == value


@pytest.mark.parametrize("line", [
    b"a STORE 1 FLAGS (\\Seen\\Draft)\r\n",             # no SP between elements
    b"a STORE 1 FLAGS ( \\Seen)\r\n",                    # SP before the first
    b"a STORE 1 FLAGS (\\Seen )\r\n",                    # SP before the ")"
    b"a STORE 1 FLAGS (\\Seen\r\n",                      # no ")"
    b"a STATUS INBOX ()\r\n",                             # STATUS needs an item (RFC 3501 §6.3.10)
    b"a FETCH 1 ()\r\n",                                  # and FETCH an attribute
    b'a FETCH 1 BODY[HEADER.FIELDS ()]\r\n',              # and HEADER.FIELDS a name
    b'a LIST "" ()\r\n',                                  # and LIST-EXTENDED a pattern (RFC 5258)
    b'a ID ("a" "b""c" "d")\r\n',
])
def test_parenthesised_list_errors(line):
    with pytest.raises(ParseError):
        parse(line)


# -- sequence sets


def test_seqset_resolution_is_bounded():
    s = SequenceSet.parse(b"1:4294967295")
    assert s.seqnums(3) == [1, 2, 3]
    assert s.indexes([5, 9, 4000000000]) == [0, 1, 2]
    assert SequenceSet.parse(b"*").seqnums(0) == []
    assert SequenceSet.parse(b"5:*").indexes([1, 2, 3]) == [2]  # RFC 3501 §6.4.8
    assert SequenceSet.parse(b"3:1,2,7:*").seqnums(8) == [1, 2, 3, 7, 8]
    assert SequenceSet.parse(b"$").saved
    assert format_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    for bad in (b"0", b"1:", b"a", b"1,,2", b"4294967296"):
        with pytest.raises(ValueError):
            SequenceSet.parse(bad)


# -- properties

SAMPLE = (
    b"a1 CAPABILITY\r\na2 LOGIN {5}\r\nalice {6+}\r\nsecret\r\na3 SELECT INBOX\r\n"
    b"a4 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)])\r\n"
    b"a5 APPEND INBOX {3000}\r\na6 APPEND INBOX {4000+}\r\n" + b"z" * 4000 + b"\r\n"
    b"a7 NOOP " + b"q" * 250 + b"\r\na8 SEARCH OR (FROM x) NOT SEEN\r\n"
)


def _describe(evs):
    out = []
    for e in evs:
        if isinstance(e, RawCommand):
            try:
                out.append(parse_command(e))
            except ParseError as exc:
                out.append(("BAD", exc.tag))
        else:
            out.append(e)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_packet_split_invariance(cuts):
    cuts = sorted(set(cuts))
    pieces = [SAMPLE[a:b] for a, b in zip([0] + cuts, cuts + [len(SAMPLE)])]
    assert _describe(events(pieces)) == _describe(events(SAMPLE))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_input_never_raises_unexpectedly(data):
    _describe(events(data))


ALPHABET = st.sampled_from(
    [b"a ", b"UID ", b"FETCH ", b"SEARCH ", b"1:*", b"(", b")", b" ", b"\"", b"{3}\r\n", b"{2+}\r\n",
     b"\r\n", b"BODY[", b"]", b"<0.5>", b"NOT ", b"OR ", b"\\Seen", b"STORE ", b"+FLAGS ", b"LIST ",
     b"*", b"%", b"~{1+}\r\n", b"x"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=40))
def test_random_token_soup_never_raises_unexpectedly(parts):
    _describe(events(b"".join(parts)))
