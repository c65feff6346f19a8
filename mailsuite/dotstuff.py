"""Byte-stuffing of lines that begin with ``.``, shared by the POP3 multi-line responses (RFC 1939 §3) and
outbound SMTP DATA (RFC 5321 §4.5.2): in both a line that begins with ``.`` is sent with one more ``.``.

Speed (issue 7, workload 3): :func:`stuff_lines` first looks for ``.`` bytes with ``bytes.find``
(``memchr``); only when one starts a line, or dots are dense (prose), does it fall back to one
``bytes.replace`` over the chunk, and it returns the chunk itself, uncopied, when nothing needs a dot.
"""

from __future__ import annotations

__all__ = ["stuff_lines"]

#: dots looked at one by one (``memchr``) before stuffing falls back to ``bytes.replace`` over the chunk,
#: unless the dots seen so far are sparse (at most one per ``_SPARSE`` bytes on average)
_PROBES = 8
_SPARSE = 256


def stuff_lines(data: bytes, line_start: bool) -> bytes:
    """Byte-stuffing of ``data``: a ``.`` after any LF (and at the start when ``line_start``)
    gets another ``.`` in front.  Returns ``data`` itself (no copy) when nothing needs stuffing."""
    find = data.find
    pos = find(b".")
    probes = 0
    while pos >= 0:
        if (data[pos - 1] == 10) if pos else line_start:
            break                       # a line starts with "." here: stuff the whole chunk
        probes += 1
        if probes >= _PROBES and probes * _SPARSE > pos:
            break                       # dense dots (prose): one replace costs less than probing each
        pos = find(b".", pos + 1)
    else:
        return data
    out = data.replace(b"\n.", b"\n..")
    if line_start and data[:1] == b".":
        out = b"." + out
    return out
