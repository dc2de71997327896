"""Atomic file output: write to a temporary file next to the target, then rename.

A crash or an exception while writing leaves any earlier file at the target
untouched and no temporary file behind. A process killed while writing
leaves its temporary file; the next save to the same target removes it.
The written file gets the mode of the file it replaces, or ``0666`` less the
umask for a new file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temps(directory: Path, name: str, suffix: str) -> None:
    """Remove temporary files of earlier, killed saves to ``name`` (ours: ``.name.XXXXXXXX<suffix>``).

    A file still being written is locked by its writer and kept.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}{re.escape(suffix)}")
    try:
        candidates = [e for e in os.scandir(directory) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in candidates:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
        except OSError:
            pass  # locked by a running save, or already gone
        finally:
            os.close(fd)


def _no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device while writing {path}; the file was not written "
                                 f"(an earlier file there is unchanged): free disk space or choose another "
                                 f"folder")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    Parameters
    ----------
    path : str or PathLike
        The final file. Its folder must exist.
    suffix : str
        Suffix of the temporary file (some writers choose the format from it).

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist.
    OSError
        With ``errno.ENOSPC`` and a plain message when the disk is full.
    """
    path = Path(path)
    directory = path.absolute().parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist; create it first")
    _remove_stale_temps(directory, path.name, suffix)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file as in use for _remove_stale_temps
        yield tmp
        wfd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(wfd)
        finally:
            os.close(wfd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise _no_space(path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines unchanged) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
