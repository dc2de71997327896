"""The reconstruction section of ``native/aprnet.h``: cell row tables and pixel images from particles."""
from __future__ import annotations

import numpy as np

from napari_aprnet._native.common import check, ffi, lib, ptr, shape3
from napari_aprnet.structure import level_shape, validate_cells


class CellTable:
    """A validated set of cells plus its row table, as the C ``aprnet_cell_table``.

    Holds the numpy arrays the C struct points into, so the struct stays valid
    as long as this object lives. Build with :func:`cell_table`.
    """

    __slots__ = ("arrays", "c")

    def __init__(self, arrays: dict, c):
        self.arrays = arrays
        self.c = c


def cell_table(shape, level_max: int, levels: np.ndarray, coords: np.ndarray,
               what: str = "particles") -> CellTable:
    """Validate cells (:func:`validate_cells`) and build their C row table."""

    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, ndim)
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    offsets = validate_cells(shape, level_max, levels, coords, what)
    row_base = np.zeros(level_max + 1, dtype=np.int64)
    starts = []
    total = 0
    for level in range(level_max + 1):
        grid = (1,) * (3 - ndim) + level_shape(shape, level_max, level)
        nrows = grid[0] * grid[1]
        lo, hi = int(offsets[level]), int(offsets[level + 1])
        c = coords[lo:hi]
        rows = c[:, -2].astype(np.int64) + (c[:, 0].astype(np.int64) * grid[1] if ndim == 3 else 0)
        start = np.empty(nrows + 1, dtype=np.int64)
        start[0] = lo
        np.cumsum(np.bincount(rows, minlength=nrows), out=start[1:])
        start[1:] += lo
        row_base[level] = total
        total += nrows + 1
        starts.append(start)
    row_start = np.concatenate(starts)
    arrays = {"coords": coords, "level_offsets": offsets, "row_base": row_base, "row_start": row_start}
    c = ffi.new("aprnet_cell_table *")
    c.shape = list(shape3(shape))
    c.ndim = ndim
    c.level_max = int(level_max)
    c.n = len(levels)
    c.coords = ptr(coords, np.int32, "coords")
    c.level_offsets = ptr(offsets, np.int64, "level_offsets")
    c.row_base = ptr(row_base, np.int64, "row_base")
    c.row_start = ptr(row_start, np.int64, "row_start")
    return CellTable(arrays, c)


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


def region_bounds(shape, region) -> tuple[np.ndarray, tuple[int, ...]]:
    """Check ``region`` (per-axis (start, stop), or None: the whole image).

    Returns the C form int64[6] (z0, z1, y0, y1, x0, x1) and the region's shape.
    """
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


def _values2d(values: np.ndarray, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim not in (1, 2) or values.shape[0] != n:
        raise ValueError(f"values must have shape ({n},) or ({n}, C), got {values.shape}")
    if values.ndim == 2 and values.shape[1] < 1:
        raise ValueError("values must have at least one channel")
    return np.ascontiguousarray(values, dtype=np.float32).reshape(n, -1)


def reconstruct(structure, values: np.ndarray, mode: str = "constant", region=None) -> np.ndarray:
    """Pixel image of particle values over ``region`` (C, OpenMP).

    Parameters
    ----------
    structure : APRStructure
    values : ndarray, shape (Np,) or (Np, C)
        Per-particle values (converted to float32).
    mode : {"constant", "smooth"}
    region : sequence of (start, stop) per axis, optional
        Half-open pixel ranges; the whole image if None.

    Returns
    -------
    ndarray of float32
        Region shape, plus a trailing channel axis when ``values`` is 2D.
    """
    if mode not in ("constant", "smooth"):
        raise ValueError(f"unknown reconstruction mode {mode!r}; use 'constant' or 'smooth'")
    vals = _values2d(values, structure.n_particles)
    reg, out_shape = region_bounds(structure.shape, region)
    nch = vals.shape[1]
    out = np.zeros(out_shape + (nch,), dtype=np.float32)
    parts = particle_table(structure)
    vptr = ptr(vals, np.float32, "values")
    rptr = ffi.cast("int64_t *", reg.ctypes.data)
    optr = ptr(out, np.float32, "out", writable=True)
    if out.size == 0:
        pass
    elif mode == "constant":
        check(lib.aprnet_reconstruct_constant(parts.c, vptr, nch, rptr, optr, ffi.NULL),
              "constant reconstruction")
    else:
        tree = tree_table(structure)
        check(lib.aprnet_reconstruct_smooth(parts.c, tree.c, vptr, nch, rptr, optr, ffi.NULL),
              "smooth reconstruction")
    return out if np.ndim(values) == 2 else out[..., 0]
