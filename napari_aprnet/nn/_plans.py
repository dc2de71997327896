"""Index maps ("plans") for the APR layers.

All structure work of a batch is done in C by one :class:`napari_aprnet._native.NNPlan`
(level maps of every structure, built once per batch of structures and shared
by the convolution and pooling plans). The maps lay the batch out as
``[all particles | all tree nodes | zero row]``:

- :func:`conv_plan`: per level kernel, the rulebook rows (for each particle and
  stencil offset the index of the value feeding it) and the batch rows they
  write, plus the bottom-up tree filling;
- :func:`pool_plan`: the max-pooling maps and the pooled structures;
  :func:`upsample_rows` its inverse map for upsampling.

Plans are cached in the batch's plan dictionary (shared by every batch made
with ``with_features``); the pooled batch gets one dictionary per pooling
plan, so pooling the same batch twice reuses the next layer's plans too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from napari_aprnet import _native
from napari_aprnet.structure import APRStructure

__all__ = ["structure_rulebook", "conv_plan", "pool_plan", "upsample_rows", "clear_structure_caches", "ConvPlan",
           "PoolPlan", "TreePlan"]

IMPLICIT_MIN_STENCIL = 25  # CPU stencils of this many offsets or more gather from the maps (no stored rulebook)
_MAPS = "nn_maps"        # batch cache key of the NNPlan
_CONCAT = "nn_concat"    # batch cache key of the concatenated (levels, coords), set by pooling


# ===== C maps ================================================================

def _maps(structures, offsets, cache: dict) -> _native.NNPlan:
    """The batch's C plan (cached in ``cache``)."""
    h = cache.get(_MAPS)
    if h is None:
        cat = cache.get(_CONCAT)
        if cat is None:
            cat = (np.concatenate([s.levels for s in structures]), np.concatenate([s.coords for s in structures]))
        h = _native.nn_plan_build(structures[0].ndim, [s.shape for s in structures],
                                  [s.level_max for s in structures], offsets, *cat)
        cache[_MAPS] = h
    return h


def structure_rulebook(s: APRStructure, kernel_size: int) -> np.ndarray:
    """Convolution rulebook of one structure (cached on it), shape (Np, k**d) int32.

    Entry ``[p, o]`` is the index of the value feeding particle ``p`` at stencil
    offset ``o`` (row-major offsets) in ``[particles | tree nodes | zero]``,
    tree nodes in :attr:`APRStructure.tree` order.
    """
    key = ("nn_conv", int(kernel_size))
    rb = s._cache.get(key)
    if rb is None:
        h = _maps([s], np.array([0, s.n_particles]), {})
        rb = h.conv(kernel_size, 1)[0]  # one structure, one kernel: rows in particle order, local indices
        rb.setflags(write=False)
        s._cache[key] = rb
    return rb


# ===== batch level ===========================================================

@dataclass
class TreePlan:
    """Bottom-up tree filling for a batch: one step per level, finest first."""

    steps: list  # (dst rows (n,), children (n, 2**d) with missing -> zero row), int64


@dataclass
class ConvPlan:
    """Everything a batched APR convolution needs (index tensors on one device).

    ``groups[g]`` is None when no particle uses kernel ``g``, else
    ``(rows, rulebook)``: the batch rows written (None: all, in order) and their
    int32 rulebook rows (None for 1x1 convolutions and for implicit plans).
    Implicit plans (CPU, large kernels) keep the C level maps in ``maps`` and
    gather stencil values from them (``gather_rows[g]``: the rows of group g)
    instead of storing a rulebook; :meth:`rulebook` builds it when needed.
    """

    n_particles: int
    n_values: int                 # particles + tree nodes + 1 zero row (particles + 1 for 1x1)
    kernel_size: int
    groups: list
    tree: TreePlan | None         # None for 1x1 convolutions
    maps: object = None           # _native.NNPlan of an implicit plan
    gather_rows: list | None = None
    n_level_kernels: int = 1
    _dtype_cache: dict = field(default_factory=dict)
    _rulebooks: list | None = None  # implicit plans: rulebooks built on first use

    def rulebook(self, g: int) -> torch.Tensor:
        """int32 rulebook rows of group ``g`` (built from the maps on first use for implicit plans)."""
        rb = self.groups[g][1]
        if rb is not None:
            return rb
        if self.maps is None or self.kernel_size == 1:
            raise ValueError("1x1 convolutions have no rulebook")
        rbs = self._rulebooks
        if rbs is None:
            full, _, counts = self.maps.conv(self.kernel_size, self.n_level_kernels)
            full = torch.from_numpy(full)  # implicit plans are CPU plans
            rbs, a = [], 0
            for c in counts.tolist():
                rbs.append(full[a:a + c])
                a += c
            self._rulebooks = rbs
        return rbs[g]


def _tree_plan(h: _native.NNPlan, cache: dict, device) -> TreePlan:
    key = ("tree", str(device))
    tree = cache.get(key)
    if tree is None:
        rows, ch = h.tree()
        rows, ch = torch.from_numpy(rows).to(device), torch.from_numpy(ch).to(device)
        counts = h.tree_counts.sum(axis=0)[:h.max_level][::-1]  # finest level first
        steps, a = [], 0
        for c in counts.tolist():
            if c:
                steps.append((rows[a:a + c], ch[a:a + c]))
                a += c
        tree = cache[key] = TreePlan(steps)
    return tree


def conv_plan(batch, kernel_size: int, n_level_kernels: int) -> ConvPlan:
    """Batched convolution plan (cached on the batch)."""
    device = batch.features.device
    key = ("conv", int(kernel_size), int(n_level_kernels), str(device))
    plan = batch._cache.get(key)
    if plan is not None:
        return plan
    h = _maps(batch.structures, batch.offsets, batch._cache)
    n_total = h.n_total
    L = int(n_level_kernels)
    tree, n_values = None, n_total + 1
    if kernel_size > 1:
        tree, n_values = _tree_plan(h, batch._cache, device), n_total + h.n_tree + 1
    implicit = device.type == "cpu" and kernel_size ** h.ndim >= IMPLICIT_MIN_STENCIL
    gather_rows = None
    if L == 1 and kernel_size == 1:
        groups = [(None, None)] if n_total else [None]
    else:
        rb, rows, counts = h.conv(kernel_size, L, rulebook=kernel_size > 1 and not implicit)
        rb_t = torch.from_numpy(rb).to(device) if rb is not None else None
        rows_t = torch.from_numpy(rows).to(device)
        groups, gather_rows, a = [], [], 0
        for c in counts.tolist():
            gather_rows.append(rows_t[a:a + c] if c else None)
            if c == 0:
                groups.append(None)
                continue
            groups.append((None if c == n_total else rows_t[a:a + c], None if rb_t is None else rb_t[a:a + c]))
            a += c
    plan = ConvPlan(n_total, n_values, int(kernel_size), groups, tree, h if implicit else None,
                    gather_rows if implicit else None, L)
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
    out_cache: dict = field(default_factory=dict)  # plan cache of the pooled batch
    parents: torch.Tensor | None = None  # upsampling: output row of every input row (see upsample_rows)


def pool_plan(batch) -> PoolPlan:
    """Batched max-pooling plan (cached on the batch)."""
    device = batch.features.device
    key = ("pool", str(device))
    plan = batch._cache.get(key)
    if plan is not None:
        return plan
    h = _maps(batch.structures, batch.offsets, batch._cache)
    host = batch._cache.get("pool_host")
    if host is None:
        out_starts, oc, ol, ps, pd, qd, qc = h.pool()
        out = []
        for b, s in enumerate(batch.structures):
            a, e = int(out_starts[b]), int(out_starts[b + 1])
            lm = s.level_max
            out.append(APRStructure(tuple(-(-n // 2) for n in s.shape), lm - 1, ol[a:e], oc[a:e],
                                    min(s.level_min, lm - 1)))
        host = batch._cache["pool_host"] = (out, {_CONCAT: (ol, oc)}, ps, pd, qd, qc)
    out, out_cache, ps, pd, qd, qc = host

    def t(a):
        return torch.from_numpy(a).to(device)

    plan = PoolPlan(out, sum(s.n_particles for s in out), t(ps), t(pd), t(qd), t(qc), out_cache)
    batch._cache[key] = plan
    return plan


def upsample_rows(batch) -> torch.Tensor:
    """For every particle of ``batch``, the row of the particle it becomes in the max pooling of ``batch``.

    Pooled particles map to their parent cell, passed ones to themselves;
    built once per pooling plan (int64, on the batch's device).
    """
    plan = pool_plan(batch)
    if plan.parents is None:
        n_in = int(batch.offsets[-1])
        parents = torch.empty(n_in, dtype=torch.int64, device=plan.pass_src.device)
        parents[plan.pass_src] = plan.pass_dst
        n_children = plan.pool_children.shape[1]  # a missing child repeats child 0: same parent, written twice
        parents[plan.pool_children.reshape(-1)] = plan.pool_dst.repeat_interleave(n_children)
        plan.parents = parents
    return plan.parents


def clear_structure_caches(structures) -> None:
    """Drop the layer index maps cached on ``structures`` (rulebooks from :func:`structure_rulebook`).

    Batch plans live in the batches themselves and go away with them.
    """
    for s in structures:
        for key in [k for k in s._cache if isinstance(k, tuple) and k and str(k[0]).startswith("nn_")]:
            del s._cache[key]
