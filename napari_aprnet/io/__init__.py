"""Files: images (:mod:`.images`), our ``.apr`` format (:mod:`.apr_h5`) and atomic writes (:mod:`._atomic`).

:func:`detect_format` names the format of a file; a LibAPR reader will come
as ``io/libapr.py``. ``APR.load`` / ``APR.save`` (and :func:`napari_aprnet.apr.load_apr`)
read and write ``.apr`` files.
"""
from __future__ import annotations

import os

from napari_aprnet.io.apr_h5 import APRFileError, read_apr, save_apr
from napari_aprnet.io.images import IMAGE_EXTENSIONS, read_image, write_image

__all__ = ["IMAGE_EXTENSIONS", "read_image", "write_image", "APRFileError", "read_apr", "save_apr",
           "detect_format"]


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file from its name: ``"apr"`` (our HDF5 format) or ``"image"`` (:data:`IMAGE_EXTENSIONS`).

    Raises
    ------
    ValueError
        If neither reads the file.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".apr":
        return "apr"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    raise ValueError(f"{os.fspath(path)}: unknown file format {ext!r} (expected .apr or one of "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
