"""The delivery path's system calls: renameat2 without overwriting (and its fallback), syncfs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mailsuite.store import flush


@pytest.mark.parametrize("native", [True, False])
def test_rename_no_clobber(tmp_path: Path, monkeypatch, native: bool) -> None:
    if not native:
        monkeypatch.setattr(flush, "_renameat2", None)      # link + unlink, as without renameat2
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        flush.rename_no_clobber(str(src), str(dst))
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
    dst.unlink()
    flush.rename_no_clobber(str(src), str(dst))
    assert dst.read_bytes() == b"new" and not src.exists()
    with pytest.raises(FileNotFoundError):
        flush.rename_no_clobber(str(src), str(tmp_path / "other"))


def test_syncfs(tmp_path: Path) -> None:
    if not flush.have_syncfs():
        pytest.skip("syncfs is Linux-only")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        flush.syncfs(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        flush.syncfs(fd)                     # closed: EBADF, raised rather than ignored
    assert info.value.errno == errno.EBADF


def test_syncfs_only_on_local_file_systems(tmp_path: Path, monkeypatch) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        dev = os.fstat(fd).st_dev
        if flush.have_syncfs():
            assert flush._fs_type(fd) is not None
        monkeypatch.setattr(flush, "_covers", {})
        monkeypatch.setattr(flush, "_fs_type", lambda _fd: 0x65735546)     # FUSE: syncfs may do nothing
        assert not flush.syncfs_covers(dev, fd)
        monkeypatch.setattr(flush, "_covers", {})
        monkeypatch.setattr(flush, "_fs_type", lambda _fd: 0xEF53)         # ext4
        assert flush.syncfs_covers(dev, fd) == flush.have_syncfs()
    finally:
        os.close(fd)
