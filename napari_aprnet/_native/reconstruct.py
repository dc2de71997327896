"""The reconstruction section of ``native/aprnet.h``: cell row tables, their checks, images from particles."""
from __future__ import annotations

import numpy as np

from napari_aprnet._native.common import cancel_ptr, check, ffi, lib, ptr, shape3
from napari_aprnet.structure import check_cell_arrays, level_shape

_PROBLEMS = {1: "level {level} is above level_max {level_max}",
             2: "cells are not sorted by level",
             3: "a level-{level} coordinate is outside the level grid {grid}",
             4: "level-{level} cells are not in row-major order or repeat a cell"}


class CellTable:
    """A validated set of cells plus its row table, as the C ``aprnet_cell_table``.

    Holds the numpy arrays the C struct points into, so the struct stays valid
    as long as this object lives, and ``volume``, the pixels the cells cover.
    Build with :func:`cell_table`.
    """

    __slots__ = ("arrays", "c", "volume")

    def __init__(self, arrays: dict, c, volume: int):
        self.arrays = arrays
        self.c = c
        self.volume = volume


def check_cells(shape, level_max: int, levels: np.ndarray, coords: np.ndarray, what: str = "particles",
                rows: bool = False) -> tuple[np.ndarray, int, np.ndarray | None, np.ndarray | None]:
    """:func:`napari_aprnet.structure.validate_cells` in one C pass; also the volume and the row table.

    Returns
    -------
    level_offsets : ndarray of int64 (level_max + 2,)
    volume : int
        Pixels covered by the cells, clipped to the image.
    row_base, row_start : ndarray of int64, or None
        The row table of ``aprnet_cell_table`` when ``rows`` is true.
    """
    shape, level_max, levels, coords = check_cell_arrays(shape, level_max, levels, coords, what)
    if int(np.prod(shape, dtype=object)) >= 1 << 62:
        raise ValueError(f"{what}: an image of shape {shape} is too large (2**62 pixels or more)")
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    coords = np.ascontiguousarray(coords, dtype=np.int32)
    offsets = np.zeros(level_max + 2, dtype=np.int64)
    row_base = row_start = None
    if rows:
        counts = [int(np.prod(((1,) * (3 - len(shape)) + level_shape(shape, level_max, lv))[:2])) + 1
                  for lv in range(level_max + 1)]
        row_base = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
        row_start = np.zeros(sum(counts), dtype=np.int64)
    shape_c = np.array(shape3(shape), dtype=np.int64)
    out = ffi.new("int64_t[2]")
    problem = ffi.new("int32_t *")
    status = lib.aprnet_cells_check(
        ffi.cast("int64_t *", shape_c.ctypes.data), len(shape), level_max, len(levels),
        ptr(levels, np.uint8, "levels"), ptr(coords, np.int32, "coords"),
        ptr(offsets, np.int64, "offsets", writable=True), out, ffi.NULL if row_base is None else
        ptr(row_base, np.int64, "row_base"), ffi.NULL if row_start is None else
        ptr(row_start, np.int64, "row_start", writable=True), out + 1, problem)
    if status == lib.APRNET_ERR_DATA:
        level = int(levels[int(out[1])])
        grid = level_shape(shape, level_max, min(level, level_max))
        raise ValueError(f"{what}: " + _PROBLEMS[int(problem[0])].format(level=level, level_max=level_max, grid=grid))
    check(status, f"{what}: cell check")
    return offsets, int(out[0]), row_base, row_start


def cell_table(shape, level_max: int, levels: np.ndarray, coords: np.ndarray,
               what: str = "particles") -> CellTable:
    """Check cells and build their C row table in one C pass (:func:`check_cells`)."""
    shape = tuple(int(s) for s in shape)
    coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, len(shape))
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    offsets, volume, row_base, row_start = check_cells(shape, level_max, levels, coords, what, rows=True)
    arrays = {"coords": coords, "level_offsets": offsets, "row_base": row_base, "row_start": row_start}
    c = ffi.new("aprnet_cell_table *")
    c.shape = list(shape3(shape))
    c.ndim = len(shape)
    c.level_max = int(level_max)
    c.n = len(levels)
    c.coords = ptr(coords, np.int32, "coords")
    c.level_offsets = ptr(offsets, np.int64, "level_offsets")
    c.row_base = ptr(row_base, np.int64, "row_base")
    c.row_start = ptr(row_start, np.int64, "row_start")
    return CellTable(arrays, c, volume)


def particle_table(structure) -> CellTable:
    """Row table of a structure's particles (validated once, cached on the structure)."""
    table = structure._cache.get("_native_particle_table")
    if table is None:
        table = cell_table(structure.shape, structure.level_max, structure.levels, structure.coords)
        structure._cache["_native_particle_table"] = table
    return table


def tree_table(structure) -> CellTable:
    """Row table of a structure's interior tree (cached on the structure)."""
    table = structure._cache.get("_native_tree_table")
    if table is None:
        t_levels, t_coords, _ = structure.tree
        table = cell_table(structure.shape, structure.level_max, t_levels, t_coords, "tree")
        structure._cache["_native_tree_table"] = table
    return table


def validate_partition(structure, cancel_flag=None) -> None:
    """:func:`napari_aprnet.structure.validate_structure` in linear time, in C (no interior tree built).

    Checks cells in range and sorted, the pixels they cover, and that no cell
    lies inside a coarser one (together: the cells tile the image exactly
    once). The row table built on the way stays cached for reconstruction.

    Raises
    ------
    ValueError
        Describing the first problem found.
    """
    table = particle_table(structure)
    if structure.n_particles == 0:
        raise ValueError("the structure has no particles")
    if not 0 <= structure.level_min <= int(structure.levels[0]):
        raise ValueError(f"level_min {structure.level_min} is above the coarsest particle level "
                         f"{int(structure.levels[0])}")
    if table.volume != structure.n_pixels:
        raise ValueError(f"the particle cells cover {table.volume} pixels, the image has {structure.n_pixels}: "
                         "they are not a partition of the image")
    first = ffi.new("int64_t *")
    status = lib.aprnet_cells_nested(table.c, first, cancel_ptr(cancel_flag))
    if status == lib.APRNET_ERR_DATA:
        i = int(first[0])
        raise ValueError(f"particle {i} (level {int(structure.levels[i])}, at {structure.coords[i].tolist()}) lies "
                         "inside a coarser particle cell: the cells overlap")
    check(status, "partition check")


def region_bounds(shape, region) -> tuple[np.ndarray, tuple[int, ...]]:
    """Normalise ``region`` (per-axis (start, stop), or None) to int64[6] (z0,z1,y0,y1,x0,x1)."""
    shape = tuple(int(s) for s in shape)
    if region is None:
        region = tuple((0, n) for n in shape)
    region = tuple((int(a), int(b)) for a, b in region)
    if len(region) != len(shape):
        raise ValueError(f"region has {len(region)} axes, the image has {len(shape)}")
    for (a, b), n in zip(region, shape):
        if not 0 <= a <= b <= n:
            raise IndexError(f"region {region} is outside the image of shape {shape}")
    full = ((0, 1),) * (3 - len(shape)) + region
    return np.array([v for ab in full for v in ab], dtype=np.int64), tuple(b - a for a, b in region)


def _step3(step, ndim: int) -> np.ndarray:
    step = (1,) * ndim if step is None else tuple(int(s) for s in step)
    if len(step) != ndim or min(step) < 1:
        raise ValueError(f"step must be {ndim} positive integers, got {step}")
    return np.array((1,) * (3 - ndim) + step, dtype=np.int64)


def _values2d(values: np.ndarray, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim not in (1, 2) or values.shape[0] != n:
        raise ValueError(f"values must have shape ({n},) or ({n}, C), got {values.shape}")
    if values.ndim == 2 and values.shape[1] < 1:
        raise ValueError("values must have at least one channel")
    return np.ascontiguousarray(values, dtype=np.float32).reshape(n, -1)


_REDUCE = {"constant": lib.APRNET_REDUCE_MEAN, "level": lib.APRNET_REDUCE_MAX}


def reconstruct(structure, values: np.ndarray | None, mode: str = "constant", region=None, *,
                level: int | None = None, step=None, cancel_flag=None) -> np.ndarray:
    """Image of particle values over ``region`` of the grid of ``level`` (C, OpenMP).

    Parameters
    ----------
    structure : APRStructure
    values : ndarray, shape (Np,) or (Np, C), or None
        Per-particle values (converted to float32); ignored (may be None) for ``mode="level"``.
    mode : {"constant", "smooth", "level"}
        ``"level"``: the level of the particle covering each cell (the level map).
    region : sequence of (start, stop) per axis, optional
        Half-open ranges in cells of ``level``; the whole grid if None.
    level : int, optional
        Grid level, ``level_max`` (pixels, the default) or coarser: a cell
        holding finer particles takes their tree mean (``"constant"``) or
        their finest level (``"level"``); see ``aprnet_reconstruct_constant``.
        ``"smooth"`` works at ``level_max`` only.
    step : sequence of int per axis, optional
        Keep every ``step``-th cell of the region along each axis (like a numpy slice step).
    cancel_flag : int32 ndarray, optional
        The C code stops with ``CancelledError`` when ``cancel_flag[0] != 0``.

    Returns
    -------
    ndarray of float32
        ``ceil(extent / step)`` per axis, plus a trailing channel axis when ``values`` is 2D.
    """
    if mode not in ("constant", "smooth", "level"):
        raise ValueError(f"unknown reconstruction mode {mode!r}; use 'constant', 'smooth' or 'level'")
    level = structure.level_max if level is None else int(level)
    if not 0 <= level <= structure.level_max:
        raise ValueError(f"level {level} is outside 0..{structure.level_max}")
    if mode == "smooth" and level != structure.level_max:
        raise ValueError("the smooth reconstruction is computed at the pixel level only")
    vals = None if mode == "level" else _values2d(values, structure.n_particles)
    reg, extent = region_bounds(level_shape(structure.shape, structure.level_max, level), region)
    steps = _step3(step, structure.ndim)
    nch = 1 if vals is None else vals.shape[1]
    counts = tuple(-(-e // s) for e, s in zip(extent, steps[3 - structure.ndim:]))
    out = np.zeros(counts + (nch,), dtype=np.float32)
    if out.size:
        if mode == "smooth":
            _smooth_into(structure, vals, reg, steps, out, cancel_ptr(cancel_flag))
        else:
            check(lib.aprnet_reconstruct_constant(
                particle_table(structure).c, ffi.NULL if vals is None else ptr(vals, np.float32, "values"), nch,
                level, _REDUCE[mode], ffi.cast("int64_t *", reg.ctypes.data),
                ffi.cast("int64_t *", steps.ctypes.data), ptr(out, np.float32, "out", writable=True),
                cancel_ptr(cancel_flag)), f"{mode} reconstruction")
    return out if vals is not None and np.ndim(values) == 2 else out[..., 0]


def _smooth_into(structure, vals: np.ndarray, reg: np.ndarray, steps: np.ndarray, out: np.ndarray, cancel) -> None:
    """Smooth image of region ``reg`` into ``out``; with steps, one plane (z) at a time, then subsampled."""
    parts, tree = particle_table(structure), tree_table(structure)
    vptr = ptr(vals, np.float32, "values")
    if not np.any(steps > 1):
        check(lib.aprnet_reconstruct_smooth(parts.c, tree.c, vptr, vals.shape[1],
                                            ffi.cast("int64_t *", reg.ctypes.data),
                                            ptr(out, np.float32, "out", writable=True), cancel),
              "smooth reconstruction")
        return
    planes = out.reshape((-1,) + out.shape[-3:]) if structure.ndim == 3 else out[None]
    for i, z in enumerate(range(int(reg[0]), int(reg[1]), int(steps[0]))):
        one = reg.copy()
        one[0:2] = (z, z + 1)
        plane = np.zeros((int(one[3] - one[2]), int(one[5] - one[4]), vals.shape[1]), dtype=np.float32)
        check(lib.aprnet_reconstruct_smooth(parts.c, tree.c, vptr, vals.shape[1],
                                            ffi.cast("int64_t *", one.ctypes.data),
                                            ptr(plane, np.float32, "plane", writable=True), cancel),
              "smooth reconstruction")
        planes[i] = plane[::int(steps[1]), ::int(steps[2])]
