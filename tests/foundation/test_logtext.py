"""mailsuite.logtext writes exactly the lines twistd's own text observer writes, only faster."""

from __future__ import annotations

import io
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from mailsuite import logtext


def _event(fmt: str, **fields) -> dict:
    event = {"log_format": fmt, "log_time": 1_763_790_000.25, "log_level": LogLevel.info,
             "log_namespace": "mailsuite.smtp.delivery"}
    event.update(fields)
    return event


def _both(event: dict) -> tuple:
    return logtext.format_event(dict(event)), formatEventAsClassicLogText(dict(event))


def test_common_lines_are_identical() -> None:
    events = [
        _event("smtp: accepted id={id} from=<{sender}> size={size}", id="abc", sender="a@b.c", size=10205),
        _event("plain text, no fields"),
        _event("braces {{kept}} and {x}", x={"a": 1}),
        _event("multi\nline {v}", v="x\ny"),
        _event("{log_text}", log_text="legacy", log_system="-"),
        _event("ümlaut {u}", u="ß"),
        _event("level {x}", x=1, log_level=LogLevel.warn, log_namespace="n"),
        {"log_format": "no level {x}", "log_time": 1.5, "x": 2},
    ]
    for event in events:
        fast, twisted = _both(event)
        assert fast == twisted, event


def test_unusual_events_take_twisteds_path() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    events = [
        _event("with traceback", log_failure=failure),
        _event("missing {field}"),
        _event("spec {x:>5}", x=3),
        _event("attribute {x.real}", x=3),
        _event("call {f()}", f=lambda: "called"),
        _event("bad {", x=1),
        _event(""),
        {"log_format": "no time {x}", "x": 1},
        {"log_time": 5.0},
    ]
    for event in events:
        fast, twisted = _both(event)
        assert fast == twisted, event


@settings(max_examples=300, deadline=None)
@given(fmt=st.text(alphabet=st.sampled_from(list("ab {}\n:!.é0")), max_size=20),
       value=st.one_of(st.integers(), st.text(max_size=5), st.none()),
       when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
       system=st.one_of(st.none(), st.text(max_size=4)))
def test_same_text_as_twisted_for_any_format(fmt: str, value, when: float, system) -> None:
    event = _event(fmt, a=value, b=value, log_time=when)
    if system is not None:
        event["log_system"] = system
    fast, twisted = _both(event)
    assert fast == twisted


def test_the_time_stamp_follows_the_clock() -> None:
    now = time.time()
    for when in (now, now + 0.9, now + 1, now + 86400 * 180):
        fast, twisted = _both(_event("t", log_time=when))
        assert fast == twisted


def test_install_only_where_twistd_logs_to_stdout() -> None:
    assert logtext.wants_stdout({"logfile": "-", "nodaemon": True})
    assert logtext.wants_stdout({"logfile": None, "nodaemon": True})
    assert not logtext.wants_stdout({"logfile": "/var/log/mailsuite.log", "nodaemon": True})
    assert not logtext.wants_stdout({"logfile": "-", "nodaemon": True, "syslog": True})
    assert not logtext.wants_stdout({"logfile": "-", "nodaemon": True, "logger": "x.y"})
    assert not logtext.wants_stdout({})
    app = Application("t")
    assert logtext.install(app)
    observer = app.getComponent(ILogObserver)
    assert observer is not None and not logtext.install(app)      # a set observer is kept
    out = io.StringIO()
    logtext.observer(out)(_event("hello {who}", who="world"))
    assert out.getvalue().endswith("[mailsuite.smtp.delivery#info] hello world\n")


def test_logger_emits_the_event_twisted_would() -> None:
    """logtext.Logger skips only Twisted's per-event level sort; the event it publishes is the same."""
    from twisted.logger import Logger as TwistedLogger

    ours_seen: list[dict] = []
    theirs_seen: list[dict] = []
    ours = logtext.Logger(namespace="mailsuite.x", observer=ours_seen.append)
    theirs = TwistedLogger(namespace="mailsuite.x", observer=theirs_seen.append)
    for log in (ours, theirs):
        log.info("smtp: accepted id={id} size={size}", id="abc", size=10)
        log.warn("plain")
    assert len(ours_seen) == len(theirs_seen) == 2
    for a, b in zip(ours_seen, theirs_seen):
        assert abs(a.pop("log_time") - b.pop("log_time")) < 5
        assert a.pop("log_logger") is ours and b.pop("log_logger") is theirs
        assert a == b
    assert logtext.format_event({**ours_seen[0], "log_time": 0.0}).endswith(
        "[mailsuite.x#info] smtp: accepted id=abc size=10\n")


def test_logger_reports_an_unknown_level_like_twisted() -> None:
    seen: list[dict] = []
    log = logtext.Logger(namespace="mailsuite.x", observer=seen.append)
    log.emit("loud", "nope")                                   # type: ignore[arg-type]
    assert len(seen) == 1 and seen[0]["log_level"] is LogLevel.critical and "log_failure" in seen[0]


def test_logger_is_the_module_namespace() -> None:
    assert logtext.Logger().namespace == __name__
