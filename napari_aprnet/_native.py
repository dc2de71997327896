"""The only module that talks to the C library (cffi API mode).

It loads ``napari_aprnet._aprnet_cffi``, converts numpy arrays to C pointers
without copying where it can, checks shapes, dtypes and bounds before every
call, and turns C status codes into Python exceptions.

Wrappers are grouped in the same sections as ``native/aprnet.h``.
"""
from __future__ import annotations

import numpy as np

try:
    from napari_aprnet._aprnet_cffi import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "napari_aprnet's C library is not built. Install the package with "
        "`pip install .` (or `pip install -e .`) from the repository root; "
        "it compiles native/*.c with gcc and OpenMP."
    ) from exc

__all__ = ["ffi", "lib", "NativeError", "check", "ptr", "version", "max_threads", "set_num_threads"]


class NativeError(RuntimeError):
    """The C library reported a failure that is not the caller's fault."""


class CancelledError(RuntimeError):
    """A long C computation was cancelled through its cancel flag."""


_MESSAGES = {
    lib.APRNET_ERR_ARG: (ValueError, "invalid argument passed to the C library"),
    lib.APRNET_ERR_NOMEM: (MemoryError, "the C library could not allocate memory"),
    lib.APRNET_ERR_CANCELLED: (CancelledError, "the computation was cancelled"),
    lib.APRNET_ERR_INTERNAL: (NativeError, "internal error in the C library (please report it)"),
    lib.APRNET_ERR_BOUNDS: (IndexError, "an index passed to the C library is out of bounds"),
}


def check(status: int, what: str) -> None:
    """Raise the Python exception matching a C status code.

    Parameters
    ----------
    status : int
        Value returned by a C function.
    what : str
        Short description of the call, used in the message.
    """
    if status == lib.APRNET_OK:
        return
    exc_type, message = _MESSAGES.get(status, (NativeError, f"unknown C status {status}"))
    raise exc_type(f"{what}: {message}")


_CTYPES = {
    np.dtype(np.float32): "float *",
    np.dtype(np.float64): "double *",
    np.dtype(np.int32): "int32_t *",
    np.dtype(np.int64): "int64_t *",
    np.dtype(np.uint8): "uint8_t *",
    np.dtype(np.uint16): "uint16_t *",
    np.dtype(np.int8): "int8_t *",
}


def ptr(arr: np.ndarray, dtype, name: str = "array", writable: bool = False):
    """Return a C pointer to ``arr``'s memory, checking dtype and layout.

    The array must already be C-contiguous with the given dtype: wrappers
    convert their inputs first (``np.ascontiguousarray(x, dtype)``) so a copy
    is made only when needed. No copy is made here.
    """
    dt = np.dtype(dtype)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dt:
        raise TypeError(f"{name} must have dtype {dt}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if arr.size == 0:
        return ffi.NULL
    return ffi.cast(_CTYPES[dt], arr.ctypes.data)


def shape3(shape) -> tuple[int, int, int]:
    """(y, x) or (z, y, x) -> (nz, ny, nx)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (1,) + shape
    if len(shape) == 3:
        return shape
    raise ValueError(f"expected a 2D or 3D shape, got {shape}")


# ===== common =====

def version() -> str:
    """Version string of the compiled C library."""
    return ffi.string(lib.aprnet_version()).decode()


def max_threads() -> int:
    """Number of OpenMP threads the C library will use."""
    return int(lib.aprnet_max_threads())


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads used by the C library (n >= 1)."""
    if int(n) < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    lib.aprnet_set_num_threads(int(n))


# ===== formation =====

_FORMATION_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
}


def _formation_image(image: np.ndarray):
    """(pointer, dtype code, shape3) of a C-contiguous float32/uint16/uint8 image."""
    if not isinstance(image, np.ndarray) or image.dtype not in _FORMATION_DTYPES:
        raise TypeError("formation images must be float32, uint16 or uint8 numpy arrays")
    if not image.flags.c_contiguous:
        raise ValueError("formation images must be C-contiguous")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"formation images must be non-empty 2D or 3D arrays, got shape {image.shape}")
    code = getattr(lib, "APRNET_DTYPE_" + _FORMATION_DTYPES[image.dtype])
    return ffi.cast("void *", image.ctypes.data), code, shape3(image.shape)


def _cancel_ptr(cancel_flag):
    if cancel_flag is None:
        return ffi.NULL
    if not (isinstance(cancel_flag, np.ndarray) and cancel_flag.dtype == np.int32 and cancel_flag.size >= 1):
        raise TypeError("cancel flag must be an int32 numpy array with at least one element")
    return ffi.cast("int32_t *", cancel_flag.ctypes.data)


def formation_grad_sigma(image: np.ndarray, spacing, lambda_: float, psf: int, cancel_flag=None):
    """Stage 1 of APR formation: half-resolution gradient, local intensity scale and smoothed image.

    Parameters
    ----------
    image : ndarray, float32/uint16/uint8, C-contiguous, 2D or 3D
    spacing : sequence of float
        Pixel spacing per image axis (numpy order).
    lambda_ : float
        Smoothing-spline parameter (0 = none).
    psf : int
        Point-spread-function size in pixels (>= 1).
    cancel_flag : int32 ndarray, optional
        The C code stops with ``CancelledError`` when ``cancel_flag[0] != 0``.

    Returns
    -------
    grad_ds, sigma_ds, smooth_ds : ndarray of float32, shape ``ceil(image.shape / 2)``
    """
    img_ptr, code, shp = _formation_image(image)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != image.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must hold {image.ndim} positive finite values, got {spacing}")
    sp3 = (1.0,) * (3 - image.ndim) + spacing
    half = tuple(-(-s // 2) for s in image.shape)
    grad = np.empty(half, np.float32)
    sigma = np.empty(half, np.float32)
    smooth = np.empty(half, np.float32)
    st = lib.aprnet_formation_grad_sigma(
        img_ptr, code, ffi.new("int64_t[3]", shp), ffi.new("double[3]", sp3), float(lambda_), int(psf),
        ptr(grad, np.float32, "grad", True), ptr(sigma, np.float32, "sigma", True),
        ptr(smooth, np.float32, "smooth", True), _cancel_ptr(cancel_flag))
    check(st, "APR formation (gradient and local intensity scale)")
    return grad, sigma, smooth


def formation_levels(grad_ds: np.ndarray, sigma_ds: np.ndarray, smooth_ds: np.ndarray, *, ip_th: float,
                     sigma_th: float, sigma_th_max: float, grad_th: float, rel_error: float, level_max: int,
                     h_min: float, cancel_flag=None) -> np.ndarray:
    """Stage 2: thresholds and the required level of each half-resolution cell (uint8)."""
    shp = grad_ds.shape
    for name, a in (("grad_ds", grad_ds), ("sigma_ds", sigma_ds), ("smooth_ds", smooth_ds)):
        if a.shape != shp:
            raise ValueError(f"{name} has shape {a.shape}, expected {shp}")
    g = np.ascontiguousarray(grad_ds, np.float32)
    s = np.ascontiguousarray(sigma_ds, np.float32)
    m = np.ascontiguousarray(smooth_ds, np.float32)
    out = np.empty(shp, np.uint8)
    st = lib.aprnet_formation_levels(
        ptr(g, np.float32, "grad_ds"), ptr(s, np.float32, "sigma_ds"), ptr(m, np.float32, "smooth_ds"),
        ffi.new("int64_t[3]", shape3(shp)), float(ip_th), float(sigma_th), float(sigma_th_max),
        float(grad_th), float(rel_error), int(level_max), float(h_min), ptr(out, np.uint8, "level_ds", True),
        _cancel_ptr(cancel_flag))
    check(st, "APR formation (levels)")
    return out


def pulling_scheme(level_ds: np.ndarray, shape, level_max: int, level_min: int,
                   neighborhood_optimization: bool, cancel_flag=None):
    """Stage 3: particle cells. Returns ``(levels uint8 (Np,), coords int32 (Np, ndim))`` in contract order."""
    shp = shape3(shape)
    ndim = len(tuple(shape))
    if not 0 <= int(level_min) <= int(level_max) <= 60:
        raise ValueError(f"need 0 <= level_min <= level_max <= 60, got {level_min}, {level_max}")
    shp_c = ffi.new("int64_t[3]", shp)
    nbytes = int(lib.aprnet_pulling_tree_bytes(shp_c, int(level_max), int(level_min)))
    tree = np.zeros(max(nbytes, 1), np.uint8)
    lds = np.ascontiguousarray(level_ds, np.uint8)
    if nbytes > 0:
        expected = tuple(-(-s // 2) for s in shp)
        if shape3(lds.shape) != expected:
            raise ValueError(f"level_ds has shape {lds.shape}, expected {expected}")
    counts = np.zeros(int(level_max) + 1, np.int64)
    st = lib.aprnet_pulling_scheme(
        ptr(lds, np.uint8, "level_ds"), shp_c, int(level_max), int(level_min), int(bool(neighborhood_optimization)),
        ffi.cast("uint8_t *", tree.ctypes.data) if nbytes else ffi.NULL, nbytes,
        ffi.cast("int64_t *", counts.ctypes.data), _cancel_ptr(cancel_flag))
    check(st, "APR formation (pulling scheme)")
    n = int(counts.sum())
    levels = np.empty(n, np.uint8)
    coords = np.empty((n, ndim), np.int32)
    st = lib.aprnet_pulling_emit(
        ffi.cast("uint8_t *", tree.ctypes.data) if nbytes else ffi.NULL, nbytes, shp_c, int(level_max),
        int(level_min), ndim, n, ptr(levels, np.uint8, "levels", True), ptr(coords, np.int32, "coords", True))
    check(st, "APR formation (particle output)")
    return levels, coords


def formation_sample(image: np.ndarray, level_max: int, levels: np.ndarray, coords: np.ndarray,
                     out: np.ndarray | None = None, column: int = 0, cancel_flag=None) -> np.ndarray:
    """Stage 4: mean of the pixels of each particle cell, written to ``out[:, column]`` (or a new (Np,) array)."""
    img_ptr, code, shp = _formation_image(image)
    lv = np.ascontiguousarray(levels, np.uint8)
    co = np.ascontiguousarray(coords, np.int32)
    n = len(lv)
    if co.shape != (n, image.ndim):
        raise ValueError(f"coords must have shape ({n}, {image.ndim}), got {co.shape}")
    if out is None:
        out = np.empty(n, np.float32)
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape[0] != n:
        raise ValueError("out must be a C-contiguous float32 array with one row per particle")
    ncol = 1 if out.ndim == 1 else out.shape[1]
    if not 0 <= int(column) < ncol:
        raise IndexError(f"column {column} out of range for {ncol} channel(s)")
    base = ffi.cast("float *", out.ctypes.data) + int(column)
    st = lib.aprnet_formation_sample(
        img_ptr, code, ffi.new("int64_t[3]", shp), int(level_max), n, ptr(lv, np.uint8, "levels"),
        ptr(co, np.int32, "coords"), image.ndim, base if n else ffi.NULL, ncol, _cancel_ptr(cancel_flag))
    check(st, "APR formation (particle values)")
    return out


def formation_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of float32 ``values`` in uniform bins, identical to ``numpy.histogram``.

    Parameters
    ----------
    values : ndarray of float32
    edges : ndarray of float64, shape (nbins + 1,)
        ``numpy.linspace(lo, hi, nbins + 1)`` with ``lo < hi``.

    Returns
    -------
    ndarray of int64, shape (nbins,)
        The counts ``numpy.histogram(values.astype(np.float64), nbins, (lo, hi))`` gives.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.float32:
        raise TypeError("values must be a float32 numpy array")
    v = np.ascontiguousarray(values).reshape(-1)
    e = np.ascontiguousarray(edges, np.float64)
    if e.ndim != 1 or e.size < 2 or not np.isfinite(e).all() or not e[-1] > e[0]:
        raise ValueError("edges must be at least 2 finite increasing float64 values")
    counts = np.empty(e.size - 1, np.int64)
    st = lib.aprnet_formation_histogram(ptr(v, np.float32, "values") if v.size else ffi.NULL, v.size,
                                        ptr(e, np.float64, "edges"), e.size - 1,
                                        ptr(counts, np.int64, "counts", True))
    check(st, "histogram")
    return counts

# ===== reconstruction and sampling =====

class CellTable:
    """A validated set of cells plus its row table, as the C ``aprnet_cell_table``.

    Holds the numpy arrays the C struct points into, so the struct stays valid
    as long as this object lives. Build with :func:`cell_table`.
    """

    __slots__ = ("arrays", "c")

    def __init__(self, arrays: dict, c):
        self.arrays = arrays
        self.c = c


def validate_cells(shape, level_max: int, levels: np.ndarray, coords: np.ndarray,
                   what: str = "particles") -> np.ndarray:
    """Check cells are inside their level grids and sorted; return level offsets.

    Parameters
    ----------
    shape : tuple of int
        Pixel grid at ``level_max`` (2D or 3D).
    level_max : int
        Finest level; ``2 ** level_max`` must cover the longest side.
    levels : ndarray of uint8, shape (n,)
    coords : ndarray of int32, shape (n, ndim)
    what : str
        Name used in error messages.

    Returns
    -------
    ndarray of int64, shape (level_max + 2,)
        Start of each level's cells.

    Raises
    ------
    ValueError
        If a level or coordinate is out of range, or the cells are not sorted
        by level then row-major position without duplicates.
    """
    from napari_aprnet.structure import level_max_for_shape, level_shape

    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    level_max = int(level_max)
    if ndim not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{what}: shape must be 2D or 3D with positive sides, got {shape}")
    if not level_max_for_shape(shape) <= level_max <= 30:
        raise ValueError(f"{what}: level_max {level_max} does not fit shape {shape} "
                         f"(need {level_max_for_shape(shape)}..30)")
    levels = np.asarray(levels)
    coords = np.asarray(coords)
    if levels.ndim != 1 or coords.shape != (len(levels), ndim):
        raise ValueError(f"{what}: levels {levels.shape} and coords {coords.shape} do not match "
                         f"(expected (n,) and (n, {ndim}))")
    if len(levels) and int(levels.max()) > level_max:
        raise ValueError(f"{what}: level {int(levels.max())} is above level_max {level_max}")
    if len(levels) > 1 and np.any(np.diff(levels.astype(np.int16)) < 0):
        raise ValueError(f"{what}: cells are not sorted by level")
    counts = np.bincount(levels, minlength=level_max + 1)[: level_max + 1]
    offsets = np.zeros(level_max + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for level in range(level_max + 1):
        lo, hi = offsets[level], offsets[level + 1]
        if lo == hi:
            continue
        c = coords[lo:hi].astype(np.int64)
        grid = level_shape(shape, level_max, level)
        if c.min() < 0 or np.any(c >= np.array(grid)):
            raise ValueError(f"{what}: a level-{level} coordinate is outside the level grid {grid}")
        keys = np.zeros(len(c), dtype=np.int64)
        for axis, n in enumerate(grid):
            keys = keys * int(n) + c[:, axis]
        if len(keys) > 1 and np.any(np.diff(keys) <= 0):
            raise ValueError(f"{what}: level-{level} cells are not in row-major order or repeat a cell")
    return offsets


def cell_table(shape, level_max: int, levels: np.ndarray, coords: np.ndarray,
               what: str = "particles") -> CellTable:
    """Validate cells (:func:`validate_cells`) and build their C row table."""
    from napari_aprnet.structure import level_shape

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


def _region3(shape, region) -> tuple[np.ndarray, tuple[int, ...]]:
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
    reg, out_shape = _region3(structure.shape, region)
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


# ===== network structure work =====

class NNPlan:
    """Index plans of the APR layers for a batch of structures (a C handle, freed with this object).

    Built by :func:`nn_plan_build`. Attributes: ``ndim``, ``n_structures``,
    ``max_level``, ``particle_starts`` (B + 1,), ``level_max`` (B,),
    ``level_offsets`` (B, max_level + 2), ``tree_counts`` (B, max_level + 1),
    ``n_total`` particles and ``n_tree`` interior tree nodes. Batch value
    indices are ``[all particles | all tree nodes | zero row]``.
    """

    def __init__(self, handle, ndim, particle_starts, level_max, level_offsets, tree_counts):
        self._h = handle
        self.ndim = ndim
        self.n_structures = len(level_max)
        self.max_level = int(level_offsets.shape[1]) - 2
        self.particle_starts = particle_starts
        self.level_max = level_max
        self.level_offsets = level_offsets
        self.tree_counts = tree_counts
        self.n_total = int(particle_starts[-1])
        self.n_tree = int(tree_counts.sum())

    def conv(self, kernel_size: int, n_level_kernels: int, rulebook: bool = True):
        """Convolution rulebook, grouped by level kernel.

        Returns
        -------
        rulebook : ndarray of int32 (n_total, k**ndim) or None
            Batch value indices; rows ordered by level kernel, structure, particle
            (None when ``rulebook`` is False: rows and counts only).
        rows : ndarray of int64 (n_total,)
            Batch particle index of each rulebook row.
        group_counts : ndarray of int64 (n_level_kernels,)
        """
        k, L = int(kernel_size), int(n_level_kernels)
        if k < 1 or k % 2 == 0 or k > 99:
            raise ValueError(f"kernel_size must be an odd integer in 1..99, got {kernel_size}")
        if L < 1:
            raise ValueError(f"n_level_kernels must be >= 1, got {n_level_kernels}")
        K = k ** self.ndim
        rb = np.empty((self.n_total, K), dtype=np.int32) if rulebook else None
        rows = np.empty(self.n_total, dtype=np.int64)
        counts = np.empty(L, dtype=np.int64)
        status = lib.aprnet_nn_plan_conv(self._h, k, L,
                                         ptr(rb, np.int32, "rulebook", writable=True) if rulebook else ffi.NULL,
                                         ptr(rows, np.int64, "rows", writable=True),
                                         ptr(counts, np.int64, "group_counts", writable=True))
        check(status, "aprnet_nn_plan_conv")
        return rb, rows, counts

    def gather(self, kernel_size: int, rows: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = values[rulebook row of particle rows[i]]`` read from the level maps (no stored rulebook).

        ``values`` (n_total + n_tree + 1, C) float32/float64 is the batch value table,
        ``out`` (len(rows), k**ndim * C) of the same dtype, C-contiguous.
        """
        k = int(kernel_size)
        K = k ** self.ndim
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if values.dtype not in (np.float32, np.float64) or values.ndim != 2 or out.dtype != values.dtype:
            raise TypeError(f"gather needs float32/float64 values and out of one dtype, got {values.dtype}, {out.dtype}")
        c = values.shape[1]
        if values.shape[0] != self.n_total + self.n_tree + 1 or out.size != len(rows) * K * c:
            raise ValueError(f"values must have {self.n_total + self.n_tree + 1} rows and out {len(rows)} x {K * c} "
                             f"entries, got {values.shape} and {out.shape}")
        suffix, ct = ("f32", np.float32) if values.dtype == np.float32 else ("f64", np.float64)
        status = getattr(lib, f"aprnet_nn_plan_gather_{suffix}")(
            self._h, k, ptr(rows, np.int64, "rows"), len(rows), ptr(values, ct, "values"), values.shape[0], c,
            ptr(out, ct, "out", writable=True))
        check(status, "aprnet_nn_plan_gather")

    def tree(self):
        """Tree nodes, finest level first: (rows (n_tree,), children (n_tree, 2**ndim)) int64 batch value indices."""
        rows = np.empty(self.n_tree, dtype=np.int64)
        ch = np.empty((self.n_tree, 2 ** self.ndim), dtype=np.int64)
        status = lib.aprnet_nn_plan_tree(self._h, ptr(rows, np.int64, "rows", writable=True),
                                         ptr(ch, np.int64, "children", writable=True))
        check(status, "aprnet_nn_plan_tree")
        return rows, ch

    def pool(self):
        """Max-pooling maps; see ``aprnet_nn_plan_pool`` in aprnet.h.

        Returns
        -------
        out_starts : ndarray of int64 (B + 1,)
            Particles of pooled structure b: ``out_starts[b]:out_starts[b + 1]``.
        out_coords (n_out, ndim) int32, out_levels (n_out,) uint8, pass_src, pass_dst, pool_dst (int64),
        pool_children (n_pool, 2**ndim) int64
        """
        lm = self.level_max
        if (lm < 1).any():
            raise ValueError(f"cannot max-pool an APR whose level_max is {int(lm.min())} (a single pixel); "
                             "use fewer pooling layers or larger images")
        idx = np.arange(self.n_structures)
        keep = self.level_offsets[idx, lm]
        pooled = self.tree_counts[idx, lm - 1]
        out_starts = np.zeros(self.n_structures + 1, dtype=np.int64)
        np.cumsum(keep + pooled, out=out_starts[1:])
        n_out, n_pass, n_pool = int(out_starts[-1]), int(keep.sum()), int(pooled.sum())
        oc = np.empty((n_out, self.ndim), dtype=np.int32)
        ol = np.empty(n_out, dtype=np.uint8)
        ps, pd = np.empty(n_pass, dtype=np.int64), np.empty(n_pass, dtype=np.int64)
        qd = np.empty(n_pool, dtype=np.int64)
        qc = np.empty((n_pool, 2 ** self.ndim), dtype=np.int64)
        status = lib.aprnet_nn_plan_pool(self._h, ptr(oc, np.int32, "out_coords", writable=True),
                                         ptr(ol, np.uint8, "out_levels", writable=True),
                                         ptr(ps, np.int64, "pass_src", writable=True),
                                         ptr(pd, np.int64, "pass_dst", writable=True),
                                         ptr(qd, np.int64, "pool_dst", writable=True),
                                         ptr(qc, np.int64, "pool_children", writable=True))
        check(status, "aprnet_nn_plan_pool")
        return out_starts, oc, ol, ps, pd, qd, qc


def nn_plan_build(ndim: int, shapes, level_max, particle_starts, levels: np.ndarray, coords: np.ndarray) -> NNPlan:
    """Validate a batch of APR structures and build their level maps (see :class:`NNPlan`).

    Parameters
    ----------
    ndim : int
        2 or 3.
    shapes : array-like (B, ndim)
        Pixel grid of each structure.
    level_max : array-like (B,)
    particle_starts : array-like (B + 1,)
        Structure b owns rows ``particle_starts[b]:particle_starts[b + 1]`` of ``levels`` and ``coords``.
    levels : ndarray of uint8 (n_total,), coords : ndarray of int32 (n_total, ndim)
        Concatenated particles, each structure sorted by level then row-major.
    """
    ndim = int(ndim)
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, ndim)
    B = len(shapes)
    s3 = np.ones((B, 3), dtype=np.int64)
    s3[:, 3 - ndim:] = shapes
    level_max = np.ascontiguousarray(level_max, dtype=np.int32).reshape(-1)
    starts = np.ascontiguousarray(particle_starts, dtype=np.int64).reshape(-1)
    levels = np.ascontiguousarray(levels, dtype=np.uint8).reshape(-1)
    coords = np.ascontiguousarray(coords, dtype=np.int32).reshape(-1, ndim)
    if B < 1 or len(level_max) != B or len(starts) != B + 1:
        raise ValueError(f"need one shape, level_max and particle range per structure, got {B} shapes, "
                         f"{len(level_max)} level_max and {len(starts)} starts")
    if starts[0] != 0 or (np.diff(starts) < 0).any() or starts[-1] != len(levels) or len(coords) != len(levels):
        raise ValueError("particle_starts must rise from 0 to the number of particles, one row of levels and "
                         "coords per particle")
    if (level_max < 0).any() or level_max.max() > 30:
        raise ValueError(f"level_max must lie in 0..30, got {level_max.min()}..{level_max.max()}")
    max_level = int(level_max.max())
    lo = np.empty((B, max_level + 2), dtype=np.int64)
    tc = np.empty((B, max_level + 1), dtype=np.int64)
    out = ffi.new("aprnet_nn_plan **")
    status = lib.aprnet_nn_plan_build(ndim, B, ptr(s3, np.int64, "shapes"), ptr(level_max, np.int32, "level_max"),
                                      ptr(starts, np.int64, "particle_starts"), ptr(levels, np.uint8, "levels"),
                                      ptr(coords, np.int32, "coords"), max_level,
                                      ptr(lo, np.int64, "level_offsets", writable=True),
                                      ptr(tc, np.int64, "tree_counts", writable=True), out)
    if status == lib.APRNET_ERR_ARG:
        raise ValueError("invalid APR structure: particles must be sorted by level then row-major, without "
                         "duplicates, and their cells must tile the image exactly once (or the batch is too "
                         "large for 32-bit indices: use smaller batches)")
    if status == lib.APRNET_ERR_BOUNDS:
        raise IndexError("invalid APR structure: a particle coordinate lies outside its level's grid")
    check(status, "aprnet_nn_plan_build")
    handle = ffi.gc(out[0], lib.aprnet_nn_plan_free)
    return NNPlan(handle, ndim, starts, level_max, lo, tc)


def nn_scatter_add(src: np.ndarray, index: np.ndarray, dst: np.ndarray) -> None:
    """``dst[index[i]] += src[i]`` row-wise, in place, deterministic for any thread count.

    Parameters
    ----------
    src : ndarray (n, c) of float32 or float64
    index : ndarray (n,) of int32, values in ``[0, len(dst))``
    dst : ndarray (m, c), same dtype as ``src``, C-contiguous and writable
    """
    if src.dtype not in (np.float32, np.float64):
        raise TypeError(f"scatter_add supports float32 and float64, got {src.dtype}")
    src = np.ascontiguousarray(src)
    index = np.ascontiguousarray(index, dtype=np.int32).reshape(-1)
    n = len(index)
    c = int(np.prod(dst.shape[1:])) if dst.ndim > 1 else 1
    if src.size != n * c:
        raise ValueError(f"src has {src.size} values, expected {n} rows of {c}")
    fn, ct = ((lib.aprnet_nn_scatter_add_f32, np.float32) if src.dtype == np.float32
              else (lib.aprnet_nn_scatter_add_f64, np.float64))
    status = fn(ptr(src, ct, "src"), n, c, ptr(index, np.int32, "index"),
                ptr(dst, ct, "dst", writable=True), int(dst.shape[0]))
    check(status, "aprnet_nn_scatter_add")



def _nn_tree_call(name: str, values: np.ndarray, rows: np.ndarray, children: np.ndarray, zero_index: int) -> None:
    if values.dtype not in (np.float32, np.float64) or values.ndim != 2:
        raise TypeError(f"{name}: values must be a 2D float32/float64 array, got {values.dtype} {values.shape}")
    rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    children = np.ascontiguousarray(children, dtype=np.int64)
    if children.ndim != 2 or children.shape[0] != len(rows) or not 1 <= children.shape[1] <= 8:
        raise ValueError(f"{name}: children must have shape ({len(rows)}, 1..8), got {children.shape}")
    suffix, ct = ("f32", np.float32) if values.dtype == np.float32 else ("f64", np.float64)
    fn = getattr(lib, f"aprnet_nn_{name}_{suffix}")
    status = fn(ptr(values, ct, "values", writable=True), values.shape[0], values.shape[1],
                ptr(rows, np.int64, "rows"), ptr(children, np.int64, "children"), len(rows),
                children.shape[1], int(zero_index))
    check(status, f"aprnet_nn_{name}")


def nn_tree_mean(values: np.ndarray, rows: np.ndarray, children: np.ndarray, zero_index: int) -> None:
    """In place: ``values[rows[i]] = mean(values[children[i]])``, skipping ``zero_index`` children."""
    _nn_tree_call("tree_mean", values, rows, children, zero_index)


def nn_tree_spread(grad: np.ndarray, rows: np.ndarray, children: np.ndarray, zero_index: int) -> None:
    """In place adjoint of :func:`nn_tree_mean`: ``grad[child] += grad[rows[i]] / count``."""
    _nn_tree_call("tree_spread", grad, rows, children, zero_index)


def _pool_arrays(x, out, pass_src, pass_dst, pool_dst):
    if x.dtype not in (np.float32, np.float64) or x.ndim != 2 or out.dtype != x.dtype or out.ndim != 2 \
            or out.shape[1] != x.shape[1]:
        raise TypeError(f"max pooling needs 2D float32/float64 arrays of one dtype and width, got {x.dtype} "
                        f"{x.shape} and {out.dtype} {out.shape}")
    pass_src = np.ascontiguousarray(pass_src, dtype=np.int64).reshape(-1)
    pass_dst = np.ascontiguousarray(pass_dst, dtype=np.int64).reshape(-1)
    pool_dst = np.ascontiguousarray(pool_dst, dtype=np.int64).reshape(-1)
    if len(pass_src) != len(pass_dst):
        raise ValueError(f"pass_src ({len(pass_src)}) and pass_dst ({len(pass_dst)}) differ in length")
    suffix, ct = ("f32", np.float32) if x.dtype == np.float32 else ("f64", np.float64)
    return pass_src, pass_dst, pool_dst, suffix, ct


def nn_pool_forward(x: np.ndarray, pass_src, pass_dst, pool_dst, children, out: np.ndarray,
                    argsrc: np.ndarray | None = None) -> None:
    """APR max pooling into ``out`` (see ``aprnet_nn_pool_forward_*``); ``argsrc`` (n_pool, C) int32 or None."""
    pass_src, pass_dst, pool_dst, suffix, ct = _pool_arrays(x, out, pass_src, pass_dst, pool_dst)
    children = np.ascontiguousarray(children, dtype=np.int64)
    if children.ndim != 2 or children.shape[0] != len(pool_dst) or not 1 <= children.shape[1] <= 8:
        raise ValueError(f"children must have shape ({len(pool_dst)}, 1..8), got {children.shape}")
    if argsrc is not None and (argsrc.dtype != np.int32 or argsrc.shape != (len(pool_dst), x.shape[1])):
        raise ValueError(f"argsrc must be int32 ({len(pool_dst)}, {x.shape[1]}), got {argsrc.dtype} {argsrc.shape}")
    status = getattr(lib, f"aprnet_nn_pool_forward_{suffix}")(
        ptr(x, ct, "x"), x.shape[0], x.shape[1], ptr(pass_src, np.int64, "pass_src"),
        ptr(pass_dst, np.int64, "pass_dst"), len(pass_src), ptr(pool_dst, np.int64, "pool_dst"),
        ptr(children, np.int64, "children"), len(pool_dst), children.shape[1], ptr(out, ct, "out", writable=True),
        out.shape[0], ptr(argsrc, np.int32, "argsrc", writable=True) if argsrc is not None else ffi.NULL)
    check(status, "aprnet_nn_pool_forward")


def nn_pool_backward(grad: np.ndarray, pass_src, pass_dst, pool_dst, argsrc: np.ndarray,
                     grad_x: np.ndarray) -> None:
    """Gradient of :func:`nn_pool_forward` into the zeroed ``grad_x`` (in place)."""
    pass_src, pass_dst, pool_dst, suffix, ct = _pool_arrays(grad, grad_x, pass_src, pass_dst, pool_dst)
    if argsrc.dtype != np.int32 or argsrc.shape != (len(pool_dst), grad.shape[1]) or not argsrc.flags.c_contiguous:
        raise ValueError(f"argsrc must be C-contiguous int32 ({len(pool_dst)}, {grad.shape[1]})")
    status = getattr(lib, f"aprnet_nn_pool_backward_{suffix}")(
        ptr(grad, ct, "grad"), grad.shape[0], grad.shape[1], ptr(pass_src, np.int64, "pass_src"),
        ptr(pass_dst, np.int64, "pass_dst"), len(pass_src), ptr(pool_dst, np.int64, "pool_dst"),
        ptr(argsrc, np.int32, "argsrc"), len(pool_dst), ptr(grad_x, ct, "grad_x", writable=True), grad_x.shape[0])
    check(status, "aprnet_nn_pool_backward")


def _conv_dtype(*arrays):
    dt = arrays[0].dtype
    if dt not in (np.float32, np.float64):
        raise TypeError(f"APR convolution kernels support float32 and float64, got {dt}")
    for a in arrays:
        if a is not None and a.dtype != dt:
            raise TypeError(f"all arrays must have dtype {dt}, got {a.dtype}")
    return ("f32", np.float32) if dt == np.float32 else ("f64", np.float64)


def _check_conv_shapes(values, rulebook, weight, n_out_rows=None):
    if values.ndim != 2 or rulebook.ndim != 2 or weight.ndim != 3:
        raise ValueError("values (M, cin), rulebook (n, K) and weight (K, cin, cout) have the wrong ranks")
    if rulebook.dtype != np.int32:
        raise TypeError(f"rulebook must be int32, got {rulebook.dtype}")
    if weight.shape[0] != rulebook.shape[1] or weight.shape[1] != values.shape[1]:
        raise ValueError(f"weight {weight.shape} does not match rulebook {rulebook.shape} / values {values.shape}")


def nn_conv_forward(values: np.ndarray, rulebook: np.ndarray, weight: np.ndarray, bias, out: np.ndarray) -> None:
    """``out[i] = bias + sum_o values[rulebook[i, o]] @ weight[o]`` (in place, deterministic)."""
    _check_conv_shapes(values, rulebook, weight)
    suf, ct = _conv_dtype(values, weight, bias, out)
    n, k = rulebook.shape
    cin, cout = weight.shape[1], weight.shape[2]
    if out.shape != (n, cout) or (bias is not None and bias.shape != (cout,)):
        raise ValueError(f"out must be ({n}, {cout}) and bias ({cout},)")
    status = getattr(lib, f"aprnet_nn_conv_forward_{suf}")(
        ptr(values, ct, "values"), values.shape[0], cin, ptr(rulebook, np.int32, "rulebook"), n, k,
        ptr(weight, ct, "weight"), cout, ptr(bias, ct, "bias") if bias is not None else ffi.NULL,
        ptr(out, ct, "out", writable=True))
    check(status, "aprnet_nn_conv_forward")


def nn_conv_grad_weight(values: np.ndarray, rulebook: np.ndarray, grad_out: np.ndarray,
                        grad_weight: np.ndarray) -> None:
    """``grad_weight[o] += sum_i values[rulebook[i, o]]^T grad_out[i]`` (in place, deterministic)."""
    _check_conv_shapes(values, rulebook, grad_weight)
    suf, ct = _conv_dtype(values, grad_out, grad_weight)
    n, k = rulebook.shape
    cin, cout = grad_weight.shape[1], grad_weight.shape[2]
    if grad_out.shape != (n, cout):
        raise ValueError(f"grad_out must be ({n}, {cout}), got {grad_out.shape}")
    status = getattr(lib, f"aprnet_nn_conv_grad_weight_{suf}")(
        ptr(values, ct, "values"), values.shape[0], cin, ptr(rulebook, np.int32, "rulebook"), n, k,
        ptr(grad_out, ct, "grad_out"), cout, ptr(grad_weight, ct, "grad_weight", writable=True))
    check(status, "aprnet_nn_conv_grad_weight")


def nn_conv_grad_values(grad_out: np.ndarray, rulebook: np.ndarray, weight: np.ndarray,
                        grad_values: np.ndarray, skip_index: int = -1) -> None:
    """``grad_values[rulebook[i, o]] += weight[o] @ grad_out[i]`` except row ``skip_index`` (deterministic)."""
    _check_conv_shapes(grad_values, rulebook, weight)
    suf, ct = _conv_dtype(grad_out, weight, grad_values)
    n, k = rulebook.shape
    cin, cout = weight.shape[1], weight.shape[2]
    if grad_out.shape != (n, cout):
        raise ValueError(f"grad_out must be ({n}, {cout}), got {grad_out.shape}")
    status = getattr(lib, f"aprnet_nn_conv_grad_values_{suf}")(
        ptr(grad_out, ct, "grad_out"), n, cout, ptr(rulebook, np.int32, "rulebook"), k,
        ptr(weight, ct, "weight"), cin, ptr(grad_values, ct, "grad_values", writable=True),
        grad_values.shape[0], int(skip_index))
    check(status, "aprnet_nn_conv_grad_values")
