"""Maildir file-level operations: unique names, flag letters, durable writes, directory helpers.

Everything here is plain blocking file work, safe to run from any thread; nothing touches the index.

File names follow the Maildir conventions Dovecot uses:
``<base>`` in ``new/`` and ``<base>:2,<letters>`` in ``cur/``, where ``<base>`` is
``<sec>.M<usec>P<pid>Q<counter>.<host>,S=<size>`` for files we create.  The base (everything before the
first ``:``) never changes for the life of a message, so it keys the message in the index and is its
POP3 UIDL.  Info letters are kept sorted (ASCII order): upper-case system flags
(``D`` draft, ``F`` flagged, ``P`` passed, ``R`` replied, ``S`` seen, ``T`` trashed) and lower-case
keyword letters ``a``-``z`` mapped through the folder's ``dovecot-keywords`` file.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .flush import link_no_clobber, rename_no_clobber, syncfs, syncfs_covers

__all__ = [
    "FLAG_LETTERS",
    "LETTER_FLAGS",
    "SYSTEM_FLAGS",
    "WrittenMessage",
    "split_filename",
    "size_from_base",
    "unique_base",
    "make_suffix",
    "write_message",
    "write_messages",
    "link_no_clobber",
    "fsync_dir",
    "make_maildir",
    "clean_tmp",
    "STALE_TMP_SECONDS",
    "read_header_block",
    "header_block",
    "normalize_line_ends",
    "is_maildir",
    "list_messages",
]

#: IMAP system flag -> Maildir info letter (the Maildir spec, as Dovecot maps them).
FLAG_LETTERS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS: dict[str, str] = {v: k for k, v in FLAG_LETTERS.items()}
#: The IMAP system flags that can be stored (``\\Recent`` is session state, RFC 3501 §2.3.2).
SYSTEM_FLAGS = frozenset(FLAG_LETTERS)

INFO_SEP = ":2,"
#: tmp/ files older than this are leftovers of crashed deliveries (the Maildir spec's 36 hours).
STALE_TMP_SECONDS = 36 * 3600

_counter = itertools.count(1)
_name_lock = threading.Lock()
_last_usec = 0
_SIZE_RE = re.compile(r",S=(\d+)")


def _hostname() -> str:
    # Maildir spec: "/" and ":" in the host name are written as \057 and \072.
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


_HOST = _hostname()
_PID = os.getpid()      # a system call each time in glibc >= 2.25: cached, renewed in a forked child


def _renew_pid() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


@dataclass(frozen=True, slots=True)
class WrittenMessage:
    """Result of :func:`write_message`: the final file name (in ``subdir``), its size and mtime."""

    filename: str
    subdir: str
    size: int
    mtime: float

    @property
    def base(self) -> str:
        return split_filename(self.filename)[0]


def split_filename(filename: str) -> tuple[str, str]:
    """``"b:2,FS"`` -> ``("b", ":2,FS")``; ``"b"`` -> ``("b", "")``.  The first ``:`` starts the info."""
    i = filename.find(":")
    if i < 0:
        return filename, ""
    return filename[:i], filename[i:]


def info_letters(suffix: str) -> str:
    """The flag letters of an info suffix (``":2,FS"`` -> ``"FS"``; anything else -> ``""``)."""
    return suffix[3:] if suffix.startswith(INFO_SEP) else ""


def size_from_base(base: str) -> int | None:
    """The ``,S=<size>`` field of a base name, if present."""
    m = _SIZE_RE.search(base)
    return int(m.group(1)) if m else None


def unique_base(size: int) -> str:
    """A new unique base name: ``<sec>.M<usec>P<pid>Q<counter>.<host>,S=<size>``.

    Unique across threads (the counter) and processes (the pid); creation uses O_EXCL anyway.
    Names sort (as strings) in the order they were made: ``<usec>`` has six digits and the time
    never repeats or goes back within the process.  A folder's first scan hands out UIDs in name
    order, and RFC 3501 §2.3.1.1 wants UIDs ascending in arrival order.
    """
    global _last_usec
    with _name_lock:
        now = max(time.time_ns() // 1000, _last_usec + 1)
        _last_usec = now
    sec, usec = divmod(now, 1_000_000)
    return f"{sec}.M{usec:06d}P{_PID}Q{next(_counter)}.{_HOST},S={size}"


def make_suffix(letters: str) -> str:
    """Info suffix with sorted, de-duplicated letters: ``"SF"`` -> ``":2,FS"``."""
    return INFO_SEP + "".join(sorted(set(letters)))


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so a rename/link into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def normalize_line_ends(data: bytes) -> bytes:
    """Turn bare LF into CRLF (messages are stored with CRLF, so file size = RFC822.SIZE)."""
    if b"\n" not in data:
        return data
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def write_message(
    folder_dir: Path,
    data: bytes,
    letters: str | None = None,
    mtime: float | None = None,
) -> WrittenMessage:
    """Durably write one message into a Maildir folder and return where it landed.

    Write to ``tmp/<unique>`` (O_EXCL), fsync, then link into ``new/<unique>`` (``letters is None``) or
    ``cur/<unique>:2,<letters>``, fsync the directory.  Never overwrites: a name clash just picks a new
    name.  ``mtime`` sets the file's modification time (the INTERNALDATE on rebuild).  Blocking.
    """
    result = write_messages([(folder_dir, data, letters, mtime)])[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _discard(fd: int | None, path: str) -> None:
    if fd is not None and fd >= 0:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass


def _link_copy(src: str, tmp_dir: str, size: int) -> tuple[str, str] | None:
    """Hard-link the written file ``src`` into ``tmp_dir`` under a new unique base: (path, base), or None
    when it cannot be linked (another file system, a link limit, ...: the caller writes a copy)."""
    for _attempt in range(100):
        base = unique_base(size)
        path = tmp_dir + base
        try:
            os.link(src, path)
            return path, base
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def write_messages(
    jobs: list[tuple[str | os.PathLike[str], bytes, str | None, float | None]],
) -> list[WrittenMessage | BaseException]:
    """:func:`write_message` for several messages at once, sharing the disk flushes (group commit).

    ``jobs`` are ``(folder_dir, data, letters, mtime)``.  Phases: write every ``tmp/`` file; flush them;
    rename each into ``new/`` or ``cur/`` (never overwriting); flush the directories.  Two or more files on a
    local file system that ``syncfs`` covers (:func:`.flush.syncfs_covers`) are flushed with one ``syncfs``
    per phase: two calls whatever the batch size, where per-file ``fsync`` needs one per file and one per
    directory.  Otherwise each file and each directory is fsynced.  One result per job, in order: the
    :class:`WrittenMessage`, or the exception that job met (the other jobs go on).  A job whose final flush
    fails is unlinked again, so a failure reported to the sender never leaves a copy behind that its retry
    would duplicate.  Blocking.

    Jobs that pass the *same* ``data`` object (one SMTP message to several local users) and the same
    ``mtime`` share one file: the first is written, the others are hard links to it in their own ``tmp/``
    (Dovecot's LMTP does the same).  A Maildir file is never changed in place (a flag change is a rename,
    an expunge unlinks one name), so the copies stay independent.  A failed link (``EXDEV``: another file
    system) falls back to writing the copy.
    """
    results: list[WrittenMessage | BaseException | None] = [None] * len(jobs)
    # (job, fd or -1 for a link to an earlier job's file, tmp path, base, stat)
    written: list[tuple[int, int, str, str, os.stat_result]] = []
    first: dict[tuple[int, float | None], tuple[int, str, os.stat_result]] = {}  # (id(data), mtime) -> file
    source: dict[int, int] = {}                                      # linked job -> the job it links to
    for i, (folder_dir, data, _letters, mtime) in enumerate(jobs):
        tmp_dir = f"{os.fspath(folder_dir)}/tmp/"
        shared = first.get((id(data), mtime))
        if shared is not None and jobs[shared[0]][1] is data:
            linked = _link_copy(shared[1], tmp_dir, shared[2].st_size)
            if linked is not None:
                source[i] = shared[0]
                written.append((i, -1, linked[0], linked[1], shared[2]))
                continue
        fd = None
        path = ""
        try:
            for _attempt in range(100):
                base = unique_base(len(data))
                path = tmp_dir + base
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    break
                except FileExistsError:
                    continue
            else:
                raise OSError(errno.EEXIST, "could not find a unique Maildir file name", str(folder_dir))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            st = os.fstat(fd)
            written.append((i, fd, path, base, st))
            first.setdefault((id(data), mtime), (i, path, st))
        except BaseException as e:  # noqa: BLE001 - reported for this job only
            if fd is not None:
                _discard(fd, path)
            results[i] = e
    # -- flush the files (DESIGN §3: the data is on disk before a name in new/ or cur/ points at it).  Per file
    # system: two or more files on one that syncfs covers -> one syncfs; else an fsync per file.
    grouped: set[int] = set()
    synced: list[tuple[int, int, str, str, os.stat_result]] = []
    failed: set[int] = set()                                       # written files whose fsync failed
    for dev, items in _by_device(written).items():
        # the first item of a device is a written file (a link comes after the file it links to)
        if len(items) > 1 and syncfs_covers(dev, items[0][1]):
            grouped.add(dev)
            try:
                syncfs(items[0][1])
            except BaseException as e:  # noqa: BLE001 - every job on this file system failed
                for i, fd, path, _base, _st in items:
                    _discard(fd, path)
                    results[i] = e
                continue
            synced.extend(items)
            continue
        for item in items:
            i, fd, path, _base, _st = item
            if fd < 0:      # a link: flushed with the file it links to (one inode)
                if source[i] in failed:
                    _discard(fd, path)
                    results[i] = results[source[i]]
                else:
                    synced.append(item)
                continue
            try:
                os.fsync(fd)
            except BaseException as e:  # noqa: BLE001
                _discard(fd, path)
                results[i] = e
                failed.add(i)
                continue
            synced.append(item)
    # -- move them into place; keep one descriptor per grouped file system open for its second syncfs
    keep: dict[int, int] = {}
    moved: list[tuple[int, str, int]] = []                       # (job, final path, device)
    for i, fd, path, base, st in sorted(synced):
        if fd >= 0:         # a link has no descriptor of its own
            if st.st_dev in grouped and st.st_dev not in keep:
                keep[st.st_dev] = fd
            else:
                os.close(fd)
        folder_dir, _data, letters, _mtime = jobs[i]
        subdir = "new" if letters is None else "cur"
        suffix = "" if letters is None else make_suffix(letters)
        target_dir = f"{os.fspath(folder_dir)}/{subdir}/"
        try:
            for _attempt in range(100):
                filename = base + suffix
                try:
                    rename_no_clobber(path, target_dir + filename)
                    break
                except FileExistsError:
                    base = unique_base(st.st_size)
                    continue
            else:
                raise OSError(errno.EEXIST, "could not find a unique Maildir file name", str(folder_dir))
        except BaseException as e:  # noqa: BLE001
            _discard(None, path)
            results[i] = e
            continue
        results[i] = WrittenMessage(filename, subdir, st.st_size, st.st_mtime)
        moved.append((i, target_dir + filename, st.st_dev))
    # -- flush the directories
    try:
        by_dir: dict[str, list[tuple[int, str, int]]] = {}
        for m in moved:
            if m[2] not in grouped:
                by_dir.setdefault(os.path.dirname(m[1]), []).append(m)
        for dev, fd in keep.items():
            _flush_or_undo(lambda fd=fd: syncfs(fd), [m for m in moved if m[2] == dev], results)
        for target_dir, items in by_dir.items():
            _flush_or_undo(lambda d=target_dir: fsync_dir(d), items, results)
    finally:
        for fd in keep.values():
            os.close(fd)
    return results  # type: ignore[return-value]


def _by_device(written: list[tuple[int, int, str, str, os.stat_result]]) -> dict[int, list]:
    out: dict[int, list] = {}
    for item in written:
        out.setdefault(item[4].st_dev, []).append(item)
    return out


def _flush_or_undo(flush: Callable[[], None], moved: list[tuple[int, str, int]],
                   results: list[WrittenMessage | BaseException | None]) -> None:
    """Run ``flush``; if it fails, take the moved files back out and fail their jobs."""
    try:
        flush()
    except BaseException as e:  # noqa: BLE001
        for i, final, _dev in moved:
            _discard(None, final)
            results[i] = e


def link_message(folder_dir: Path, src: Path, letters: str | None = None, mtime: float | None = None) -> WrittenMessage:
    """:func:`write_message` for a message already written to ``src`` (CRLF line ends, on the same file
    system, e.g. the user's ``tmp/``): fsync it, link it into ``new/`` or ``cur/`` under a unique name,
    drop ``src``, fsync the directory.  Nothing is copied, so a big message never sits in memory.
    Blocking."""
    subdir = "new" if letters is None else "cur"
    suffix = "" if letters is None else make_suffix(letters)
    fd = os.open(src, os.O_RDWR | os.O_CLOEXEC)
    try:
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    for _attempt in range(100):
        filename = unique_base(st.st_size) + suffix
        try:
            link_no_clobber(src, folder_dir / subdir / filename)
        except FileExistsError:
            continue
        fsync_dir(folder_dir / subdir)
        return WrittenMessage(filename, subdir, st.st_size, st.st_mtime)
    raise OSError(errno.EEXIST, "could not find a unique Maildir file name", str(folder_dir))


def make_maildir(folder_dir: Path, subfolder: bool, sync_parent: bool = True) -> bool:
    """Create ``folder_dir/{cur,new,tmp}`` (mode 0700); Maildir++ sub-folders get a ``maildirfolder`` file.

    Returns True if anything was created; then the new entries are fsynced (the parent directory
    too unless ``sync_parent`` is False: the caller fsyncs it once).  Idempotent and safe against
    concurrent creators.
    """
    created = False
    try:
        os.makedirs(folder_dir, mode=0o700)
        created = True
    except FileExistsError:
        pass
    for sub in ("cur", "new", "tmp"):
        try:
            os.mkdir(folder_dir / sub, 0o700)
            created = True
        except FileExistsError:
            pass
    if subfolder:
        marker = folder_dir / "maildirfolder"
        if not marker.exists():
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except FileExistsError:
                pass
            created = True
    if created:
        fsync_dir(folder_dir)
        if sync_parent:
            fsync_dir(folder_dir.parent)
    return created


def clean_tmp(folder_dir: Path, max_age: float = STALE_TMP_SECONDS, now: float | None = None) -> int:
    """Delete files in ``tmp/`` whose mtime is older than ``max_age`` seconds; return how many."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(folder_dir / "tmp"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def read_header_block(f, limit: int = 1 << 20) -> bytes:
    """Read the header block (through the blank line that ends it) from a binary file object.

    Returns at most ``limit`` bytes (a header-only message returns the whole file).
    """
    buf = bytearray()
    while len(buf) < limit:
        chunk = f.read(8192)
        if not chunk:
            break
        start = max(0, len(buf) - 3)
        buf += chunk
        if buf.startswith(b"\r\n"):
            return b"\r\n"
        if buf.startswith(b"\n"):
            return b"\n"
        i = buf.find(b"\r\n\r\n", start)
        j = buf.find(b"\n\n", start)
        ends = [k + 4 for k in (i,) if k >= 0] + [k + 2 for k in (j,) if k >= 0]
        if ends:
            return bytes(buf[: min(ends)])
    return bytes(buf[:limit])


def header_block(data: bytes) -> bytes:
    """Header block of a message held in memory (through the blank line; whole data if none)."""
    if data.startswith(b"\r\n"):
        return b"\r\n"
    if data.startswith(b"\n"):
        return b"\n"
    limit = 1 << 20
    i = data.find(b"\r\n\r\n", 0, limit)
    j = data.find(b"\n\n", 0, i + 2 if i >= 0 else limit)  # bounded: no scan of a whole big CRLF body
    ends = [k + 4 for k in (i,) if k >= 0] + [k + 2 for k in (j,) if k >= 0]
    return data[: min(ends)] if ends else data[:limit]


def is_maildir(folder_dir: str | os.PathLike[str], *, top_may_link: bool = False) -> bool:
    """True if ``folder_dir`` is a Maildir folder the store may use: a real directory whose ``cur/`` and
    ``new/`` (and ``tmp/`` if present) are real directories too, none of them a symbolic link.

    DESIGN §4: a symlink planted inside a user's tree (``.Evil -> /etc``) must never lead outside it.
    ``top_may_link`` allows the folder itself to be a link (INBOX is the user directory, which an
    administrator may have moved to another disk).
    """
    top = os.fspath(folder_dir)
    checks = [(f"{top}/cur", True), (f"{top}/new", True), (f"{top}/tmp", False)]
    if not top_may_link:
        checks.insert(0, (top, True))
    for path, required in checks:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if required:
                return False
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(mode):
            return False
    return True


def list_messages(subdir: str) -> set[str]:
    """The message file names in ``subdir`` (``cur/`` or ``new/``): every entry but symbolic links, which
    could point outside the user's tree (DESIGN §4).  One ``scandir``; the entry type comes with it."""
    with os.scandir(subdir) as entries:
        return {e.name for e in entries if not e.is_symlink()}
