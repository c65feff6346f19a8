"""Two Linux system calls Python's ``os`` module lacks, for the delivery path: ``syncfs`` and ``renameat2``.

- :func:`syncfs` commits a whole file system with one call.  A batch of deliveries (``maildir.write_messages``)
  written to ten users' folders used to need ten file fsyncs (ext4: one journal commit each) and ten
  directory fsyncs; with ``syncfs`` it needs two calls, each one journal commit, whatever the batch size.
  The cost: ``syncfs`` also waits for unrelated dirty data on the same file system, so it is only used for
  batches of two or more (a lone delivery fsyncs its file and directory, as before).
- :func:`rename_no_clobber` moves ``tmp/`` → ``new/`` in one call (``RENAME_NOREPLACE``: never overwrite,
  DESIGN §3) instead of ``link`` + ``unlink``.

Each system call from a worker thread gives the GIL away and takes it back, and every time it does so while
the reactor thread runs, both threads stall on a hand-off (bench 1-2, bench/RESULTS.md).  Fewer calls per
delivery are fewer hand-offs.  Both fall back to the portable calls where the C library or the file system
lacks them.  ``ctypes`` foreign calls release the GIL like ``os`` functions do.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

__all__ = ["have_syncfs", "syncfs", "rename_no_clobber", "link_no_clobber"]

_AT_FDCWD = -100          # <fcntl.h> on Linux
_RENAME_NOREPLACE = 1     # <linux/fs.h>


def _libc_function(name: str) -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


_syncfs = _libc_function("syncfs")
if _syncfs is not None:
    _syncfs.argtypes = [ctypes.c_int]
    _syncfs.restype = ctypes.c_int
_renameat2 = _libc_function("renameat2")
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def have_syncfs() -> bool:
    """True where :func:`syncfs` works (Linux with glibc ≥ 2.14)."""
    return _syncfs is not None


def syncfs(fd: int) -> None:
    """Write out and commit everything of the file system ``fd`` is on (``syncfs(2)``); raises OSError.

    Since Linux 5.8 it reports a write-back error that happened since ``fd`` was opened, so callers pass
    a descriptor they opened for the files it must cover."""
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def link_no_clobber(src: str, dst: str) -> None:
    """Make ``dst`` name the file ``src`` names, then drop ``src``; never overwrite ``dst``.

    Uses ``link()`` + ``unlink()`` (fails with FileExistsError if ``dst`` exists).  On file systems
    without hard links falls back to ``rename()`` after an existence check.
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", str(dst)) from e
        os.rename(src, dst)
        return
    try:
        os.unlink(src)
    except FileNotFoundError:
        pass


def rename_no_clobber(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then FileExistsError): ``renameat2`` with
    ``RENAME_NOREPLACE``, or :func:`link_no_clobber` where the kernel or file system lacks it."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), src, None, dst)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), src, None, dst)
    link_no_clobber(src, dst)
