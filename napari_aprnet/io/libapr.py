"""LibAPR / pyapr ``.apr`` files: read them into our structure and write them back.

Facts of the format (LibAPR's ``APRFile`` / ``APRWriter``, checked against
files that pyapr 1.0.7 writes)::

    /ParticleRepr/<channel>          attrs: level_min, level_max, x_num, y_num, z_num (uint64),
                                            total_number_particles, x_num_<l>, ... (int32, per level),
                                            rel_error, lambda, I_th, sigma_th, ... (float32)
    /ParticleRepr/<channel>/y_vec        uint16 (Np,)  y of each particle at its level
    /ParticleRepr/<channel>/xz_end_vec   uint64 (1 + rows,) cumulative end of each (level, z, x) row
    /ParticleRepr/<channel>/<name>       one value per particle ("particles" by default)
    /ParticleRepr/<channel>/Tree/...     the same for the interior tree (optional)

LibAPR's axes ``(z, x, y)`` are numpy's ``(z, y, x)``: its ``y`` is numpy's
last axis, and its particle order (level, z, x, y) is exactly our order
(level, then row-major). A file with ``z_num == 1`` is a 2D image ``(x_num,
y_num)``. The rows of level ``l`` are ``z_num_l * x_num_l`` consecutive
entries of ``xz_end_vec`` after entry 0 (levels below ``level_min`` have no
rows). LibAPR writes ``int`` values into its uint64 attributes, so only the
low 32 bits of those are meaningful; they are read that way. Chunks are
usually Blosc-compressed (HDF5 filter 32001), decoded through ``hdf5plugin``.

LibAPR's older random-access layout (``map_level``, ``map_y_begin``, ...,
2018-2019) is read too (:mod:`._libapr_random`), into the same structure and
particle order; files of 2018 keep the attributes above on ``/ParticleRepr``
instead of the channel. Files whose particles use LibAPR's lossy compression
(``compress_type`` > 0) are refused. Particle values of any integer or float
type are read as float32 (integers beyond 2**24 lose precision); NaN/Inf
values are refused. Both layouts reproduce the reconstructions LibAPR stored
beside its test files exactly (``tests/test_libapr_reference.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from napari_aprnet._native import validate_partition
from napari_aprnet.io._atomic import atomic_write_bytes
from napari_aprnet.io._libapr_random import MAP_DATASETS, random_access_cells
from napari_aprnet.io.apr_h5 import APRFileError, _dataset_obj, read_hdf5
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, level_max_for_shape, level_shape

__all__ = ["LibAPRContents", "read_libapr", "save_libapr", "is_libapr_file"]

_ACCESS = {"y_vec", "xz_end_vec"} | MAP_DATASETS
# LibAPR attribute -> APRParameters field; LibAPR's dx is along its x = numpy's second-to-last axis
_PARAMS = {"rel_error": "rel_error", "lambda": "lambda_", "I_th": "Ip_th", "sigma_th": "sigma_th",
           "sigma_th_max": "sigma_th_max", "grad_th": "grad_th", "dy": "dx", "dx": "dy", "dz": "dz",
           "psfx": "psf"}


@dataclass
class LibAPRContents:
    """What :func:`read_libapr` returns.

    Attributes
    ----------
    structure : APRStructure
    particles : dict of str to ndarray of float32
        Every particle dataset of the channel, by name, in file order.
    parameters : APRParameters or None
        The conversion parameters (None if they are not valid for us).
    channel : str
        The ``/ParticleRepr`` group that was read.
    attributes : dict
        LibAPR's parameter attributes as stored, the original particle dtypes,
        the tree's particle sets and the ``layout`` ("linear" or "random-access").
    """

    structure: APRStructure
    particles: dict[str, np.ndarray]
    parameters: APRParameters | None
    channel: str
    attributes: dict = field(default_factory=dict)


def is_libapr_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file with a ``/ParticleRepr`` group."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as h5:
            return h5.get("ParticleRepr", getclass=True) is h5py.Group
    except (OSError, ValueError):
        return False


def _u32(group, name: str, path: str) -> int:
    if name not in group.attrs:
        raise APRFileError(f"{path}: attribute '{name}' of {group.name} is missing; not a LibAPR file")
    value = np.asarray(group.attrs[name]).reshape(-1)
    if value.size != 1 or value.dtype.kind not in "iu":
        raise APRFileError(f"{path}: attribute '{name}' of {group.name} must be one integer, got {value!r}")
    # LibAPR stores C ints in uint64 attributes: the high 32 bits are undefined
    return int(np.uint64(value[0]) & np.uint64(0xFFFFFFFF)) if value.dtype.itemsize == 8 else int(value[0])


def _pick_channel(root, channel: str | None, path: str):
    import h5py

    names = [n for n in root if root.get(n, getclass=True) is h5py.Group]
    if channel is None:
        if not names:
            raise APRFileError(f"{path}: /ParticleRepr holds no channel group")
        channel = "t" if "t" in names else names[0] if len(names) == 1 else None
        if channel is None:
            raise APRFileError(f"{path} holds several channels ({', '.join(names)}); pass channel=<name>")
    elif channel not in names:
        raise APRFileError(f"{path}: channel '{channel}' not found (the file has: {', '.join(names) or 'none'})")
    return channel, root[channel]


def _parameters(group) -> tuple[APRParameters | None, dict]:
    raw = {}
    for name in list(_PARAMS) + ["psfy", "psfz", "noise_sd_estimate", "background_intensity_estimate"]:
        if name in group.attrs:
            v = np.asarray(group.attrs[name]).reshape(-1)
            if v.size == 1 and v.dtype.kind in "iuf":
                raw[name] = float(v[0])
    kwargs = {ours: raw[theirs] for theirs, ours in _PARAMS.items() if theirs in raw}
    try:
        return APRParameters(**kwargs), raw
    except (TypeError, ValueError):
        return None, raw


def _linear_cells(group, dims3: tuple[int, int, int], level_min: int, level_max: int, n_total: int, path: str):
    """Levels and ``(z, x, y)`` from ``y_vec`` + ``xz_end_vec``, checking sizes before reading."""
    grids = [level_shape(dims3, level_max, lv) for lv in range(level_max + 1)]
    rows = [g[0] * g[1] if lv >= level_min else 0 for lv, g in enumerate(grids)]
    dxz, dy = _dataset_obj(group, "xz_end_vec", path), _dataset_obj(group, "y_vec", path)
    if dxz.shape != (1 + sum(rows),):
        raise APRFileError(f"{path}: xz_end_vec has shape {dxz.shape}, expected ({1 + sum(rows)},) for image "
                           f"{dims3} and levels {level_min}..{level_max}")
    if dy.shape != (n_total,):
        raise APRFileError(f"{path}: y_vec has shape {dy.shape} for {n_total} particles (one y each)")
    if dxz.dtype.kind not in "iu" or dy.dtype.kind not in "iu":
        raise APRFileError(f"{path}: y_vec / xz_end_vec must hold integers, got {dy.dtype} / {dxz.dtype}")
    ends = dxz[()].astype(np.int64)
    counts = np.diff(ends)
    if ends[0] != 0 or ends[-1] != n_total or np.any(counts < 0):
        raise APRFileError(f"{path}: xz_end_vec is not a cumulative row count from 0 to {n_total}")
    y = dy[()].astype(np.int32)
    levels = np.empty(n_total, np.uint8)
    coords = np.empty((n_total, 3), np.int32)
    row0 = 0
    for lv in range(level_max + 1):
        if not rows[lv]:
            continue
        lo, hi = ends[row0], ends[row0 + rows[lv]]
        c = counts[row0: row0 + rows[lv]]
        r = np.repeat(np.arange(rows[lv], dtype=np.int64), c)
        g = grids[lv]
        coords[lo:hi, 0], coords[lo:hi, 1], coords[lo:hi, 2] = r // g[1], r % g[1], y[lo:hi]
        if hi > lo and int(y[lo:hi].max()) >= g[2]:
            raise APRFileError(f"{path}: a level-{lv} y coordinate is beyond the level's {g[2]} cells")
        levels[lo:hi] = lv
        row0 += rows[lv]
    return levels, coords


def _particle_sets(group, n: int, path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import h5py

    values, dtypes = {}, {}
    for name in group:
        if not isinstance(group.get(name, getlink=True), h5py.HardLink):
            raise APRFileError(f"{path}: '{group.name}/{name}' is a link to other data; .apr files must hold "
                               f"their data themselves")
        if name in _ACCESS or group.get(name, getclass=True) is not h5py.Dataset:
            continue
        ds = _dataset_obj(group, name, path)
        if ds.shape != (n,) or ds.dtype.kind not in "iuf":
            continue
        arr = ds[()]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise APRFileError(f"{path}: particle set '{name}' contains NaN or Inf; replace them before "
                               f"opening the file (napari-aprnet refuses non-finite particle values)")
        values[name] = np.ascontiguousarray(arr, dtype=np.float32)
        dtypes[name] = str(arr.dtype)
    if not values:
        raise APRFileError(f"{path}: no particle dataset of {n} numbers in {group.name}; write the particles "
                           f"with pyapr.io.write (not only the structure)")
    return values, dtypes


def _metadata(group):
    """The group holding the image attributes: the channel, or /ParticleRepr in files of 2018."""
    return group.parent if "level_max" not in group.attrs and "level_max" in group.parent.attrs else group


def _random_access_cells(group, meta, dims3, level_min: int, level_max: int, n_total: int, path: str):
    n_rows, n_gaps = _u32(meta, "total_number_non_empty_rows", path), _u32(meta, "total_number_gaps", path)
    max_rows = sum(g[0] * g[1] for g in (level_shape(dims3, level_max, lv) for lv in range(level_min, level_max + 1)))
    if not 1 <= n_rows <= min(max_rows, n_gaps) or n_gaps > n_total:
        raise APRFileError(f"{path}: {n_rows} non-empty rows and {n_gaps} gaps cannot hold {n_total} particles "
                           f"of an image {dims3} (at most {max_rows} rows, gaps between rows and particles); "
                           f"the attributes are damaged")
    index_shape = _dataset_obj(group, "map_global_index", path).shape
    per_gap = "particle_cell_type" in group or (index_shape == (n_gaps,) and n_gaps != n_rows)
    return random_access_cells(group, dims3, level_min, level_max, (n_total, n_rows, n_gaps), per_gap,
                               "lzxy_order" in group.attrs, path)


def _cells(group, meta, shape: tuple[int, ...], level_min: int, level_max: int, path: str):
    """Levels, coordinates and the order of the values (None: file order) of either layout."""
    dims3 = (1,) * (3 - len(shape)) + tuple(shape)
    n_total, n_pixels = _u32(meta, "total_number_particles", path), int(np.prod(shape, dtype=np.int64))
    if not 1 <= n_total <= n_pixels:
        raise APRFileError(f"{path}: total_number_particles is {n_total}, expected 1..{n_pixels} for image {shape}")
    if "y_vec" in group:
        levels, coords3 = _linear_cells(group, dims3, level_min, level_max, n_total, path)
        order = None
    elif "map_level" in group:
        levels, coords3, order = _random_access_cells(group, meta, dims3, level_min, level_max, n_total, path)
    else:
        raise APRFileError(f"{path}: {group.name} holds neither y_vec / xz_end_vec (linear layout) nor map_level, "
                           f"map_y_begin, ... (random-access layout); not a LibAPR file, or a damaged one")
    return levels, coords3[:, 3 - len(shape):], order


def _read_group(group, path: str, channel: str) -> LibAPRContents:
    meta = _metadata(group)
    nz, nx, ny = (_u32(meta, k, path) for k in ("z_num", "x_num", "y_num"))
    if min(nz, nx, ny) < 1 or max(nz, nx, ny) > (1 << 31):
        raise APRFileError(f"{path}: invalid image size z_num={nz}, x_num={nx}, y_num={ny}")
    shape = (nx, ny) if nz == 1 else (nz, nx, ny)
    level_max, level_min = _u32(meta, "level_max", path), _u32(meta, "level_min", path)
    if level_max != level_max_for_shape(shape) or not 0 <= level_min <= level_max:
        raise APRFileError(f"{path}: levels {level_min}..{level_max} do not fit the image {shape} (level_max "
                           f"should be {level_max_for_shape(shape)})")
    if "compress_type" in meta.attrs and np.asarray(meta.attrs["compress_type"]).reshape(-1)[:1].tolist() != [0]:
        raise APRFileError(f"{path}: the particle values are stored with LibAPR's lossy compression (compress_type "
                           f"{np.asarray(meta.attrs['compress_type']).reshape(-1)}), which napari-aprnet does not "
                           f"decode; re-save the file with pyapr without compression")
    levels, coords, order = _cells(group, meta, shape, level_min, level_max, path)
    particles, dtypes = _particle_sets(group, len(levels), path)
    if order is not None:
        particles = {name: values[order] for name, values in particles.items()}
    try:
        structure = APRStructure(shape, level_max, levels, coords, level_min)
        validate_partition(structure)
    except (ValueError, TypeError, OverflowError) as exc:
        raise APRFileError(f"{path}: inconsistent particle structure: {exc}") from None
    params, raw = _parameters(meta)
    tree = group.get("Tree")
    tree_sets = [n for n in tree if n not in _ACCESS] if tree is not None else []
    layout = "linear" if "y_vec" in group else "random-access"
    return LibAPRContents(structure, particles, params, channel, {"libapr_parameters": raw, "particle_dtypes": dtypes,
                                                                  "tree_particle_sets": tree_sets, "layout": layout})


def read_libapr(path: str | os.PathLike, channel: str | None = None) -> LibAPRContents:
    """Read a LibAPR / pyapr ``.apr`` file (linear or random-access layout, time point 0).

    Parameters
    ----------
    path : str or PathLike
    channel : str, optional
        Group under ``/ParticleRepr`` (default ``"t"``, or the only one).

    Returns
    -------
    LibAPRContents

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    APRFileError
        If it is not a LibAPR file, is damaged, or holds inconsistent arrays.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter LibAPR compresses with)

    def read(h5, path: str) -> LibAPRContents:
        root = h5.get("ParticleRepr")
        if not isinstance(root, h5py.Group):
            raise APRFileError(f"{path} has no /ParticleRepr group: not a LibAPR file")
        name, group = _pick_channel(root, channel, path)
        return _read_group(group, path, name)

    return read_hdf5(path, read)


# ----- writing -----------------------------------------------------------------

def _linear_access(levels: np.ndarray, coords3: np.ndarray, dims3, level_max: int, first: int, last: int):
    """``y_vec`` and ``xz_end_vec`` of cells sorted by level, z, x, y, with rows for levels ``first..last``."""
    parts = [np.zeros(1, np.uint64)]
    off = np.zeros(level_max + 2, np.int64)
    np.cumsum(np.bincount(levels, minlength=level_max + 1)[: level_max + 1], out=off[1:])
    for lv in range(first, last + 1):
        g = level_shape(dims3, level_max, lv)
        c = coords3[off[lv]: off[lv + 1]].astype(np.int64)
        counts = np.bincount(c[:, 0] * g[1] + c[:, 1], minlength=g[0] * g[1])
        parts.append(counts.astype(np.uint64))
    ends = np.cumsum(np.concatenate(parts), dtype=np.uint64)
    return coords3[:, 2].astype(np.uint16), ends


def _write_access(group, levels, coords, shape, level_max, first, last, compression) -> None:
    dims3 = (1,) * (3 - len(shape)) + tuple(shape)
    coords3 = np.concatenate([np.zeros((len(coords), 3 - len(shape)), np.int32), coords], axis=1)
    y_vec, ends = _linear_access(levels, coords3, dims3, level_max, first, last)
    group.create_dataset("y_vec", data=y_vec, **compression)
    group.create_dataset("xz_end_vec", data=ends, **compression)


def _write_attrs(group, apr, shape, level_min: int) -> None:
    nz, nx, ny = (1,) * (3 - len(shape)) + tuple(shape)
    u64 = {"level_min": level_min, "level_max": apr.level_max, "x_num": nx, "y_num": ny, "z_num": nz,
           "total_number_particles": apr.n_particles, "time_steps": 0}
    for key, value in u64.items():
        group.attrs.create(key, [value], dtype=np.uint64)
    for lv in range(level_min, apr.level_max):
        g = level_shape((nz, nx, ny), apr.level_max, lv)
        for key, value in zip(("z_num", "x_num", "y_num"), g):
            group.attrs.create(f"{key}_{lv}", [value], dtype=np.int32)
    params = apr.parameters if isinstance(apr.parameters, APRParameters) else APRParameters()
    floats = {theirs: getattr(params, ours) for theirs, ours in _PARAMS.items()}
    floats.update(psfy=params.psf, psfz=params.psf, noise_sd_estimate=0.0, background_intensity_estimate=0.0,
                  compress_background=1.0, quantization_factor=0.5)
    for key, value in floats.items():
        group.attrs.create(key, [value], dtype=np.float32)
    for key in ("compress_type",):
        group.attrs.create(key, [0], dtype=np.int32)
    group.attrs.create("lzxy_order", [1], dtype=np.int32)
    group.attrs["name"] = np.bytes_(b"napari-aprnet")
    group.attrs["githash"] = np.bytes_(b"napari-aprnet")


def save_libapr(apr, path: str | os.PathLike, *, particles_name: str = "particles", channel: str = "t",
                tree: bool = True) -> None:
    """Write ``apr`` as a LibAPR ``.apr`` file (linear layout, Blosc/zstd) that pyapr 1.0.7 reads.

    The particle values are written as float32 (pyapr reads them as
    ``FloatParticles``). The file is built in memory and moved into place
    atomically, like :func:`napari_aprnet.io.apr_h5.save_apr`.

    Raises
    ------
    ValueError
        If the APR has several channels, NaN/Inf values or a last axis
        beyond LibAPR's uint16 ``y`` range.
    """
    import h5py
    import hdf5plugin

    path = os.fspath(path)
    s = apr.structure
    values = np.asarray(apr.values)
    if values.ndim != 1:
        raise ValueError(f"cannot save {path} as a LibAPR file: it holds one value per particle, this APR has "
                         f"{values.shape[1]} channels; save each with apr.with_values(apr.values[:, c])")
    if not np.isfinite(values).all():
        raise ValueError(f"cannot save {path}: the particle values contain NaN or Inf; replace them first")
    if s.shape[-1] > 65535:
        raise ValueError(f"cannot save {path} as a LibAPR file: its y axis (numpy's last, {s.shape[-1]} "
                         f"pixels) is beyond LibAPR's uint16 coordinates")
    level_min = int(s.level_min)
    comp = dict(hdf5plugin.Blosc(cname="zstd", clevel=4, shuffle=hdf5plugin.Blosc.SHUFFLE))
    with h5py.File("in-memory.apr", "w", driver="core", backing_store=False) as h5:
        group = h5.create_group("ParticleRepr").create_group(channel)
        _write_attrs(group, apr, s.shape, level_min)
        _write_access(group, s.levels, s.coords, s.shape, s.level_max, level_min, s.level_max, comp)
        group.create_dataset(particles_name, data=values.astype(np.float32), **comp)
        if tree:
            t_levels, t_coords, _ = s.tree
            keep = t_levels >= max(level_min - 1, 0)
            tg = group.create_group("Tree")
            tg.attrs.create("total_number_particles", [int(keep.sum())], dtype=np.uint64)
            _write_access(tg, t_levels[keep], t_coords[keep], s.shape, s.level_max, max(level_min - 1, 0),
                          s.level_max - 1, comp)
        h5.flush()
        image = h5.id.get_file_image()
    atomic_write_bytes(path, image)
