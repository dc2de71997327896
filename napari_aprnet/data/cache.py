"""Converted APRs of fixed datasets, in memory and optionally on disk, keyed by image hash."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_aprnet.apr import load_apr, save_apr
from napari_aprnet.data.spec import InputSpec
from napari_aprnet.io.apr_h5 import APRFileError

__all__ = ["APRCache", "image_key"]


def image_key(image: np.ndarray, spec: InputSpec) -> str:
    """Hash of an image's bytes, shape and dtype plus the APR parameters."""
    h = hashlib.sha1()
    a = np.ascontiguousarray(image)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
    h.update(spec.apr_key().encode())
    return h.hexdigest()


class APRCache:
    """Converted APRs keyed by :func:`image_key`.

    Held in memory (the main process adds every APR its workers converted;
    workers started for the next epoch inherit or receive the filled cache)
    and, with ``directory``, also on disk (one ``<key>.apr`` file per APR, in
    the validated :mod:`napari_aprnet.io.apr_h5` format, written atomically),
    which persists across runs. Files in the folder are data, never code: an
    entry that does not load as a valid ``.apr`` file is converted again.
    """

    _KEY = re.compile(r"[0-9a-f]{40}")  # a sha1 hex digest from image_key

    def __init__(self, directory: str | Path | None = None):
        self.memory: dict[str, Any] = {}
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.memory)

    def _path(self, key: str) -> Path:
        if not self._KEY.fullmatch(key):
            raise ValueError(f"APR cache keys are hex digests from image_key(), got {key!r}")
        return self.directory / f"{key}.apr"

    def get(self, key: str):
        apr = self.memory.get(key)
        if apr is None and self.directory is not None:
            path = self._path(key)
            if path.is_file():
                try:
                    apr = load_apr(path)
                except (OSError, APRFileError):
                    apr = None  # damaged entry: convert again
        return apr

    def put(self, key: str, apr) -> None:
        self.memory[key] = apr
        if self.directory is not None:
            path = self._path(key)
            if not path.exists():
                save_apr(apr, path)
