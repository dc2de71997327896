"""The ``.apr`` file format: one compressed HDF5 file per APR.

Layout (format version 1)::

    /                 attrs: format = "napari-aprnet APR", format_version = 1,
                             library_version, parameters (JSON text or "null")
    /structure        attrs: shape (int64[ndim]), level_max, level_min
    /structure/levels uint8 (Np,)          particle levels
    /structure/coords int32 (Np, ndim)     particle coordinates at their level
    /values           float32 (Np,) or (Np, C)

Arrays are gzip-compressed with the shuffle filter. Files are written to a
temporary file in the target directory and moved into place with
``os.replace``, so a failed save never leaves a half-written file behind or
damages an existing one. Loading checks everything (format tag, dtypes,
shapes, level ranges, sort order, that the cells partition the image) and
raises :class:`APRFileError` saying what is wrong.
"""
from __future__ import annotations

import json
import os

import numpy as np

from napari_aprnet._atomic import atomic_write_bytes

__all__ = ["APRFileError", "FORMAT_NAME", "FORMAT_VERSION", "save_apr", "load_apr"]

FORMAT_NAME = "napari-aprnet APR"
FORMAT_VERSION = 1
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


class APRFileError(ValueError):
    """An ``.apr`` file is not ours, damaged, truncated or inconsistent."""


def _params_json(params) -> str:
    if params is None:
        return "null"
    data = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    return json.dumps(data, sort_keys=True)


def _params_from_json(text: str, path: str):
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise APRFileError(f"{path}: the stored parameters are not valid JSON ({exc})") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise APRFileError(f"{path}: the stored parameters are not a JSON object")
    try:
        from napari_aprnet.params import APRParameters
    except ImportError:  # formation not available: keep the plain dict
        return data
    try:
        return APRParameters.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise APRFileError(f"{path}: the stored parameters are invalid ({exc})") from None


def _dataset(group, name: str, data: np.ndarray):
    kwargs = _COMPRESSION if data.size else {}
    return group.create_dataset(name, data=data, **kwargs)


def _write_contents(h5, apr) -> None:
    """Write the datasets and attributes of ``apr`` into the open HDF5 file ``h5``."""
    from napari_aprnet import __version__

    s = apr.structure
    h5.attrs["format"] = FORMAT_NAME
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["library_version"] = __version__
    h5.attrs["parameters"] = _params_json(apr.parameters)
    g = h5.create_group("structure")
    g.attrs["shape"] = np.asarray(s.shape, dtype=np.int64)
    g.attrs["level_max"] = int(s.level_max)
    g.attrs["level_min"] = int(s.level_min)
    _dataset(g, "levels", np.ascontiguousarray(s.levels, dtype=np.uint8))
    _dataset(g, "coords", np.ascontiguousarray(s.coords, dtype=np.int32))
    _dataset(h5, "values", np.ascontiguousarray(apr.values, dtype=np.float32))


def save_apr(apr, path: str | os.PathLike) -> None:
    """Write ``apr`` to ``path`` atomically (temporary file + ``os.replace``).

    Raises
    ------
    FileNotFoundError
        If the target directory does not exist.
    OSError
        If the file cannot be written (``errno.ENOSPC``: the disk is full); an
        existing file at ``path`` is left unchanged.
    """
    import h5py

    path = os.fspath(path)
    # built in memory and written by Python: an HDF5 library that hits a write
    # error (a full disk) while closing a file can crash the process
    with h5py.File("in-memory.apr", "w", driver="core", backing_store=False) as h5:
        _write_contents(h5, apr)
        h5.flush()
        image = h5.id.get_file_image()
    atomic_write_bytes(path, image)


def _read(h5, name: str, path: str) -> np.ndarray:
    import h5py

    obj = h5.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise APRFileError(f"{path}: dataset '{name}' is missing")
    return obj[()]


def _attr(obj, name: str, path: str, where: str = "/"):
    if name not in obj.attrs:
        raise APRFileError(f"{path}: attribute '{name}' of {where} is missing")
    return obj.attrs[name]


def _check_dtype(arr: np.ndarray, kind: str, name: str, path: str) -> None:
    if np.asarray(arr).dtype.kind not in kind:
        raise APRFileError(f"{path}: '{name}' has dtype {np.asarray(arr).dtype}, expected "
                           f"{'integers' if 'i' in kind or 'u' in kind else 'floats'}")


def _load_contents(h5, path: str):
    from napari_aprnet.apr import APR, validate_structure
    from napari_aprnet.structure import APRStructure

    fmt = h5.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode(errors="replace")
    if fmt != FORMAT_NAME:
        raise APRFileError(f"{path} is an HDF5 file but not a napari-aprnet .apr file "
                           f"(format tag {fmt!r}, expected {FORMAT_NAME!r})")
    version = int(_attr(h5, "format_version", path))
    if version > FORMAT_VERSION or version < 1:
        raise APRFileError(f"{path} has .apr format version {version}; this napari-aprnet reads "
                           f"versions 1..{FORMAT_VERSION} (upgrade napari-aprnet)")
    g = h5.get("structure")
    if g is None:
        raise APRFileError(f"{path}: group 'structure' is missing")
    shape = np.asarray(_attr(g, "shape", path, "/structure"))
    level_max = _attr(g, "level_max", path, "/structure")
    level_min = _attr(g, "level_min", path, "/structure")
    _check_dtype(shape, "iu", "structure shape", path)
    if shape.ndim != 1 or len(shape) not in (2, 3) or np.any(shape < 1):
        raise APRFileError(f"{path}: invalid image shape {shape.tolist()}")
    levels = _read(h5, "structure/levels", path)
    coords = _read(h5, "structure/coords", path)
    values = _read(h5, "values", path)
    _check_dtype(levels, "u", "structure/levels", path)
    _check_dtype(coords, "iu", "structure/coords", path)
    if values.dtype != np.float32:
        raise APRFileError(f"{path}: 'values' has dtype {values.dtype}, expected float32")
    ndim = len(shape)
    if levels.ndim != 1 or coords.ndim != 2 or coords.shape != (len(levels), ndim):
        raise APRFileError(f"{path}: structure arrays disagree: levels {levels.shape}, coords "
                           f"{coords.shape} (expected (Np,) and (Np, {ndim}))")
    if values.ndim not in (1, 2) or values.shape[0] != len(levels):
        raise APRFileError(f"{path}: 'values' has shape {values.shape} but there are {len(levels)} particles")
    if levels.dtype != np.uint8 or coords.dtype != np.int32:
        raise APRFileError(f"{path}: structure arrays must be uint8 levels and int32 coords, "
                           f"got {levels.dtype} and {coords.dtype}")
    try:
        structure = APRStructure(tuple(int(s) for s in shape), int(level_max), levels, coords,
                                 int(level_min))
        validate_structure(structure)
    except (ValueError, TypeError, OverflowError) as exc:
        raise APRFileError(f"{path}: inconsistent particle structure: {exc}") from None
    params = _params_from_json(_attr(h5, "parameters", path), path)
    return APR(structure, values, params)


def load_apr(path: str | os.PathLike):
    """Read an ``.apr`` file written by :func:`save_apr`.

    Returns
    -------
    APR

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    APRFileError
        If the file is not an .apr file, is damaged or truncated, or holds
        inconsistent arrays.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .apr file: {path}")
    if os.path.isdir(path):
        raise APRFileError(f"{path} is a directory, not an .apr file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise APRFileError(f"{path} is not a readable .apr file (not HDF5, damaged or truncated): {exc}") from None
    try:
        with h5:
            return _load_contents(h5, path)
    except APRFileError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise APRFileError(f"{path} is damaged or truncated: {type(exc).__name__}: {exc}") from None
