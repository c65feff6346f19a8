"""Two Linux system calls Python's ``os`` module lacks, for the delivery path: ``syncfs`` and ``renameat2``.

- :func:`syncfs` commits a whole file system with one call.  A batch of deliveries (``maildir.write_messages``)
  written to ten users' folders used to need ten file fsyncs (ext4: one journal commit each) and ten
  directory fsyncs; with ``syncfs`` it needs two calls, each one journal commit, whatever the batch size.
  The cost: ``syncfs`` also waits for unrelated dirty data on the same file system, so it is only used for
  two or more files (a lone delivery fsyncs its file and directory, as before), and only on local file
  systems known to commit everything on ``syncfs`` (:func:`syncfs_covers`; FUSE or NFS get fsyncs).
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

__all__ = ["have_syncfs", "syncfs", "syncfs_covers", "rename_no_clobber", "link_no_clobber"]

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
_fstatfs = _libc_function("fstatfs")
if _fstatfs is not None:
    _fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    _fstatfs.restype = ctypes.c_int
_renameat2 = _libc_function("renameat2")
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def have_syncfs() -> bool:
    """True where :func:`syncfs` works (Linux with glibc ≥ 2.14)."""
    return _syncfs is not None


#: statfs(2) f_type of local file systems whose syncfs writes and commits everything (ext2/3/4, XFS, Btrfs,
#: F2FS, ZFS, bcachefs, JFS, tmpfs).  Elsewhere (FUSE, NFS, CIFS, ...) syncfs may not reach the server or may
#: do nothing, so the files are fsynced one by one there.
SYNCFS_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x2FC12FC1, 0xCA451A4E, 0x3153464A,
                                 0x01021994})
_covers: dict[int, bool] = {}


def syncfs_covers(dev: int, fd: int) -> bool:
    """True if :func:`syncfs` on ``fd`` (on device ``dev``) makes that file system's changes durable."""
    known = _covers.get(dev)
    if known is None:
        known = _covers[dev] = _syncfs is not None and _fs_type(fd) in SYNCFS_FILE_SYSTEMS
    return known


def _fs_type(fd: int) -> int | None:
    if _fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)           # struct statfs (120 bytes on x86-64); f_type comes first
    if _fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def syncfs(fd: int) -> None:
    """Write out and commit everything of the file system ``fd`` is on (``syncfs(2)``); raises OSError.

    Since Linux 5.8 it reports a write-back error that happened since ``fd`` was opened, so callers pass
    a descriptor they opened for the files it must cover."""
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def link_no_clobber(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
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
