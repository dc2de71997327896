"""Reading images from disk and writing small images (PNG/TIFF/NPY).

``.apr`` files are handled by :mod:`napari_aprnet.io.apr_h5`.
"""
from __future__ import annotations

import os

import numpy as np

from napari_aprnet.io._atomic import atomic_output

__all__ = ["IMAGE_EXTENSIONS", "read_image", "write_image"]

#: Extensions :func:`read_image` understands, by reader.
IMAGE_EXTENSIONS = {".tif": "tifffile", ".tiff": "tifffile", ".png": "imageio", ".jpg": "imageio",
                    ".jpeg": "imageio", ".npy": "numpy"}


# The first bytes of each format: a file that lacks them is named wrongly or damaged.
_SIGNATURES = {"TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "PNG": (b"\x89PNG\r\n\x1a\n",),
               "JPEG": (b"\xff\xd8\xff",), "NPY": (b"\x93NUMPY",)}
_FORMAT_OF = {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".npy": "NPY"}


def _check_signature(path: str, ext: str) -> None:
    fmt = _FORMAT_OF[ext]
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise ValueError(f"{path} is an empty file, not a {fmt} image")
    if not head.startswith(_SIGNATURES[fmt]):
        found = next((name for name, sigs in _SIGNATURES.items() if head.startswith(sigs)), None)
        what = f"a {found} file" if found else f"not a {fmt} file (no {fmt} header)"
        raise ValueError(f"{path} is {what} despite its {ext} extension; rename it or convert it to {fmt}")


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a pixel image from a TIFF, PNG, JPEG or NPY file.

    Parameters
    ----------
    path : str or path-like
        ``.tif``/``.tiff`` (tifffile), ``.png``/``.jpg``/``.jpeg`` (imageio)
        or ``.npy`` (numpy, without pickles).

    Returns
    -------
    ndarray
        The image as stored (dtype and axes unchanged; RGB images are
        ``(y, x, 3)``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is not supported or the content cannot be read as an image.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such image file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not an image file")
    ext = _extension(path)
    reader = IMAGE_EXTENSIONS.get(ext)
    if reader is None:
        supported = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"cannot read {path}: unsupported extension {ext or '(none)'!r}; "
                         f"supported: {supported}")
    _check_signature(path, ext)
    try:
        if reader == "tifffile":
            import tifffile

            image = tifffile.imread(path)
        elif reader == "imageio":
            import imageio.v3 as iio

            image = iio.imread(path)
        else:
            image = np.load(path, allow_pickle=False)
    except Exception as exc:  # every reader has its own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot read {path} as a {ext} image (damaged or unsupported variant): "
                         f"{type(exc).__name__}: {first}") from None
    image = np.asarray(image)
    if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(f"{path} does not hold a numeric image (dtype {image.dtype})")
    if image.size == 0:
        raise ValueError(f"{path} holds no pixels (shape {image.shape}): the file is damaged or has no "
                         f"image data")
    return image


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``image`` to a PNG/JPEG (imageio), TIFF (tifffile) or NPY file atomically."""
    path = os.fspath(path)
    ext = _extension(path)
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot write {path}: unsupported extension {ext or '(none)'!r}; "
                         f"use one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    with atomic_output(path, suffix=ext) as tmp:
        if IMAGE_EXTENSIONS[ext] == "tifffile":
            import tifffile

            tifffile.imwrite(tmp, image)
        elif IMAGE_EXTENSIONS[ext] == "imageio":
            import imageio.v3 as iio

            iio.imwrite(tmp, image, extension=ext)
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(image), allow_pickle=False)
