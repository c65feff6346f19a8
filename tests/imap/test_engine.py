"""Byte-level tests of the pure IMAP engine over a real store in a temp dir."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .harness import MESSAGE, Session, make_store
from .imapcheck import fetch_items, responses, tagged, untagged
from mailsuite.imap.engine import Authenticate, AuthFailed, StartTLS


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


@pytest.fixture
def s(store):
    sess = Session(store)
    sess.login()
    return sess


def append(sess: Session, data: bytes = MESSAGE, box: str = "INBOX", flags: str = "") -> bytes:
    out = sess.send(b"ap APPEND %s %s{%d+}\r\n" % (box.encode(), flags.encode(), len(data)) + data + b"\r\n")
    assert b"ap OK [APPENDUID" in out, out
    return out


# -- security


def test_plaintext_refuses_login_without_checking(store):
    sess = Session(store, tls=False)
    assert b"LOGINDISABLED" in sess.greeting and b"STARTTLS" in sess.greeting
    assert b"AUTH=" not in sess.greeting
    out = sess.cmd("a LOGIN alice@example.org secret")
    assert tagged(out, b"a")[1] == b"NO" and b"PRIVACYREQUIRED" in out
    out = sess.cmd("b AUTHENTICATE PLAIN")
    assert tagged(out, b"b")[1] == b"NO" and not out.startswith(b"+")
    assert not any(isinstance(a, Authenticate) for a in sess.actions)


def test_loopback_exemption(store):
    sess = Session(store, tls=False, plaintext_ok=True)
    assert b"AUTH=PLAIN" in sess.greeting and b"LOGINDISABLED" not in sess.greeting
    sess.login()


def test_starttls_drops_pipelined_plaintext(store):
    sess = Session(store, tls=False)
    out = sess.send(b"a STARTTLS\r\nb LOGIN alice@example.org secret\r\nc NOOP\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert any(isinstance(a, StartTLS) for a in sess.actions)
    assert not any(isinstance(a, Authenticate) for a in sess.actions)
    out = sess.cmd("d CAPABILITY")
    assert b"STARTTLS" not in out and b"AUTH=PLAIN" in out
    assert tagged(sess.cmd("e STARTTLS"), b"e")[1] == b"BAD"


def test_authenticate_plain_waits_for_continuation(store):
    sess = Session(store)
    out = sess.cmd("a AUTHENTICATE PLAIN")
    assert out == b"+ \r\n"
    out = sess.send(base64.b64encode(b"\0alice@example.org\0secret") + b"\r\n")
    assert tagged(out, b"a")[1] == b"OK" and b"[CAPABILITY IMAP4rev1" in out
    assert sess.engine.user == "alice@example.org"


def test_authenticate_sasl_ir_and_login_mechanism(store):
    sess = Session(store)
    ir = base64.b64encode(b"\0bob@example.org\0hunter2").decode()
    assert tagged(sess.cmd(f"a AUTHENTICATE PLAIN {ir}"), b"a")[1] == b"OK"
    sess = Session(store)
    assert sess.cmd("b AUTHENTICATE LOGIN") == b"+ VXNlcm5hbWU6\r\n"
    assert sess.send(base64.b64encode(b"alice@example.org") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert tagged(sess.send(base64.b64encode(b"secret") + b"\r\n"), b"b")[1] == b"OK"


def test_authenticate_cancel_and_garbage(store):
    sess = Session(store)
    sess.cmd("a AUTHENTICATE PLAIN")
    assert tagged(sess.send(b"*\r\n"), b"a")[1] == b"BAD"
    sess.cmd("b AUTHENTICATE PLAIN")
    assert tagged(sess.send(b"!!!notbase64\r\n"), b"b")[1] == b"BAD"
    assert tagged(sess.cmd("c NOOP"), b"c")[1] == b"OK"


@pytest.mark.parametrize("response, user, reply", [
    (b"\0alice@example.org", "alice@example.org", b"BAD"),           # RFC 4616: two NULs needed
    (b"alice@example.org", "", b"BAD"),
    (b"bob@example.org\0alice@example.org\0secret", "alice@example.org", b"NO [AUTHORIZATIONFAILED]"),
    (None, "", b"BAD"),                                                # not base64
])
def test_bad_plain_responses_count_as_failed_logins(store, response, user, reply):
    """A malformed AUTHENTICATE PLAIN response or another authorization identity is a failed login:
    logged for fail2ban (AuthFailed action) and counted toward auth.max_failures (DESIGN §4)."""
    sess = Session(store)
    for i in range(3):
        assert sess.cmd(f"a{i} AUTHENTICATE PLAIN") == b"+ \r\n"
        line = b"!!!notbase64" if response is None else base64.b64encode(response)
        out = sess.send(line + b"\r\n")
        assert out.startswith(f"a{i} ".encode() + reply), out
        assert sess.actions[-1] == AuthFailed(user)
        assert (b"* BYE" in out) == (i == 2) and sess.closed == (i == 2)
    assert not any(isinstance(a, Authenticate) for a in sess.actions)


def test_sasl_ir_proxy_attempt_counts_with_wrong_passwords(store):
    sess = Session(store)
    sess.cmd("a LOGIN alice@example.org wrong")
    ir = base64.b64encode(b"bob@example.org\0alice@example.org\0secret").decode()
    assert b"b NO [AUTHORIZATIONFAILED]" in sess.cmd(f"b AUTHENTICATE PLAIN {ir}")
    out = sess.cmd("c LOGIN alice@example.org wrong")
    assert b"c NO [AUTHENTICATIONFAILED]" in out and b"* BYE" in out and sess.closed


def test_failed_logins_then_bye(store):
    sess = Session(store)
    for i in range(2):
        out = sess.cmd(f"a{i} LOGIN alice@example.org wrong")
        assert b"NO [AUTHENTICATIONFAILED]" in out
    out = sess.cmd("a3 LOGIN alice@example.org wrong")
    assert b"* BYE" in out and sess.closed


def test_literal_too_big_refused_before_continuation(store):
    sess = Session(store, max_literal=1000)
    sess.login()
    out = sess.send(b"a APPEND INBOX {5000}\r\n")
    assert out == b"a NO [TOOBIG] Message too big\r\n"
    out = sess.send(b"b LOGIN {100000}\r\n")
    assert b"+" not in out and b"b BAD" in out


def test_commands_inside_literal_are_not_run(s):
    body = b"Subject: x\r\n\r\nz LOGOUT\r\nz2 DELETE Trash\r\n"
    out = s.send(b"a APPEND INBOX {%d}\r\n" % len(body))
    assert out == b"+ Ready for literal data\r\n"
    out = s.send(body + b"\r\n")
    assert b"BYE" not in out and tagged(out, b"a")[1] == b"OK"
    assert b"Trash" in s.cmd('b LIST "" Trash')


def test_nesting_and_line_limits(s):
    s.cmd("x SELECT INBOX")
    out = s.cmd("a SEARCH " + "(" * 200 + "ALL" + ")" * 200)
    assert tagged(out, b"a")[1] == b"BAD"
    out = s.send(b"b NOOP " + b"x" * 70000 + b"\r\n")
    assert tagged(out, b"b")[1] == b"BAD"
    assert tagged(s.cmd("c NOOP"), b"c")[1] == b"OK"


def test_internal_errors_are_not_exposed(s):
    def boom():
        raise RuntimeError("secret /srv/path detail")

    s.engine.mail.folders = boom
    out = s.cmd('a LIST "" "*"')
    assert b"secret" not in out and b"Traceback" not in out
    assert tagged(out, b"a")[1] == b"NO"
    assert tagged(s.cmd("b NOOP"), b"b")[1] == b"OK"


def test_mailbox_names_validated(s):
    for bad in ('"a..b"', '"../etc"', '"a/b"', '".x"', '"x."', '"&Jjo"', '"foo*"'):
        out = s.cmd(f"a CREATE {bad}")
        r = tagged(out, b"a")
        assert r[1] == b"NO" or (bad == '"x."' and r[1] == b"OK"), (bad, out)
    out = s.cmd('b CREATE "Entw&APw-rfe"')
    assert tagged(out, b"b")[1] == b"OK"
    assert b'"." Entw&APw-rfe' in s.cmd('c LIST "" "Entw*"')
    s.cmd("d ENABLE UTF8=ACCEPT")
    assert '"." "Entwürfe"'.encode() in s.cmd('e LIST "" "Entw*"')


# -- mailbox commands


def test_thunderbird_discovery_shapes(s):
    out = s.cmd("1 capability")
    assert tagged(out, b"1")[1] == b"OK"
    caps = untagged(out, b"CAPABILITY")[0]
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"LIST-EXTENDED", b"CONDSTORE", b"LITERAL+"):
        assert cap in caps
    out = s.cmd('2 ID ("name" "Thunderbird" "version" "115.0")')
    assert untagged(out, b"ID") and tagged(out, b"2")[1] == b"OK"
    out = s.cmd("3 NAMESPACE")
    assert untagged(out, b"NAMESPACE")[0][2] == [[b"", b"."]]
    out = s.cmd("4 ENABLE UTF8=ACCEPT")
    assert untagged(out, b"ENABLED")[0][2:] == [b"UTF8=ACCEPT"]
    out = s.cmd('5 list (subscribed) "" "*" return (special-use)')
    lists = untagged(out, b"LIST")
    attrs = {r[4]: r[2] for r in lists}
    assert b"\\Sent" in attrs[b"Sent"] and b"\\Trash" in attrs[b"Trash"] and b"\\Subscribed" in attrs[b"INBOX"]
    out = s.cmd('6 list "" "*"')
    assert len(untagged(out, b"LIST")) == 6
    out = s.cmd('7 lsub "" "*"')
    assert len(untagged(out, b"LSUB")) == 6
    out = s.cmd('8 STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)')
    assert untagged(out, b"STATUS")[0][3] == [b"UIDNEXT", b"1", b"MESSAGES", b"0", b"UNSEEN", b"0", b"RECENT", b"0"]


def test_thunderbird_folder_sync_shapes(s):
    append(s)
    append(s, flags="(\\Seen $label1) ")
    out = s.cmd('9 select "INBOX"')
    assert untagged(out, b"EXISTS")[0][1] == b"2" and b"[READ-WRITE]" in out
    assert b"[UIDVALIDITY" in out and b"[UIDNEXT 3]" in out and b"$label1" in out
    out = s.cmd("10 UID fetch 1:* (FLAGS)")
    fetches = untagged(out, b"FETCH")
    assert [fetch_items(f)[b"UID"] for f in fetches] == [b"1", b"2"]
    assert b"$label1" in fetch_items(fetches[1])[b"FLAGS"]
    out = s.cmd(
        "11 UID fetch 1:2 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
        "Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To Received)])"
    )
    items = fetch_items(untagged(out, b"FETCH")[0])
    hdr = items[b"BODY[HEADER.FIELDS (FROM TO CC BCC SUBJECT DATE MESSAGE-ID PRIORITY X-PRIORITY REFERENCES "
                b"NEWSGROUPS IN-REPLY-TO CONTENT-TYPE REPLY-TO RECEIVED)]"]
    assert hdr.startswith(b"From: Alice") and hdr.endswith(b"\r\n\r\n") and b"Subject: Hello" in hdr
    assert items[b"RFC822.SIZE"] == str(len(MESSAGE)).encode()
    out = s.cmd("12 UID fetch 1 (UID RFC822.SIZE BODY.PEEK[]<0.65536>)")
    assert fetch_items(untagged(out, b"FETCH")[0])[b"BODY[]<0>"] == MESSAGE
    assert b"\\Seen" not in s.cmd("13 UID fetch 1 (FLAGS)")  # PEEK does not set \Seen
    out = s.cmd("14 UID fetch 3:* (FLAGS)")  # RFC 3501 §6.4.8: 3:* includes the last UID
    assert len(untagged(out, b"FETCH")) == 1
    out = s.cmd("15 UID fetch 1 (BODY[])")
    assert b"\\Seen" in fetch_items(untagged(out, b"FETCH")[0])[b"FLAGS"]


def test_select_examine_recent_and_readonly(store, s):
    append(s)
    other = Session(store)
    other.login("alice@example.org")
    out = s.cmd("a SELECT INBOX")
    assert untagged(out, b"RECENT")[0][1] == b"1"
    out = other.cmd("b SELECT INBOX")  # \Recent went to the first session only
    assert untagged(out, b"RECENT")[0][1] == b"0"
    out = other.cmd("c EXAMINE INBOX")
    assert b"[READ-ONLY]" in out and b"PERMANENTFLAGS ()" in out
    assert tagged(other.cmd("d STORE 1 +FLAGS (\\Seen)"), b"d")[1] == b"NO"
    assert tagged(other.cmd("e EXPUNGE"), b"e")[1] == b"NO"
    out = other.cmd("f FETCH 1 BODY[]")
    assert b"\\Seen" not in out  # EXAMINE never sets \Seen


def test_create_rename_delete_subscribe(s):
    assert tagged(s.cmd("a CREATE Work.Projects"), b"a")[1] == b"OK"
    out = s.cmd('b LIST "" "Work*"')
    rows = {r[4]: r[2] for r in untagged(out, b"LIST")}
    assert b"\\HasChildren" in rows[b"Work"] and b"\\HasNoChildren" in rows[b"Work.Projects"]
    out = s.cmd('b2 LIST "" "%"')
    assert b"Work.Projects" not in out and b"Work" in out
    assert b"ALREADYEXISTS" in s.cmd("c CREATE Work.Projects")
    assert tagged(s.cmd("d RENAME Work.Projects Work.Done"), b"d")[1] == b"OK"
    assert b"Work.Done" in s.cmd('e LIST "" "*"')
    assert tagged(s.cmd("f SUBSCRIBE Work.Done"), b"f")[1] == b"OK"
    assert b"Work.Done" in s.cmd('g LSUB "" "*"')
    assert tagged(s.cmd("h UNSUBSCRIBE Work.Done"), b"h")[1] == b"OK"
    assert b"Work.Done" not in s.cmd('i LSUB "" "*"')
    assert tagged(s.cmd("j DELETE Work.Done"), b"j")[1] == b"OK"
    assert b"NONEXISTENT" in s.cmd("k SELECT Work.Done")
    assert tagged(s.cmd("l DELETE INBOX"), b"l")[1] == b"NO"
    assert b'* LIST (\\Noselect) "." ""' in s.cmd('m LIST "" ""')


def test_rename_inbox_moves_messages(s):
    append(s)
    assert tagged(s.cmd("a RENAME INBOX Old"), b"a")[1] == b"OK"
    out = s.cmd("b STATUS Old (MESSAGES)") + s.cmd("c STATUS INBOX (MESSAGES)")
    st = untagged(out, b"STATUS")
    assert st[0][3] == [b"MESSAGES", b"1"] and st[1][3] == [b"MESSAGES", b"0"]


def test_append_trycreate_and_flags(s):
    out = s.send(b"a APPEND Nope {5+}\r\nx: y\r\n\r\n")
    assert b"[TRYCREATE]" in out
    out = s.send(b'b APPEND INBOX (\\Flagged) "14-Mar-2024 12:00:00 +0000" {%d+}\r\n' % len(MESSAGE) + MESSAGE
                 + b"\r\n")
    assert b"[APPENDUID" in out
    s.cmd("c SELECT INBOX")
    items = fetch_items(untagged(s.cmd("d FETCH 1 (FLAGS INTERNALDATE)"), b"FETCH")[0])
    assert b"\\Flagged" in items[b"FLAGS"] and items[b"INTERNALDATE"] == b"14-Mar-2024 12:00:00 +0000"


def test_quota(store):
    sess = Session(store, quota=4096)
    sess.login()
    append(sess)
    out = sess.cmd("a GETQUOTAROOT INBOX")
    assert b'* QUOTAROOT INBOX ""' in out and b'* QUOTA "" (STORAGE 1 4)' in out
    big = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    out = sess.send(b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    assert b"[OVERQUOTA]" in out
    assert tagged(sess.cmd('c SETQUOTA "" (STORAGE 5)'), b"c")[1] == b"NO"


# -- selected state


def test_store_search_copy_move_expunge(s):
    for i in range(5):
        append(s, MESSAGE.replace(b"Hello there", b"Hello %d" % i))
    s.cmd("a SELECT INBOX")
    out = s.cmd("b STORE 2:3 +FLAGS (\\Deleted)")
    assert len(untagged(out, b"FETCH")) == 2
    assert s.cmd("c STORE 1 +FLAGS.SILENT (\\Flagged)") == b"c OK STORE completed\r\n"
    out = s.cmd("d SEARCH DELETED")
    assert untagged(out, b"SEARCH")[0][2:] == [b"2", b"3"]
    out = s.cmd('e SEARCH OR FLAGGED (SUBJECT "hello 4") NOT DELETED')
    assert untagged(out, b"SEARCH")[0][2:] == [b"1", b"5"]
    out = s.cmd("f UID SEARCH RETURN (MIN MAX COUNT) UNDELETED")
    assert b'* ESEARCH (TAG "f") UID MIN 1 MAX 5 COUNT 3' in out
    out = s.cmd("g UID COPY 1,4 Archive")
    assert re.search(rb"\[COPYUID \d+ 1,4 1:2\]", out)
    out = s.cmd("h UID MOVE 5 Trash")
    assert re.search(rb"\* OK \[COPYUID \d+ 5 1\]", out) and b"* 5 EXPUNGE" in out
    out = s.cmd("i UID EXPUNGE 3")  # RFC 4315: only UID 3, though 2 is \Deleted too
    assert b"* 3 EXPUNGE" in out and b"* 2 EXPUNGE" not in out
    out = s.cmd("j EXPUNGE")
    assert b"* 2 EXPUNGE" in out
    out = s.cmd("k UID SEARCH ALL")
    assert untagged(out, b"SEARCH")[0][2:] == [b"1", b"4"]
    out = s.cmd("l CLOSE")
    assert tagged(out, b"l")[1] == b"OK" and tagged(s.cmd("m FETCH 1 FLAGS"), b"m")[1] == b"BAD"


def test_search_keys(s):
    append(s, b"From: Zo\xc3\xab <zoe@example.net>\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n"
              b"Date: Tue, 5 Mar 2024 10:00:00 +0000\r\nX-Tag: blue\r\n\r\nBody text here\r\n")
    append(s)
    s.cmd("a SELECT INBOX")
    cases = {
        "SUBJECT café": [1], "CHARSET UTF-8 SUBJECT CAFÉ": [1], "FROM zoe": [1], "HEADER X-Tag blue": [1],
        'HEADER X-Tag ""': [1], "BODY lunch": [2], "TEXT example.net": [1], "SENTON 5-Mar-2024": [1],
        "SENTBEFORE 5-Mar-2024": [2], "LARGER 150": [2], "SMALLER 150": [1], "NOT (OR 1 2)": [], "2": [2],
        "UID 1:*": [1, 2], "NEW": [1, 2], "ALL UNSEEN UNKEYWORD $x": [1, 2], "OR OR 1 2 ALL": [1, 2],
    }
    for crit, want in cases.items():
        out = s.cmd(b"q SEARCH " + crit.encode("utf-8"))
        got = [int(x) for x in untagged(out, b"SEARCH")[0][2:]]
        assert got == want, (crit, out)
    assert b"[BADCHARSET" in s.cmd("r SEARCH CHARSET X-UNKNOWN-CS SUBJECT x")


def test_huge_sequence_sets_are_cheap(s):
    append(s)
    s.cmd("a SELECT INBOX")
    for line in ("b UID FETCH 1:4294967295 (FLAGS)", "c UID SEARCH UID 1:4294967295",
                 "d UID STORE 1:4294967295 +FLAGS (\\Seen)", "e SEARCH 1:*"):
        out = s.cmd(line)
        assert tagged(out, line.split()[0].encode())[1] == b"OK"
    assert tagged(s.cmd("f FETCH 1:4294967295 FLAGS"), b"f")[1] == b"BAD"  # seq 2.. does not exist


def test_condstore(s):
    append(s)
    append(s)
    out = s.cmd("a SELECT INBOX (CONDSTORE)")
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))
    out = s.cmd("b STORE 1 +FLAGS (\\Flagged)")
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", out).group(1))
    assert m1 > hms
    out = s.cmd(f"c FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
    assert len(untagged(out, b"FETCH")) == 1 and b"MODSEQ" in out
    out = s.cmd(f"d STORE 1,2 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)")
    assert b"[MODIFIED 1]" in out
    out = s.cmd(f"e SEARCH MODSEQ {m1}")
    assert re.search(rb"\* SEARCH .*\(MODSEQ \d+\)", out)
    out = s.cmd("f STATUS INBOX (HIGHESTMODSEQ)")
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1)) > m1


# -- concurrency and updates


def test_other_session_changes_reported_at_the_right_time(store, s):
    for _ in range(3):
        append(s)
    other = Session(store)
    other.login()
    s.cmd("a SELECT INBOX")
    other.cmd("b SELECT INBOX")
    other.cmd("c STORE 2 +FLAGS (\\Deleted \\Seen)")
    other.cmd("d EXPUNGE")
    out = s.cmd("e FETCH 1:* (FLAGS)")  # RFC 3501 §7.4.1: no EXPUNGE during FETCH
    assert b"EXPUNGE" not in out
    out = s.cmd("f SEARCH ALL")
    assert b"EXPUNGE" not in out and untagged(out, b"SEARCH")[0][2:] == [b"1", b"3"]
    out = s.cmd("g NOOP")
    assert b"* 2 EXPUNGE" in out
    other.cmd("h STORE 1 +FLAGS (\\Answered)")
    out = s.cmd("i NOOP")
    assert b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent))" in out


def test_idle_reports_delivery(store, s):
    s.cmd("a SELECT INBOX")
    assert s.cmd("b IDLE") == b"+ idling\r\n"
    before = s.wakeups
    store.deliver("alice@example.org", MESSAGE)
    assert s.wakeups > before
    out = s.poll()
    assert b"* 1 EXISTS" in out and b"* 1 RECENT" in out
    assert tagged(s.send(b"DONE\r\n"), b"b")[1] == b"OK"


def test_unselect_and_logout(s):
    s.cmd("a SELECT INBOX")
    assert tagged(s.cmd("b UNSELECT"), b"b")[1] == b"OK"
    assert tagged(s.cmd("c FETCH 1 FLAGS"), b"c")[1] == b"BAD"
    out = s.cmd("d LOGOUT")
    assert b"* BYE" in out and s.closed


# -- properties

SCRIPT = (
    b"a1 CAPABILITY\r\na2 LOGIN alice@example.org secret\r\na3 SELECT INBOX\r\n"
    b"a4 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
    b"a5 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])\r\na6 SEARCH SUBJECT hello\r\n"
    b"a7 STORE 1 +FLAGS (\\Seen)\r\na8 NOOP\r\na9 LOGOUT\r\n"
)


def _normalise(out: bytes) -> bytes:
    out = re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY V", out)
    out = re.sub(rb"APPENDUID \d+", b"APPENDUID V", out)
    return re.sub(rb'INTERNALDATE "[^"]*"', b"INTERNALDATE D", out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=len(SCRIPT) - 1), max_size=8))
def test_engine_packet_split_invariance(tmp_path_factory, cuts):
    def run(pieces):
        store = make_store(tmp_path_factory.mktemp("m"))
        try:
            sess = Session(store)
            return _normalise(b"".join(sess.send(p) for p in pieces))
        finally:
            store.close()

    cuts = sorted(set(cuts))
    pieces = [SCRIPT[a:b] for a, b in zip([0] + cuts, cuts + [len(SCRIPT)])]
    whole = run([SCRIPT])
    assert b"a9 OK" in whole
    assert run(pieces) == whole
    responses(whole)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([
    b"a NOOP\r\n", b"b SELECT INBOX\r\n", b"c FETCH 1:* (FLAGS BODY[])\r\n", b"d STORE 1 +FLAGS (\\Deleted)\r\n",
    b"e EXPUNGE\r\n", b"f APPEND INBOX {3+}\r\nx\r\n\r\n", b"g IDLE\r\n", b"DONE\r\n", b"h SEARCH OR 1 NOT 2\r\n",
    b"(", b"{5}\r\n", b"\r\n", b"i UID MOVE 1:* Trash\r\n", b"j AUTHENTICATE PLAIN\r\n", b"*\r\n",
    b"k LIST \"\" *\r\n", b"\xff\xfe", b"l LOGIN a b\r\n", b"m FETCH 1 (BINARY[1] BODYSTRUCTURE ENVELOPE)\r\n",
]), max_size=15))
def test_engine_random_commands_never_crash(store, parts):
    sess = Session(store)
    sess.login()
    out = sess.send(b"".join(parts))
    assert b"Traceback" not in out and b"SERVERBUG" not in out


def test_searchres_saved_result(s):
    for _ in range(4):
        append(s)
    s.cmd("a SELECT INBOX")
    s.cmd("b STORE 2,4 +FLAGS (\\Flagged)")
    out = s.cmd("c UID SEARCH RETURN (SAVE) FLAGGED")
    assert out == b"c OK SEARCH completed\r\n"  # RFC 5182 §2.4
    out = s.cmd("d UID FETCH $ (FLAGS)")
    assert [fetch_items(r)[b"UID"] for r in untagged(out, b"FETCH")] == [b"2", b"4"]
    out = s.cmd("e SEARCH RETURN (SAVE MIN) UID 3")
    assert b"MIN 3" in out
    out = s.cmd("f SEARCH $")
    assert untagged(out, b"SEARCH")[0][2:] == [b"3"]


def test_select_and_flag_fetch_never_open_message_files(store, s, monkeypatch):
    from mailsuite.store.mailbox import Mailbox

    for i in range(200):
        store.deliver_sync("alice@example.org", MESSAGE.replace(b"Hello there", b"Hello %d" % i))
    opened = []
    real = Mailbox.open_message
    monkeypatch.setattr(Mailbox, "open_message", lambda self, uid: opened.append(uid) or real(self, uid))
    real_range = Mailbox.read_range
    monkeypatch.setattr(Mailbox, "read_range",
                        lambda self, uid, start, n: opened.append(uid) or real_range(self, uid, start, n))
    out = s.cmd("a SELECT INBOX")
    assert b"* 200 EXISTS" in out
    out = s.cmd("b UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert len(untagged(out, b"FETCH")) == 200
    s.cmd("c UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject)] ENVELOPE)")
    s.cmd("d SEARCH UNSEEN LARGER 10 SUBJECT hello")
    assert opened == []  # answered from the index and the header cache
    out = s.cmd("e UID FETCH 7 (BODY.PEEK[TEXT])")
    assert opened == [7]


def test_no_quota_root_without_a_limit(s):
    out = s.cmd("a GETQUOTAROOT INBOX")
    assert out == b"* QUOTAROOT INBOX\r\na OK GETQUOTAROOT completed\r\n"
    assert tagged(s.cmd('b GETQUOTA ""'), b"b")[1] == b"NO"


def test_list_extended_recursivematch_childinfo(s):
    s.cmd("a CREATE Lists.Python")
    s.cmd("b CREATE Lists.Rust")
    s.cmd("c SUBSCRIBE Lists.Rust")
    s.cmd("c2 UNSUBSCRIBE Sent")
    out = s.cmd('d LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    rows = {r[4]: r for r in untagged(out, b"LIST")}
    assert rows[b"Lists"][5:] == [[b"CHILDINFO", [b"SUBSCRIBED"]]]
    assert b"Sent" not in rows and b"\\Subscribed" in rows[b"INBOX"][2]
    out = s.cmd('e LIST (SUBSCRIBED) "" "*"')
    names = [r[4] for r in untagged(out, b"LIST")]
    assert b"Lists.Rust" in names and b"Lists.Python" not in names and b"Lists" not in names
    assert tagged(s.cmd('f LIST (RECURSIVEMATCH) "" "*"'), b"f")[1] == b"BAD"
    out = s.cmd('g LIST (SPECIAL-USE) "" "*" RETURN (STATUS (MESSAGES))')
    assert {r[4] for r in untagged(out, b"LIST")} == {b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"}
    assert len(untagged(out, b"STATUS")) == 5


def test_rfc822_items_and_seen(s):
    append(s)
    s.cmd("a SELECT INBOX")
    out = s.cmd("b FETCH 1 (RFC822.HEADER RFC822.SIZE)")
    items = fetch_items(untagged(out, b"FETCH")[0])
    assert items[b"RFC822.HEADER"] == MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert b"\\Seen" not in out  # RFC822.HEADER is a peek (RFC 3501 §6.4.5)
    out = s.cmd("c FETCH 1 (RFC822.TEXT)")
    items = fetch_items(untagged(out, b"FETCH")[0])
    assert items[b"RFC822.TEXT"] == b"Hi Bob,\r\nlunch?\r\n" and b"\\Seen" in items[b"FLAGS"]
    out = s.cmd("d UID FETCH 1 (RFC822 BODY[HEADER.FIELDS.NOT (To Date Message-ID)] BODY[1] BODY[1.MIME])")
    items = fetch_items(untagged(out, b"FETCH")[0])
    assert items[b"RFC822"] == MESSAGE and items[b"UID"] == b"1"
    assert items[b"BODY[HEADER.FIELDS.NOT (TO DATE MESSAGE-ID)]"] == (
        b"From: Alice <alice@example.org>\r\nSubject: Hello there\r\n\r\n")
    assert items[b"BODY[1]"] == b"Hi Bob,\r\nlunch?\r\n"
    out = s.cmd("e FETCH 1 (BODY[]<200.10> BODY[TEXT]<3.4> BINARY.PEEK[1] BINARY.SIZE[1])")
    items = fetch_items(untagged(out, b"FETCH")[0])
    assert items[b"BODY[]<200>"] == b"" and items[b"BODY[TEXT]<3>"] == b"Bob,"
    assert items[b"BINARY[1]"] == b"Hi Bob,\r\nlunch?\r\n" and items[b"BINARY.SIZE[1]"] == b"17"


def test_utf8_accept_append_and_names(s):
    s.cmd("a ENABLE UTF8=ACCEPT")
    assert tagged(s.cmd('b CREATE "Entwürfe"'.encode()), b"b")[1] == b"OK"
    msg = "Subject: grüße\r\n\r\nhallo\r\n".encode()
    out = s.send(b'c APPEND "Entw\xc3\xbcrfe" UTF8 (~{%d+}\r\n' % len(msg) + msg + b")\r\n")
    assert b"c OK [APPENDUID" in out
    out = s.cmd('d SELECT "Entwürfe"'.encode())
    assert b"* 1 EXISTS" in out
    out = s.cmd("e FETCH 1 BODY.PEEK[]")
    assert msg in out
    assert '"." "Entwürfe"'.encode() in s.cmd('f LIST "" "*"')


def test_compress_deflate_switch(s):
    from mailsuite.imap.engine import StartCompression

    out = s.cmd("a COMPRESS BROTLI")
    assert tagged(out, b"a")[1] == b"NO"
    out = s.send(b"b COMPRESS DEFLATE\r\n\x78\x9c-compressed-bytes")
    assert out == b"b OK DEFLATE active\r\n"
    action = s.actions[-1]
    assert isinstance(action, StartCompression) and action.pending == b"\x78\x9c-compressed-bytes"
    assert b"[COMPRESSIONACTIVE]" in s.cmd("c COMPRESS DEFLATE")
    pre = Session(s.store)
    assert tagged(pre.cmd("d COMPRESS DEFLATE"), b"d")[1] == b"BAD"  # not before authentication


# -- big APPEND literals are spooled to the user's tmp/, not held in memory


def _tmp_files(store) -> list[str]:
    return sorted(p.name for p in (store.user_dir("alice@example.org") / "tmp").iterdir())


def test_big_append_is_spooled_and_round_trips(store, s, monkeypatch):
    from mailsuite.imap import spool

    header = b"From: a@example.org\r\nSubject: big one\r\n\r\n"
    body = b"".join(b"line %d of the body\n" % i for i in range(40_000))  # bare LF: stored as CRLF
    data = header + body + b"tail\r\r\n"
    expected = header + body.replace(b"\n", b"\r\n") + b"tail\r\r\n"
    assert len(data) > spool.SPOOL_THRESHOLD
    written: list[int] = []
    real_write = spool.SpoolFile.write
    monkeypatch.setattr(spool.SpoolFile, "write", lambda self, d: (written.append(len(d)), real_write(self, d)))
    sess_out = s.send(b"a APPEND INBOX (\\Seen $Big) {%d}\r\n" % len(data))
    assert sess_out == b"+ Ready for literal data\r\n"
    assert len(_tmp_files(store)) == 1  # the spool file exists while the literal arrives
    # odd packet sizes, so CR LF pairs are split between packets
    for i in range(0, len(data), 4093):
        assert s.send(data[i:i + 4093]) == b""
        assert not s.engine.framer._literal_parts  # nothing collected in memory
    out = s.send(b"\r\n")
    assert b"a OK [APPENDUID" in out, out
    assert sum(written) == len(data) and max(written) <= 4093
    assert _tmp_files(store) == []  # linked into cur/, no copy left behind
    s.cmd("b SELECT INBOX")
    out = s.cmd("c FETCH 1 (FLAGS RFC822.SIZE BODY.PEEK[])")
    assert b"RFC822.SIZE %d" % len(expected) in out and expected in out
    assert b"\\Seen" in out and b"$Big" in out
    assert b'"big one"' in s.cmd("d FETCH 1 ENVELOPE")  # the header cache came from the spool file


@pytest.mark.parametrize("case", ["trycreate", "badflag", "mailbox-literal", "dropped", "too-long-after"])
def test_spool_files_never_left_behind(store, s, case):
    big = b"x" * (300 * 1024)
    if case == "trycreate":
        out = s.send(b"a APPEND Nowhere {%d+}\r\n" % len(big) + big + b"\r\n")
        assert b"a NO [TRYCREATE]" in out
    elif case == "badflag":
        out = s.send(b"a APPEND INBOX (\\Bogus) {%d+}\r\n" % len(big) + big + b"\r\n")
        assert b"a NO" in out
    elif case == "mailbox-literal":  # a spooled literal where a string belongs: BAD, file removed
        out = s.send(b"a APPEND {%d+}\r\n" % len(big) + big + b" {3+}\r\nabc\r\n")
        assert b"a BAD" in out
    elif case == "dropped":  # connection lost halfway through the literal
        s.send(b"a APPEND INBOX {%d+}\r\n" % len(big) + big[:1000])
        assert len(_tmp_files(store)) == 1
        s.engine.connection_lost()
    else:  # a later literal of the same command is refused: the spooled one goes too
        out = s.send(b"a APPEND INBOX {%d+}\r\n" % len(big) + big + b" {999999999}\r\n")
        assert b"a BAD" in out or b"a NO" in out
    assert _tmp_files(store) == []
    if case != "dropped":
        assert tagged(s.cmd("z NOOP"), b"z")[1] == b"OK"


def test_append_date_keeps_the_instant_shown_in_utc(s):
    """The store keeps INTERNALDATE as a Unix time (the file's mtime), so the zone of APPEND's
    date-time is not kept: the same instant comes back in +0000 (docs/imap.md)."""
    out = s.send(b'a APPEND INBOX "14-Mar-2024 14:30:00 +0230" {%d+}\r\n' % len(MESSAGE) + MESSAGE + b"\r\n")
    assert b"a OK [APPENDUID" in out
    s.cmd("b SELECT INBOX")
    items = fetch_items(untagged(s.cmd("c FETCH 1 INTERNALDATE"), b"FETCH")[0])
    assert items[b"INTERNALDATE"] == b"14-Mar-2024 12:00:00 +0000"
    assert b"* SEARCH 1" in s.cmd("d SEARCH ON 14-Mar-2024")


@pytest.mark.parametrize("items", [b"(FLAGS BODY.PEEK[])", b"(UID BODY.PEEK[TEXT])"])  # simple and general paths
def test_fetch_of_a_vanished_file_says_expungeissued(s, items):
    """A message file removed behind the index: the others are fetched, the tagged NO carries
    [EXPUNGEISSUED] (RFC 5530 §3), nothing of Python shows."""
    for _ in range(3):
        append(s)
    s.cmd("a SELECT INBOX")
    folder = Path(s.engine.selected.mailbox.dir)
    victim = sorted([*folder.glob("cur/*"), *folder.glob("new/*")])[1]
    victim.unlink()
    out = s.cmd("b FETCH 1:3 " + items.decode())
    assert tagged(out, b"b")[1] == b"NO" and b"[EXPUNGEISSUED]" in out, out
    assert out.count(b" FETCH (") == 2 and b"Traceback" not in out


def test_fetch_that_fails_unexpectedly_says_serverbug(s, monkeypatch):
    for _ in range(2):
        append(s)
    s.cmd("a SELECT INBOX")
    mb = s.engine.selected.mailbox

    def broken(*_args, **_kw):
        raise RuntimeError("internal detail")
    monkeypatch.setattr(mb, "read_range", broken)
    out = s.cmd("b FETCH 1:2 (FLAGS BODY.PEEK[])")
    assert tagged(out, b"b")[1] == b"NO" and b"[SERVERBUG]" in out, out
    assert b"internal detail" not in out and b"Traceback" not in out
