"""Atomic output: the target changes only when the write completes."""
import pytest

from napari_aprnet.io._atomic import atomic_output, atomic_write_bytes, atomic_write_text


def test_success_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new\r\n")
    assert target.read_bytes() == b"new\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"")


def _fake_full_disk(monkeypatch):
    """Path.write_bytes writes half of the data, then fails as on a full disk."""
    import errno
    from pathlib import Path

    def write_bytes(self, data):
        with open(self, "wb") as fh:
            fh.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_full_disk_is_a_clear_error_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    _fake_full_disk(monkeypatch)
    with pytest.raises(OSError, match="no space left on device while writing .*out.bin") as info:
        atomic_write_bytes(target, b"new data")
    assert info.value.errno == 28
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_apr_and_checkpoint_saves_on_a_full_disk(tmp_path, monkeypatch):
    import numpy as np

    from napari_aprnet.apr import APR
    from napari_aprnet.checkpoint import save_checkpoint

    apr = APR.from_image(np.arange(64, dtype=np.float32).reshape(8, 8))
    _fake_full_disk(monkeypatch)
    with pytest.raises(OSError, match="no space left on device"):
        apr.save(tmp_path / "a.apr")
    with pytest.raises(OSError, match="no space left on device"):
        save_checkpoint(tmp_path / "c.pt", model_config={}, state_dict={}, class_names=["a"], input_spec={},
                        train={})
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path):
    import fcntl
    import os

    target = tmp_path / "out.apr"
    stale = tmp_path / ".out.apr.k3j_x9qa.tmp"
    stale.write_bytes(b"left by a killed save")
    busy = tmp_path / ".out.apr.abcdefgh.tmp"  # a save still running (holds the lock)
    busy.write_bytes(b"")
    others = [tmp_path / ".out.apr.notours", tmp_path / ".other.apr.k3j_x9qa.tmp"]
    for p in others:
        p.write_bytes(b"")
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        atomic_write_bytes(target, b"new")
    finally:
        os.close(fd)
    assert not stale.exists()
    assert busy.exists() and all(p.exists() for p in others)
    assert target.read_bytes() == b"new"


def test_mode_follows_umask_or_the_replaced_file(tmp_path):
    import os

    old = os.umask(0o002)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"x")
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "new2.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "new2.bin").stat().st_mode & 0o777 == 0o640
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o604)
    atomic_write_bytes(kept, b"new")
    assert kept.stat().st_mode & 0o777 == 0o604
