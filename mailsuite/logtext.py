"""twistd's text log lines, formatted at a fraction of the cost, for the standard-output log.

twistd logs through ``textFileLogObserver``; its formatting (``formatEventAsClassicLogText``: a time zone
computed and ``strftime`` per event, ``string.Formatter`` in pure Python) took 17% of the reactor thread's
GIL time in the SMTP benchmark (bench 1-2: one "smtp: accepted" line per message).  :func:`format_event`
writes the same text (checked against Twisted's in tests/foundation/test_logtext.py) for the common event
(a format string with plain ``{name}`` fields, no failure attached): the time stamp is made once per second,
and a format string is parsed once.  Anything else (a traceback, ``{a.b}`` fields, format specifications,
an event that fails to format) goes to Twisted's own formatter.

:func:`install` puts a ``FileLogObserver`` with it on the application where twistd would log to standard
output (``-n`` without ``--logfile``, or ``--logfile=-``, as in etc/systemd); with ``--logfile PATH``,
``--syslog`` or ``--logger`` twistd's own observer stays.

:class:`Logger` is Twisted's ``Logger`` without its per-event check that the level is a ``LogLevel``
(``LogLevel.iterconstants()`` sorts the levels on every call: a fifth of the cost of the SMTP "accepted" line).
The protocol adapters log through it; an unknown level still goes to Twisted's check.
"""

from __future__ import annotations

import string
import sys
from time import time
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, formatEventAsClassicLogText, formatTime
from twisted.logger import Logger as _TwistedLogger

__all__ = ["format_event", "observer", "wants_stdout", "install", "Logger"]

_LEVELS = frozenset(LogLevel.iterconstants())

_parser = string.Formatter()
#: format string -> ((literal, field name or None), ...), or None where the slow path must format it
_parsed: dict[str, tuple[tuple[str, str | None], ...] | None] = {}
_stamp: tuple[int, str] = (-1, "")


def _parse(fmt: str) -> tuple[tuple[str, str | None], ...] | None:
    try:
        parts = []
        for literal, name, spec, conversion in _parser.parse(fmt):
            if name is not None and (spec or conversion or not name.isidentifier()):
                return None
            parts.append((literal, name))
        return tuple(parts)
    except ValueError:
        return None


def _time_stamp(when: float) -> str:
    global _stamp
    second = int(when)
    if not 0 <= when - second < 0.999999:
        return formatTime(when)     # datetime rounds to the microsecond: this may be the next second
    if _stamp[0] != second:
        # Twisted's RFC 3339 format has whole seconds, so the start of the second gives the same text
        _stamp = (second, formatTime(float(second)))
    return _stamp[1]


def format_event(event: dict[str, Any]) -> str | None:
    """The line ``textFileLogObserver`` would write for ``event`` (None: nothing to write)."""
    fmt = event.get("log_format")
    when = event.get("log_time")
    if type(fmt) is not str or when is None or "log_failure" in event or "log_flattened" in event:
        return formatEventAsClassicLogText(event)
    if len(_parsed) > 2048:
        _parsed.clear()
    parts = _parsed.get(fmt, False)
    if parts is False:
        parts = _parsed[fmt] = _parse(fmt)
    if parts is None:
        return formatEventAsClassicLogText(event)
    try:
        text = "".join([literal if name is None else literal + format(event[name], "") for literal, name in parts])
    except Exception:  # noqa: BLE001 - a missing field or a failing __format__: Twisted says so its way
        return formatEventAsClassicLogText(event)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    line = f"{_time_stamp(when)} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n" if "\n" in line else line + "\n"


def observer(out: Any = None) -> FileLogObserver:
    """A text log observer writing to ``out`` (default: standard output) with :func:`format_event`."""
    return FileLogObserver(sys.stdout if out is None else out, format_event)


def wants_stdout(twistd_options: Any) -> bool:
    """True if twistd (options of its command line) would log as text to standard output."""
    try:
        if twistd_options.get("logger") or twistd_options.get("syslog"):
            return False
        logfile = twistd_options.get("logfile")
        return logfile == "-" or (bool(twistd_options.get("nodaemon")) and not logfile)
    except AttributeError:
        return False


def install(application: Any) -> bool:
    """Give ``application`` (twistd's Componentized application) the fast observer unless it has one."""
    get, set_ = getattr(application, "getComponent", None), getattr(application, "setComponent", None)
    if get is None or set_ is None or get(ILogObserver, None) is not None:
        return False
    set_(ILogObserver, observer())
    return True


class Logger(_TwistedLogger):
    """Twisted's ``Logger``; ``emit`` checks the level against a set made once (see the module docstring)."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level not in _LEVELS or "log_trace" in kwargs:
            super().emit(level, format, **kwargs)      # Twisted's error event, or its trace bookkeeping
            return
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace, log_source=self.source,
                      log_format=format, log_time=time())
        self.observer(kwargs)
