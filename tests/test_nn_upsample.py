"""APRUpsample and APRConcat: pixel equivalence, a dict reference, gradients, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_structure
from test_nn_conv import full_structure

from napari_aprnet.nn import APRBatch, APRConcat, APRMaxPool, APRUpsample, apr_concat, apr_upsample
from napari_aprnet.nn.functional import apr_max_pool
from napari_aprnet.structure import APRStructure


def pixels_to_batch(img: torch.Tensor, s: APRStructure) -> APRBatch:
    """(C, *shape) pixel tensor -> batch on the all-pixel structure ``s`` (row-major particle order)."""
    return APRBatch(img.reshape(img.shape[0], -1).t().contiguous(), [s])


@pytest.mark.parametrize("shape", [(16, 16), (7, 13), (1, 9), (5, 7, 3), (8, 6, 8)])
def test_all_pixel_apr_equals_nearest_upsampling(shape):
    s = full_structure(shape)
    img = torch.randn(1, 3, *shape, dtype=torch.float64)
    fine = pixels_to_batch(img[0], s)
    up = APRUpsample()(APRMaxPool()(fine), fine)
    pool = F.max_pool2d if len(shape) == 2 else F.max_pool3d
    want = F.interpolate(pool(img, 2, ceil_mode=True), scale_factor=2, mode="nearest")
    want = want[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)][0]
    assert up.structures[0] is s and up.n_channels == 3
    torch.testing.assert_close(up.features, want.reshape(3, -1).t(), rtol=0, atol=0)


def reference_parent_rows(fine: APRStructure, coarse: APRStructure) -> np.ndarray:
    """Row of each fine particle's value in the pooled structure, from (level, coords) keys."""
    index = {(int(lv),) + tuple(int(c) for c in co): i for i, (lv, co) in enumerate(zip(coarse.levels, coarse.coords))}
    lm = fine.level_max
    rows = []
    for lv, co in zip(fine.levels, fine.coords):
        key = (int(lv),) + tuple(int(c) for c in co) if lv < lm else (lm - 1,) + tuple(int(c) >> 1 for c in co)
        rows.append(index[key])
    return np.array(rows)


@pytest.mark.parametrize("shapes", [[(19, 23), (9, 6)], [(7, 9, 6), (5, 5, 5)]])
def test_random_structures_take_their_parents_value(shapes):
    structures = [random_structure(sh, seed=i + 3) for i, sh in enumerate(shapes)]
    n = sum(s.n_particles for s in structures)
    fine = APRBatch(torch.randn(n, 2, dtype=torch.float64), structures)
    coarse = apr_max_pool(fine)
    values = torch.randn(coarse.features.shape[0], 5, dtype=torch.float64)
    up = apr_upsample(coarse.with_features(values), fine)
    assert up.structures == fine.structures and up._cache is fine._cache
    rows = []
    for b, (fs, cs) in enumerate(zip(fine.structures, coarse.structures)):
        rows.append(reference_parent_rows(fs, cs) + coarse.offsets[b])
    torch.testing.assert_close(up.features, values[torch.from_numpy(np.concatenate(rows))], rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(11, 14), (5, 7, 6)])
def test_gradcheck(shape):
    structures = [random_structure(shape, seed=1), random_structure(shape, seed=2)]
    n = sum(s.n_particles for s in structures)
    fine = APRBatch(torch.zeros(n, 1, dtype=torch.float64), structures)
    coarse = apr_max_pool(fine)
    x = torch.randn(coarse.features.shape[0], 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: apr_upsample(coarse.with_features(v), fine).features, (x,))
    # upsample(pool(.)) end to end (distinct values: the maximum is unique)
    y = (torch.randperm(n * 2, dtype=torch.float64).reshape(n, 2) / 7).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: apr_upsample(apr_max_pool(fine.with_features(v)), fine).features, (y,))


def test_gradient_sums_over_children():
    s = full_structure((4, 5))
    fine = APRBatch(torch.zeros(s.n_particles, 1, dtype=torch.float64), [s])
    coarse = apr_max_pool(fine)
    x = torch.zeros(coarse.features.shape[0], 1, dtype=torch.float64, requires_grad=True)
    apr_upsample(coarse.with_features(x), fine).features.sum().backward()
    # a 4x5 image pooled to 2x3: the last column's parents have 2 children inside the image, the others 4
    want = torch.tensor([[4, 4, 2], [4, 4, 2]], dtype=torch.float64)
    dense = torch.zeros(2, 3, dtype=torch.float64)
    co = coarse.structures[0].coords
    dense[co[:, 0], co[:, 1]] = x.grad[:, 0]
    torch.testing.assert_close(dense, want)


def test_equal_but_distinct_structures_are_accepted():
    s = random_structure((12, 10), seed=5)
    fine = APRBatch(torch.randn(s.n_particles, 1), [s])
    coarse = apr_max_pool(fine)
    copies = [APRStructure(c.shape, c.level_max, c.levels.copy(), c.coords.copy()) for c in coarse.structures]
    up = apr_upsample(APRBatch(coarse.features, copies), fine)
    torch.testing.assert_close(up.features, apr_upsample(coarse, fine).features)


def test_upsample_errors():
    s, t = random_structure((12, 10), seed=5), random_structure((12, 10), seed=6)
    fine = APRBatch(torch.randn(s.n_particles, 1), [s])
    coarse = apr_max_pool(fine)
    with pytest.raises(ValueError, match="max pooling of the fine"):
        apr_upsample(fine, fine)  # not pooled
    other = APRBatch(torch.randn(t.n_particles, 1), [t])
    with pytest.raises(ValueError, match="max pooling of the fine"):
        apr_upsample(apr_max_pool(other), fine)
    with pytest.raises(ValueError, match="max pooling of the fine"):
        apr_upsample(apr_max_pool(apr_max_pool(fine)), fine)  # pooled twice
    with pytest.raises(ValueError, match="1 and 2 APRs"):
        apr_upsample(coarse, APRBatch(torch.randn(2 * s.n_particles, 1), [s, s]))
    with pytest.raises(TypeError, match="APRBatch"):
        apr_upsample(coarse.features, fine)


def test_concat():
    structures = [random_structure((9, 8), seed=1), random_structure((6, 7), seed=2)]
    n = sum(s.n_particles for s in structures)
    a = APRBatch(torch.randn(n, 2, dtype=torch.float64, requires_grad=True), structures)
    b = a.with_features(torch.randn(n, 3, dtype=torch.float64, requires_grad=True))
    out = APRConcat()(a, b)
    assert out.structures == a.structures and out._cache is a._cache
    torch.testing.assert_close(out.features, torch.cat([a.features, b.features], 1))
    assert torch.autograd.gradcheck(lambda u, v: apr_concat(a.with_features(u), b.with_features(v)).features,
                                    (a.features, b.features))
    copies = [APRStructure(s.shape, s.level_max, s.levels.copy(), s.coords.copy()) for s in structures]
    torch.testing.assert_close(apr_concat(a, APRBatch(b.features, copies)).features, out.features)


def test_concat_errors():
    s, t = random_structure((9, 8), seed=1), random_structure((9, 8), seed=2)
    a = APRBatch(torch.randn(s.n_particles, 2), [s])
    with pytest.raises(ValueError, match="different APR structures"):
        apr_concat(a, APRBatch(torch.randn(t.n_particles, 2), [t]))
    with pytest.raises(ValueError, match="different APR structures"):
        apr_concat(a, apr_max_pool(a))
    with pytest.raises(TypeError, match="float32 and torch.float64"):
        apr_concat(a, a.to(torch.float64))
    with pytest.raises(TypeError, match="APRBatch"):
        apr_concat(a, a.features)
