"""Batched layer plans (C, nn_plan.c) against a numpy reference built from the definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_structure

from napari_aprnet import _native
from napari_aprnet.nn import APRBatch
from napari_aprnet.nn._plans import conv_plan, pool_plan, structure_rulebook
from napari_aprnet.structure import APRStructure


def _structures(ndim):
    if ndim == 2:  # different shapes and level_max in one batch
        return [random_structure((12, 9), seed=1), random_structure((20, 33), seed=2),
                random_structure((5, 7), seed=3, min_level=0), random_structure((16, 16), seed=4)]
    return [random_structure((6, 7, 5), seed=1), random_structure((9, 4, 8), seed=2)]


def _value_index(s: APRStructure):
    """Local value index of cell (level, coords): covering particle, else tree node n + t, zero outside."""
    pid = s.particle_id_image()
    _, tc, toff = s.tree
    tree = {(lv,) + tuple(int(v) for v in tc[t]): t
            for lv in range(s.level_max + 1) for t in range(toff[lv], toff[lv + 1])}
    n, zero = s.n_particles, s.n_particles + len(tc)

    def index(level, c):
        if any(ci < 0 or ci >= gi for ci, gi in zip(c, s.level_shape(level))):
            return zero
        p = pid[tuple(int(ci) << (s.level_max - level) for ci in c)]
        return int(p) if s.levels[p] <= level else n + tree[(level,) + tuple(int(v) for v in c)]
    return index, zero


def _reference(structures, k, L):
    offs = np.concatenate([[0], np.cumsum([s.n_particles for s in structures])])
    nts = [len(s.tree[1]) for s in structures]
    toffs = np.concatenate([[0], np.cumsum(nts)])
    n_total, zero = int(offs[-1]), int(offs[-1] + toffs[-1])
    nd = structures[0].ndim

    def glob(b, v):
        s = structures[b]
        if v < s.n_particles:
            return int(offs[b] + v)
        return zero if v == s.n_particles + nts[b] else int(n_total + toffs[b] + v - s.n_particles)

    idx = [_value_index(s)[0] for s in structures]
    stencil = list(np.ndindex(*(k,) * nd))
    groups = []
    for g in range(L):
        rows, rb = [], []
        for b, s in enumerate(structures):
            for p in range(s.n_particles):
                if min(s.level_max - int(s.levels[p]), L - 1) != g:
                    continue
                rows.append(offs[b] + p)
                rb.append([glob(b, idx[b](int(s.levels[p]), s.coords[p] + np.array(o) - k // 2)) for o in stencil])
        groups.append((np.array(rows, dtype=np.int64), np.array(rb, dtype=np.int64).reshape(-1, k ** nd)))
    tree = []
    for level in range(max(s.level_max for s in structures) - 1, -1, -1):
        rows, ch = [], []
        for b, s in enumerate(structures):
            _, tc, toff = s.tree
            if level >= s.level_max:
                continue
            for t in range(toff[level], toff[level + 1]):
                rows.append(n_total + toffs[b] + t)
                ch.append([glob(b, idx[b](level + 1, 2 * tc[t] + np.array(o))) for o in np.ndindex(*(2,) * nd)])
        if rows:
            tree.append((np.array(rows), np.array(ch)))
    return groups, tree, zero


@pytest.mark.parametrize("ndim,k,L", [(2, 3, 2), (2, 5, 3), (2, 1, 2), (3, 3, 2)])
def test_conv_plan_matches_reference(ndim, k, L):
    structures = _structures(ndim)
    batch = APRBatch(torch.zeros(sum(s.n_particles for s in structures), 1), structures)
    plan = conv_plan(batch, k, L)
    groups, tree, zero = _reference(structures, k, L)
    n_total = batch.offsets[-1]
    assert len(plan.groups) == L
    assert (plan.maps is not None) == (k ** ndim >= 25)
    for g, (got, (rows, rb)) in enumerate(zip(plan.groups, groups)):
        if len(rows) == 0:
            assert got is None
            continue
        got_rows = np.arange(n_total) if got[0] is None else got[0].numpy()
        np.testing.assert_array_equal(got_rows, rows)
        if k == 1:
            assert got[1] is None
        else:
            np.testing.assert_array_equal(plan.rulebook(g).numpy(), rb)
            if plan.maps is not None:  # implicit plan: the gather from the maps reads the same values
                vals = np.random.default_rng(g).standard_normal((plan.n_values, 2))
                cols = np.empty((len(rows), rb.shape[1] * 2))
                plan.maps.gather(k, plan.gather_rows[g].numpy(), vals, cols)
                np.testing.assert_array_equal(cols.reshape(len(rows), -1, 2), vals[rb])
    if k == 1:
        assert plan.tree is None and plan.n_values == n_total + 1
        return
    assert plan.n_values == zero + 1
    assert len(plan.tree.steps) == len(tree)
    for (r, c), (rr, cc) in zip(plan.tree.steps, tree):
        np.testing.assert_array_equal(r.numpy(), rr)
        np.testing.assert_array_equal(c.numpy(), cc)


def test_structure_rulebook_is_local():
    s = _structures(2)[1]
    idx, zero = _value_index(s)
    want = [[idx(int(s.levels[p]), s.coords[p] + np.array(o) - 1) for o in np.ndindex(3, 3)]
            for p in range(s.n_particles)]
    np.testing.assert_array_equal(structure_rulebook(s, 3), want)


def test_pooled_structures_match_definition():
    structures = _structures(2)
    batch = APRBatch(torch.zeros(sum(s.n_particles for s in structures), 1), structures)
    plan = pool_plan(batch)
    for s, o in zip(structures, plan.out_structures):
        lm = s.level_max
        keep = s.levels < lm
        want = APRStructure.from_unsorted(tuple(-(-n // 2) for n in s.shape), lm - 1,
                                          np.concatenate([s.levels[keep], np.full(np.sum(~keep), lm - 1)]),
                                          np.concatenate([s.coords[keep], s.coords[~keep] >> 1]))
        uniq = np.unique(np.column_stack([want.levels, want.coords]), axis=0)
        assert o.shape == want.shape and o.level_max == lm - 1
        assert len(uniq) == o.n_particles  # parents of the finest particles once each
        got = np.column_stack([o.levels, o.coords])
        np.testing.assert_array_equal(np.unique(got, axis=0), uniq)
        np.testing.assert_array_equal(o.particle_id_image() >= 0, True)  # a valid partition (sorted, tiles)


def test_plans_do_not_depend_on_thread_count():
    structures = [random_structure((40, 37), seed=s) for s in range(6)]  # enough work for several chunks
    res, before = [], _native.max_threads()
    for threads in (1, 2):
        _native.set_num_threads(threads)
        try:
            b = APRBatch(torch.zeros(sum(s.n_particles for s in structures), 1), structures)
            c, p = conv_plan(b, 5, 3), pool_plan(b)
            res.append([c.rulebook(g).numpy().copy() for g in range(len(c.groups)) if c.groups[g] is not None]
                       + [x.numpy().copy() for st in c.tree.steps for x in st]
                       + [p.pass_src.numpy(), p.pass_dst.numpy(), p.pool_dst.numpy(), p.pool_children.numpy()])
        finally:
            _native.set_num_threads(before)
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_invalid_structures_are_rejected():
    s = random_structure((8, 8), seed=1)
    overlap = APRStructure(s.shape, s.level_max, np.append(s.levels, s.level_max),
                           np.vstack([s.coords, s.coords[-1:]]))
    with pytest.raises(ValueError, match="tile the image"):
        conv_plan(APRBatch(torch.zeros(s.n_particles + overlap.n_particles, 1), [s, overlap]), 3, 1)
    hole = APRStructure(s.shape, s.level_max, s.levels[:-1], s.coords[:-1])
    with pytest.raises(ValueError, match="tile the image"):
        pool_plan(APRBatch(torch.zeros(hole.n_particles, 1), [hole]))
    outside = APRStructure(s.shape, s.level_max, s.levels, np.where(np.arange(len(s.coords))[:, None] == 0,
                                                                    100, s.coords))
    with pytest.raises(IndexError, match="outside"):
        conv_plan(APRBatch(torch.zeros(outside.n_particles, 1), [outside]), 3, 1)
