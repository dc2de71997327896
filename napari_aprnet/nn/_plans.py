"""Index maps ("plans") for the APR layers.

Structure level (numpy, computed in C once and cached in ``APRStructure._cache``):
- ``structure_rulebook(s, k)``: (Np, k**d) int32, for each particle and stencil
  offset the index of the value in ``[particles | tree nodes | zero]``.
- ``structure_children(s)``: (Nt, 2**d) int32, children of each tree node in
  ``[particles | tree nodes]`` (-1 outside the image).
- ``structure_pool(s)``: the max-pooling maps and the output structure.

Batch level (torch index tensors on the features' device, cached in the
batch's plan dictionary): the same maps with the APRs' particles laid out as
``[all particles | all tree nodes | zero row]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_aprnet import _native
from napari_aprnet.structure import APRStructure, _row_major_keys

__all__ = ["structure_rulebook", "structure_children", "structure_pool", "conv_plan", "pool_plan",
           "clear_structure_caches", "ConvPlan", "PoolPlan", "TreePlan"]


# ===== structure level =======================================================

def _maps(s: APRStructure, kernel_size: int | None, children: bool):
    tl, tc, toff = s.tree
    return _native.nn_structure_maps(s.shape, s.level_max, s.coords, s.level_offsets, tc, toff,
                                     kernel_size=kernel_size, children=children)


def structure_rulebook(s: APRStructure, kernel_size: int) -> np.ndarray:
    """Cached convolution rulebook of ``s`` for an odd ``kernel_size``."""
    key = ("nn_conv", int(kernel_size))
    if key not in s._cache:
        rb, _ = _maps(s, kernel_size, False)
        rb.setflags(write=False)
        s._cache[key] = rb
    return s._cache[key]


def structure_children(s: APRStructure) -> np.ndarray:
    """Cached children of the interior tree nodes of ``s``."""
    key = ("nn_children",)
    if key not in s._cache:
        _, ch = _maps(s, None, True)
        ch.setflags(write=False)
        s._cache[key] = ch
    return s._cache[key]


@dataclass(frozen=True)
class StructurePool:
    """Max-pooling maps of one structure (indices local to the structure)."""

    out: APRStructure
    pass_src: np.ndarray      # input particles kept (all levels < level_max)
    pass_dst: np.ndarray      # their output positions
    pool_dst: np.ndarray      # output positions of the pooled parent cells
    pool_children: np.ndarray  # (n_pool, 2**d) input particles pooled into each, -1 none


def structure_pool(s: APRStructure) -> StructurePool:
    """Cached max-pooling maps of ``s`` (finest level pooled into its parents)."""
    key = ("nn_pool",)
    if key in s._cache:
        return s._cache[key]
    lm = s.level_max
    if lm < 1:
        raise ValueError(f"cannot max-pool an APR whose level_max is {lm} (a single pixel); "
                         "use fewer pooling layers or larger images")
    off = s.level_offsets
    _, tc, toff = s.tree
    ch = structure_children(s)
    parents = np.asarray(tc[toff[lm - 1]:toff[lm]])
    children = np.array(ch[toff[lm - 1]:toff[lm]], dtype=np.int64)
    n_keep = int(off[lm])            # particles at levels < lm pass through
    n_below = int(off[lm - 1])       # levels < lm - 1 keep their positions
    same = s.coords[n_below:n_keep]  # particles already at lm - 1
    grid = s.level_shape(lm - 1)
    keys = np.concatenate([_row_major_keys(same, grid), _row_major_keys(parents, grid)])
    order = np.argsort(keys, kind="stable")
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order)) + n_below
    pass_dst = np.concatenate([np.arange(n_below, dtype=np.int64), pos[:len(same)]])
    pool_dst = pos[len(same):]
    coords = np.concatenate([s.coords[:n_keep], parents]).astype(np.int32)
    levels = np.concatenate([s.levels[:n_keep], np.full(len(parents), lm - 1, np.uint8)])
    out_coords = np.empty_like(coords)
    out_levels = np.empty_like(levels)
    dst = np.concatenate([pass_dst, pool_dst])
    out_coords[dst] = coords
    out_levels[dst] = levels
    out_shape = tuple(-(-n // 2) for n in s.shape)
    out = APRStructure(out_shape, lm - 1, out_levels, out_coords, min(s.level_min, lm - 1))
    res = StructurePool(out, np.arange(n_keep, dtype=np.int64), pass_dst, pool_dst, children)
    s._cache[key] = res
    return res


# ===== batch level ===========================================================

@dataclass
class TreePlan:
    """Bottom-up tree filling for a batch: one step per level, finest first."""

    steps: list  # (dst rows (n,), children (n, 2**d) with missing -> zero row, counts (n, 1) float64)


@dataclass
class ConvPlan:
    """Everything a batched APR convolution needs (index tensors on one device)."""

    n_particles: int
    n_values: int                 # particles + tree nodes + 1 zero row
    kernel_size: int
    groups: list                  # per kernel index: (rows or None, int32 rulebook rows (n, K) or None)
    tree: TreePlan | None         # None for 1x1 convolutions
    _dtype_cache: dict


def _tree_plan(structures, offsets, n_total, device) -> tuple[TreePlan, int]:
    nt_counts = [s.tree[2][-1] for s in structures]
    toffs = np.concatenate([[0], np.cumsum(nt_counts)]).astype(np.int64)
    zero = n_total + int(toffs[-1])
    per_level: dict[int, list] = {}
    for b, s in enumerate(structures):
        _, _, toff = s.tree
        ch = structure_children(s).astype(np.int64)
        np_b = s.n_particles
        g = np.where(ch < 0, zero, np.where(ch < np_b, ch + offsets[b], ch - np_b + n_total + toffs[b]))
        for level in range(s.level_max):
            lo, hi = int(toff[level]), int(toff[level + 1])
            if lo == hi:
                continue
            rows = np.arange(lo, hi, dtype=np.int64) + n_total + toffs[b]
            cnt = (ch[lo:hi] >= 0).sum(axis=1, keepdims=True).astype(np.float64)
            per_level.setdefault(level, []).append((rows, g[lo:hi], cnt))
    steps = []
    for level in sorted(per_level, reverse=True):
        parts = per_level[level]
        rows = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(device)
        chl = torch.from_numpy(np.concatenate([p[1] for p in parts])).to(device)
        cnt = torch.from_numpy(np.concatenate([p[2] for p in parts])).to(device)
        steps.append((rows, chl, cnt))
    return TreePlan(steps), zero + 1


def _level_kernel_ranges(s: APRStructure, n_level_kernels: int) -> list[tuple[int, int]]:
    """Particle range of each kernel index in ``s`` (contiguous: particles are sorted by level)."""
    off = s.level_offsets
    ranges = []
    for g in range(n_level_kernels):
        finest = s.level_max - g                      # kernel g: level level_max - g ...
        coarsest = 0 if g == n_level_kernels - 1 else finest  # ... and the last one all coarser levels
        if finest < 0:
            ranges.append((0, 0))
        else:
            ranges.append((int(off[coarsest]), int(off[finest + 1])))
    return ranges


def conv_plan(batch, kernel_size: int, n_level_kernels: int) -> ConvPlan:
    """Batched convolution plan (cached on the batch)."""
    device = batch.features.device
    key = ("conv", int(kernel_size), int(n_level_kernels), str(device))
    plan = batch._cache.get(key)
    if plan is not None:
        return plan
    structures, offsets = batch.structures, batch.offsets
    n_total = int(offsets[-1])
    tree, n_values = (None, n_total + 1)
    luts = None
    if kernel_size > 1:
        tree, n_values = _tree_plan(structures, offsets, n_total, device)
        zero = n_values - 1
        nt_counts = [int(s.tree[2][-1]) for s in structures]
        toffs = np.concatenate([[0], np.cumsum(nt_counts)]).astype(np.int64)
        # local index (particle | tree | zero) -> batch value-table index
        if n_values >= 2 ** 31:
            raise ValueError(f"batch too large for 32-bit particle indices ({n_values} values); "
                             "use smaller batches")
        luts = [np.concatenate([np.arange(s.n_particles, dtype=np.int64) + offsets[b],
                                np.arange(nt_counts[b], dtype=np.int64) + n_total + toffs[b],
                                [zero]]).astype(np.int32) for b, s in enumerate(structures)]
    ranges = [_level_kernel_ranges(s, n_level_kernels) for s in structures]
    groups = []
    for g in range(n_level_kernels):
        spans = [(b, lo, hi) for b, r in enumerate(ranges) for lo, hi in [r[g]] if hi > lo]
        n_g = sum(hi - lo for _, lo, hi in spans)
        if n_g == 0:
            groups.append(None)
            continue
        rows = None
        if n_g != n_total:
            rows = torch.from_numpy(np.concatenate(
                [np.arange(lo, hi, dtype=np.int64) + offsets[b] for b, lo, hi in spans])).to(device)
        rb_g = None
        if luts is not None:
            rb_g = np.concatenate([luts[b][structure_rulebook(structures[b], kernel_size)[lo:hi]]
                                   for b, lo, hi in spans])
            rb_g = torch.from_numpy(rb_g).to(device)
        groups.append((rows, rb_g))
    plan = ConvPlan(n_total, n_values, int(kernel_size), groups, tree, {})
    batch._cache[key] = plan
    return plan


@dataclass
class PoolPlan:
    """Batched max-pooling maps."""

    out_structures: list
    n_out: int
    pass_src: torch.Tensor
    pass_dst: torch.Tensor
    pool_dst: torch.Tensor
    pool_children: torch.Tensor  # (n_pool, 2**d) input particles; a missing child repeats child 0


def pool_plan(batch) -> PoolPlan:
    """Batched max-pooling plan (cached on the batch)."""
    device = batch.features.device
    key = ("pool", str(device))
    plan = batch._cache.get(key)
    if plan is not None:
        return plan
    sp = [structure_pool(s) for s in batch.structures]
    out_off = np.concatenate([[0], np.cumsum([p.out.n_particles for p in sp])]).astype(np.int64)
    pass_src = np.concatenate([p.pass_src + batch.offsets[b] for b, p in enumerate(sp)])
    pass_dst = np.concatenate([p.pass_dst + out_off[b] for b, p in enumerate(sp)])
    pool_dst = np.concatenate([p.pool_dst + out_off[b] for b, p in enumerate(sp)])
    nch = 2 ** batch.ndim
    # child 0 (2c, 2c, ...) of a parent always lies inside the image; a missing child repeats it,
    # which leaves the maximum unchanged and sends its gradient to a real particle
    pool_children = np.concatenate(
        [np.where(p.pool_children < 0, p.pool_children[:, :1], p.pool_children).reshape(-1, nch) + batch.offsets[b]
         for b, p in enumerate(sp)])

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    plan = PoolPlan([p.out for p in sp], int(out_off[-1]), t(pass_src), t(pass_dst), t(pool_dst),
                    t(pool_children))
    batch._cache[key] = plan
    return plan


def clear_structure_caches(structures) -> None:
    """Drop the layer index maps cached on ``structures`` (rulebooks, children, pooling maps).

    The maps are kept on each APRStructure so that repeated epochs reuse them;
    a k x k rulebook costs ``4 * k**d`` bytes per particle. Call this when a
    dataset keeps many structures alive and memory matters more than the
    (milliseconds per structure) recomputation.
    """
    for s in structures:
        for key in [k for k in s._cache if isinstance(k, tuple) and k and str(k[0]).startswith("nn_")]:
            del s._cache[key]
