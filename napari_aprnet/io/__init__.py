"""Files: images (:mod:`.images`), our ``.apr`` format (:mod:`.apr_h5`), LibAPR's (:mod:`.libapr`), atomic writes.

:func:`detect_format` names the format of a file. ``APR.load`` / ``APR.save``
(and :func:`napari_aprnet.apr.load_apr`) read and write ``.apr`` files of
both formats.
"""
from __future__ import annotations

import os

from napari_aprnet.io.apr_h5 import APRFileError, read_apr, save_apr
from napari_aprnet.io.images import IMAGE_EXTENSIONS, read_image, write_image

__all__ = ["IMAGE_EXTENSIONS", "read_image", "write_image", "APRFileError", "read_apr", "save_apr",
           "detect_format", "APR_FORMATS"]

#: The ``.apr`` formats: ours (:mod:`.apr_h5`) and LibAPR / pyapr's (:mod:`.libapr`).
APR_FORMATS = ("apr", "libapr")


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file: ``"apr"`` (ours), ``"libapr"`` (LibAPR / pyapr) or ``"image"`` (:data:`IMAGE_EXTENSIONS`).

    ``.apr`` files are told apart by their content (a ``/ParticleRepr`` group
    is LibAPR's); anything else of that name is ``"apr"``, whose reader says
    what is wrong with it.

    Raises
    ------
    ValueError
        If neither reads the file.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".apr":
        from napari_aprnet.io.libapr import is_libapr_file

        return "libapr" if os.path.isfile(path) and is_libapr_file(path) else "apr"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    raise ValueError(f"{os.fspath(path)}: unknown file format {ext!r} (expected .apr or one of "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
