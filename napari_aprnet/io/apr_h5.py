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

from napari_aprnet._native import validate_partition
from napari_aprnet._version import __version__
from napari_aprnet.io._atomic import atomic_write_bytes
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, level_max_for_shape

__all__ = ["APRFileError", "FORMAT_NAME", "FORMAT_VERSION", "save_apr", "read_apr"]

FORMAT_NAME = "napari-aprnet APR"
FORMAT_VERSION = 1
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_MAX_RATIO = 1100  # largest plausible ratio of data size to stored size (gzip: 1032)


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
        return APRParameters.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise APRFileError(f"{path}: the stored parameters are invalid ({exc})") from None


def _dataset(group, name: str, data: np.ndarray):
    kwargs = _COMPRESSION if data.size else {}
    return group.create_dataset(name, data=data, **kwargs)


def _write_contents(h5, apr) -> None:
    """Write the datasets and attributes of ``apr`` into the open HDF5 file ``h5``."""

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
    ValueError
        If the values contain NaN or Inf (loading refuses them).
    OSError
        If the file cannot be written (``errno.ENOSPC``: the disk is full); an
        existing file at ``path`` is left unchanged.
    """
    import h5py

    path = os.fspath(path)
    if not np.isfinite(apr.values).all():
        raise ValueError(f"cannot save {path}: the particle values contain NaN or Inf, which .apr files "
                         f"refuse; replace them first (e.g. np.nan_to_num)")
    # built in memory and written by Python: an HDF5 library that hits a write
    # error (a full disk) while closing a file can crash the process
    with h5py.File("in-memory.apr", "w", driver="core", backing_store=False) as h5:
        _write_contents(h5, apr)
        h5.flush()
        image = h5.id.get_file_image()
    atomic_write_bytes(path, image)


def _dataset_obj(h5, name: str, path: str):
    """The dataset ``name``, refusing links, virtual datasets and external storage.

    Such datasets would read other files of the machine (and a re-save would
    embed them), so .apr files must hold all their data themselves.
    """
    import h5py

    obj = h5
    for part in name.split("/"):
        link = obj.get(part, getlink=True)
        if link is None:
            raise APRFileError(f"{path}: dataset '{name}' is missing")
        if not isinstance(link, h5py.HardLink):
            raise APRFileError(f"{path}: '{name}' is a {type(link).__name__} to other data; .apr files must "
                               f"hold their data themselves")
        obj = obj[part]
    if not isinstance(obj, h5py.Dataset):
        raise APRFileError(f"{path}: dataset '{name}' is missing")
    if obj.is_virtual or obj.external:
        raise APRFileError(f"{path}: dataset '{name}' reads its data from other files (virtual or external "
                           f"storage); .apr files must hold their data themselves")
    return obj


def _read(ds, path: str) -> np.ndarray:
    """Read a dataset whose shape was checked, after checking its stored size can hold it."""
    stored = ds.id.get_storage_size()
    # gzip cannot compress beyond ~1032:1; datasets of unwritten (fill-value)
    # chunks would be materialised in memory from a tiny file
    if ds.nbytes > _MAX_RATIO * stored + (1 << 20):
        raise APRFileError(f"{path}: dataset '{ds.name}' stores {stored} bytes for {ds.nbytes} bytes of data; "
                           f"the file is damaged or was not written by napari-aprnet")
    return ds[()]


def _attr(obj, name: str, path: str, where: str = "/"):
    if name not in obj.attrs:
        raise APRFileError(f"{path}: attribute '{name}' of {where} is missing")
    return obj.attrs[name]


def _check_dtype(arr: np.ndarray, kind: str, name: str, path: str) -> None:
    if np.asarray(arr).dtype.kind not in kind:
        raise APRFileError(f"{path}: '{name}' has dtype {np.asarray(arr).dtype}, expected "
                           f"{'integers' if 'i' in kind or 'u' in kind else 'floats'}")


def _load_contents(h5, path: str):
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
    for name, value in (("level_max", level_max), ("level_min", level_min)):
        if np.asarray(value).dtype.kind not in "iu" or np.asarray(value).ndim != 0:
            raise APRFileError(f"{path}: {name} of /structure must be an integer, got {value!r}")
    level_max, level_min = int(level_max), int(level_min)
    if level_max != level_max_for_shape(tuple(int(s) for s in shape)):
        raise APRFileError(f"{path}: level_max {level_max} does not match the image shape {shape.tolist()} "
                           f"(expected {level_max_for_shape(tuple(int(s) for s in shape))})")
    if not 0 <= level_min <= level_max:
        raise APRFileError(f"{path}: level_min {level_min} is outside 0..level_max ({level_max})")
    dl, dc, dv = (_dataset_obj(h5, n, path) for n in ("structure/levels", "structure/coords", "values"))
    ndim = len(shape)
    n_pixels = int(np.prod(shape.astype(object)))
    n = dl.shape[0] if len(dl.shape) == 1 else -1
    if n < 1 or n > n_pixels or dc.shape != (n, ndim):
        raise APRFileError(f"{path}: structure arrays have shapes levels {dl.shape}, coords {dc.shape}; "
                           f"expected (Np,) and (Np, {ndim}) with 1 <= Np <= {n_pixels} (the pixel count)")
    if len(dv.shape) not in (1, 2) or dv.shape[0] != n or (len(dv.shape) == 2 and not 1 <= dv.shape[1] <= 4096):
        raise APRFileError(f"{path}: 'values' has shape {dv.shape}; expected ({n},) or ({n}, C) with "
                           f"1 <= C <= 4096")
    if dl.dtype != np.uint8 or dc.dtype != np.int32:
        raise APRFileError(f"{path}: structure arrays must be uint8 levels and int32 coords, "
                           f"got {dl.dtype} and {dc.dtype}")
    if dv.dtype != np.float32:
        raise APRFileError(f"{path}: 'values' has dtype {dv.dtype}, expected float32")
    levels, coords, values = _read(dl, path), _read(dc, path), _read(dv, path)
    if not np.isfinite(values).all():
        raise APRFileError(f"{path}: 'values' contains NaN or Inf; the file is damaged")
    try:
        structure = APRStructure(tuple(int(s) for s in shape), level_max, levels, coords, level_min)
        validate_partition(structure)
    except (ValueError, TypeError, OverflowError) as exc:
        raise APRFileError(f"{path}: inconsistent particle structure: {exc}") from None
    params = _params_from_json(_attr(h5, "parameters", path), path)
    return structure, values, params


def read_apr(path: str | os.PathLike):
    """Read an ``.apr`` file written by :func:`save_apr` (``APR.load`` wraps this).

    Returns
    -------
    structure : APRStructure
    values : ndarray of float32, shape (Np,) or (Np, C)
    params : APRParameters or None

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    APRFileError
        If the file is not an .apr file, is damaged or truncated, or holds
        inconsistent arrays.
    """
    return read_hdf5(path, _load_contents)


def read_hdf5(path: str | os.PathLike, read):
    """Open the HDF5 file ``path`` read-only and return ``read(h5, path)``.

    Shared by the ``.apr`` readers: a missing file is FileNotFoundError; a
    folder, a file that is not HDF5 and any error while reading become
    :class:`APRFileError` naming the file.
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
            return read(h5, path)
    except APRFileError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise APRFileError(f"{path} is damaged or truncated: {type(exc).__name__}: {exc}") from None
