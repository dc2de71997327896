"""The network section of ``native/aprnet.h``: batch index plans, scatter-add, tree and pooling kernels."""
from __future__ import annotations

import numpy as np

from napari_aprnet._native.common import check, ffi, lib, ptr


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
            raise TypeError(f"gather needs float32/float64 values and out of one dtype, "
                            f"got {values.dtype}, {out.dtype}")
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
