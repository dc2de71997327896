"""APRMaxPool: equivalence with max_pool2d/3d, a numpy reference, gradients, output structure."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_structure
from test_nn_conv import full_structure

from napari_aprnet.nn import APRBatch, APRConv, APRMaxPool
from napari_aprnet.structure import APRStructure


@pytest.mark.parametrize("shape", [(16, 16), (7, 13), (1, 9)])
def test_full_resolution_equals_max_pool2d(shape):
    s = full_structure(shape)
    img = torch.randn(1, 3, *shape)
    out = APRMaxPool()(APRBatch(img[0].reshape(3, -1).t().contiguous(), [s]))
    want = F.max_pool2d(img, 2, ceil_mode=True)[0]
    so = out.structures[0]
    assert so.shape == tuple(-(-n // 2) for n in shape) and so.level_max == s.level_max - 1
    assert np.all(so.levels == so.level_max)
    dense = torch.zeros_like(want)
    dense[(slice(None),) + tuple(torch.from_numpy(so.coords[:, a]).long() for a in range(2))] = out.features.t()
    torch.testing.assert_close(dense, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8, 8), (5, 7, 3)])
def test_full_resolution_equals_max_pool3d(shape):
    s = full_structure(shape)
    img = torch.randn(1, 2, *shape)
    out = APRMaxPool()(APRBatch(img[0].reshape(2, -1).t().contiguous(), [s]))
    want = F.max_pool3d(img, 2, ceil_mode=True)[0]
    so = out.structures[0]
    dense = torch.zeros_like(want)
    dense[(slice(None),) + tuple(torch.from_numpy(so.coords[:, a]).long() for a in range(3))] = out.features.t()
    torch.testing.assert_close(dense, want, rtol=1e-5, atol=1e-5)


def reference_pool(s: APRStructure, x: np.ndarray):
    """Dict (level, coords) -> value: coarser particles copied, finest pooled by max into parents."""
    lm = s.level_max
    out = {}
    for p in range(s.n_particles):
        if s.levels[p] < lm:
            out[(int(s.levels[p]),) + tuple(int(c) for c in s.coords[p])] = x[p]
        else:
            key = (lm - 1,) + tuple(int(c) >> 1 for c in s.coords[p])
            out[key] = np.maximum(out[key], x[p]) if key in out else x[p]
    return out


@pytest.mark.parametrize("shape", [(19, 23), (7, 9, 6)])
def test_random_structures_match_reference(shape):
    s = random_structure(shape, seed=4)
    x = np.random.default_rng(0).standard_normal((s.n_particles, 2))
    out = APRMaxPool()(APRBatch(torch.from_numpy(x), [s]))
    so = out.structures[0]
    ref = reference_pool(s, x)
    assert so.n_particles == len(ref)
    got = {(int(lv),) + tuple(int(c) for c in co): out.features[i].numpy()
           for i, (lv, co) in enumerate(zip(so.levels, so.coords))}
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])
    # output follows the contract: sorted, and a valid partition usable by a convolution
    assert APRStructure.from_unsorted(so.shape, so.level_max, so.levels, so.coords).coords.tolist() == \
        so.coords.tolist()
    APRConv(2, 1, 3, ndim=len(shape)).double()(out)


def test_gradcheck_and_batch():
    structures = [random_structure((11, 14), seed=1), random_structure((9, 6), seed=2)]
    n = sum(s.n_particles for s in structures)
    # distinct values so the max is unique (gradcheck needs differentiability)
    x = (torch.randperm(n * 2, dtype=torch.float64).reshape(n, 2) / 7).requires_grad_()
    batch = APRBatch(x, structures)

    def fn(x):
        return APRMaxPool()(batch.with_features(x)).features

    assert torch.autograd.gradcheck(fn, (x,))
    out = fn(x)
    alone = torch.cat([APRMaxPool()(APRBatch(xi, [s])).features for s, xi in zip(structures, batch.split())])
    torch.testing.assert_close(out, alone)


def test_no_finest_particles_shrinks_structure():
    s = APRStructure((8, 8), 3, [1, 1, 1, 1], [[0, 0], [0, 1], [1, 0], [1, 1]])
    x = torch.arange(4.0)[:, None]
    out = APRMaxPool()(APRBatch(x, [s]))
    assert out.structures[0].shape == (4, 4) and out.structures[0].level_max == 2
    torch.testing.assert_close(out.features, x)


def test_pool_twice_and_no_grad():
    s = random_structure((16, 16), seed=3)
    x = torch.randn(s.n_particles, 1)
    with torch.no_grad():
        out = APRMaxPool()(APRMaxPool()(APRBatch(x, [s])))
    assert out.structures[0].shape == (4, 4) and out.features.grad_fn is None
    assert out.features.max() == x.max()
