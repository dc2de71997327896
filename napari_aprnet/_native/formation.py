"""The formation section of ``native/aprnet.h``: the four stages of APR formation and the histogram."""
from __future__ import annotations

import numpy as np

from napari_aprnet._native.common import cancel_ptr, check, ffi, lib, ptr, shape3

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
        ptr(smooth, np.float32, "smooth", True), cancel_ptr(cancel_flag))
    check(st, "APR formation (gradient and local intensity scale)")
    return grad, sigma, smooth


def _check_3d(name: str, arr: np.ndarray, shape=None) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 3D numpy array")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")


def formation_spline_xy(image: np.ndarray, lambda_: float, out: np.ndarray, cancel_flag=None) -> None:
    """Stage 1 in pieces (blockwise conversion): the smoothing spline along y and x of each plane of a 3D image.

    ``out`` (float32, the image's shape, C-contiguous) receives the result.
    """
    img_ptr, code, shp = _formation_image(image)
    _check_3d("image", image)
    _check_3d("out", out, image.shape)
    st = lib.aprnet_formation_spline_xy(img_ptr, code, ffi.new("int64_t[3]", shp), float(lambda_),
                                        ptr(out, np.float32, "out", True), cancel_ptr(cancel_flag))
    check(st, "APR formation (spline along y and x)")


def formation_spline_z(img: np.ndarray, lambda_: float, state_in: np.ndarray | None = None, keep: int = 0,
                       state_out: np.ndarray | None = None, cancel_flag=None) -> None:
    """The spline's z pass in place on a block of ``img.shape[0] >= 2`` planes (float32, 3D).

    The causal recursion continues from ``state_in`` (shape ``(2, ny, nx)``:
    the causal values of the two planes before the block) or starts at a
    mirror boundary (None); the anti-causal one starts at a mirror boundary
    after the last plane. ``state_out`` (shape ``(2, ny, nx)``) receives the
    causal values of planes ``keep - 2`` and ``keep - 1``.
    """
    _check_3d("img", img)
    if img.shape[0] < 2 or not lambda_ > 0:
        raise ValueError(f"the z pass needs >= 2 planes and lambda_ > 0, got {img.shape[0]} and {lambda_}")
    two = (2, *img.shape[1:])
    for name, st in (("state_in", state_in), ("state_out", state_out)):
        if st is not None:
            _check_3d(name, st, two)
    if state_out is not None and not 2 <= keep <= img.shape[0]:
        raise ValueError(f"keep must lie in [2, {img.shape[0]}], got {keep}")
    st = lib.aprnet_formation_spline_z(
        ptr(img, np.float32, "img", True), ffi.new("int64_t[3]", shape3(img.shape)), float(lambda_),
        ffi.NULL if state_in is None else ptr(state_in, np.float32, "state_in"), int(keep),
        ffi.NULL if state_out is None else ptr(state_out, np.float32, "state_out", True), cancel_ptr(cancel_flag))
    check(st, "APR formation (spline along z)")


def formation_grad_ds(smoothed: np.ndarray, spacing, out: tuple | None = None,
                      cancel_flag=None) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude (max-downsampled 2x) and 2x mean of a smoothed 3D float32 image (stage 1).

    ``out``: optional ``(grad, smooth)`` float32 arrays of shape ``ceil(shape / 2)`` to write into.
    """
    _check_3d("smoothed", smoothed)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must hold 3 positive finite values, got {spacing}")
    half = tuple(-(-s // 2) for s in smoothed.shape)
    grad, smooth = out if out is not None else (np.empty(half, np.float32), np.empty(half, np.float32))
    _check_3d("grad", grad, half)
    _check_3d("smooth", smooth, half)
    st = lib.aprnet_formation_grad_ds(
        ptr(smoothed, np.float32, "smoothed"), ffi.new("int64_t[3]", smoothed.shape), ffi.new("double[3]", sp),
        ptr(grad, np.float32, "grad", True), ptr(smooth, np.float32, "smooth", True), cancel_ptr(cancel_flag))
    check(st, "APR formation (gradient)")
    return grad, smooth


def formation_scale(smooth_ds: np.ndarray, lambda_: float, psf: int, cancel_flag=None) -> np.ndarray:
    """Inverse B-spline (``lambda_ > 0``, in place on ``smooth_ds``) and the local intensity scale (stage 1)."""
    _check_3d("smooth_ds", smooth_ds)
    sigma = np.empty(smooth_ds.shape, np.float32)
    st = lib.aprnet_formation_scale(
        ptr(smooth_ds, np.float32, "smooth_ds", True), ffi.new("int64_t[3]", smooth_ds.shape), float(lambda_),
        int(psf), ptr(sigma, np.float32, "sigma", True), cancel_ptr(cancel_flag))
    check(st, "APR formation (local intensity scale)")
    return sigma


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
        cancel_ptr(cancel_flag))
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
        ffi.cast("int64_t *", counts.ctypes.data), cancel_ptr(cancel_flag))
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
        ptr(co, np.int32, "coords"), image.ndim, base if n else ffi.NULL, ncol, cancel_ptr(cancel_flag))
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
