"""APRConv: gradients, equivalence with pixel convolution, a dense reference, thesis fig. 3.4."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_structure

from napari_aprnet.nn import APRBatch, APRConv
from napari_aprnet.nn.functional import apr_conv
from napari_aprnet.structure import APRStructure, level_max_for_shape


def full_structure(shape) -> APRStructure:
    """Every pixel a particle at level_max."""
    lmax = level_max_for_shape(shape)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, len(shape))
    return APRStructure(shape, lmax, np.full(len(coords), lmax, np.uint8), coords)


# ----- independent dense reference (thesis eq. 3.3 from its definition) -------------------------

def level_images(s: APRStructure, x: np.ndarray) -> list[np.ndarray]:
    """Isotropic image of every level: particle value where a particle at this level or coarser
    covers the cell, else the mean of the (inside-image) children one level finer."""
    pid = s.particle_id_image()
    lvl = s.levels[pid]
    imgs = [None] * (s.level_max + 1)
    imgs[s.level_max] = x[pid]
    for level in range(s.level_max - 1, -1, -1):
        fine = imgs[level + 1]
        grid = s.level_shape(level)
        tot = np.zeros(grid + (x.shape[1],))
        cnt = np.zeros(grid)
        for off in np.ndindex(*(2,) * s.ndim):
            sl = tuple(slice(o, None, 2) for o in off)
            part = fine[sl]
            dst = tuple(slice(0, n) for n in part.shape[:-1])
            tot[dst] += part
            cnt[dst] += 1
        avg = tot / cnt[..., None]
        step = 1 << (s.level_max - level)
        first = tuple(slice(0, None, step) for _ in range(s.ndim))
        covered = lvl[first] <= level
        imgs[level] = np.where(covered[..., None], x[pid[first]], avg)
    return imgs


def reference_conv(s: APRStructure, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """out[p] = sum_o I_level(p)[c_p + o] . weight[kernel(level)][:, :, o + r] (zero outside)."""
    imgs = level_images(s, x)
    n_k, c_out, c_in = weight.shape[:3]
    k = weight.shape[3]
    r = k // 2
    out = np.zeros((s.n_particles, c_out))
    for level in range(s.level_max + 1):
        lo, hi = s.level_offsets[level], s.level_offsets[level + 1]
        if lo == hi:
            continue
        w = weight[min(s.level_max - level, n_k - 1)]
        img = np.pad(imgs[level], [(r, r)] * s.ndim + [(0, 0)])
        c = s.coords[lo:hi]
        for off in np.ndindex(*(k,) * s.ndim):
            vals = img[tuple(c[:, a] + off[a] for a in range(s.ndim))]  # (n, C_in)
            out[lo:hi] += vals @ w[(slice(None), slice(None)) + off].T
    if bias is not None:
        out += bias
    return out


# ----- tests ---------------------------------------------------------------------------------

def _batch(structures, channels, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = sum(s.n_particles for s in structures)
    return APRBatch(torch.randn(n, channels, generator=g, dtype=dtype), structures)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("k,n_level_kernels", [(1, 1), (3, 3), (5, 2)])
def test_matches_dense_reference(ndim, k, n_level_kernels):
    shapes = {2: [(21, 13), (16, 11)], 3: [(9, 7, 6), (5, 8, 7)]}[ndim]
    structures = [random_structure(sh, seed=3 + i, min_level=1) for i, sh in enumerate(shapes)]
    assert len(np.unique(structures[0].levels)) >= 3  # genuinely multi-level
    batch = _batch(structures, 3)
    conv = APRConv(3, 4, k, n_level_kernels=n_level_kernels, ndim=ndim).double()
    with torch.no_grad():
        conv.bias.normal_()
        got = conv(batch).features.numpy()
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    want = np.concatenate([reference_conv(s, x.numpy(), w, b) for s, x in zip(structures, batch.split())])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_reference_detects_wrong_tree_rule():
    """Sanity of the reference: changing the coarse-to-fine rule changes the answer."""
    s = random_structure((16, 16), seed=5, min_level=1)
    x = np.random.default_rng(0).standard_normal((s.n_particles, 1))
    w = np.random.default_rng(1).standard_normal((1, 1, 1, 3, 3))
    a = reference_conv(s, x, w, None)
    b = reference_conv(s, x + 1e-3 * (s.levels[:, None] < s.level_max), w, None)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("shape", [(16, 16), (13, 10), (1, 9)])
@pytest.mark.parametrize("k", [1, 3, 5, 11])
def test_full_resolution_equals_conv2d(shape, k):
    s = full_structure(shape)
    torch.manual_seed(0)
    conv = APRConv(2, 3, k)
    img = torch.randn(1, 2, *shape)
    batch = APRBatch(img[0].reshape(2, -1).t().contiguous(), [s])
    got = conv(batch).features
    want = F.conv2d(img, conv.weight[0], conv.bias, padding=k // 2)[0].reshape(3, -1).t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8, 8), (5, 7, 6)])
def test_full_resolution_equals_conv3d(shape):
    s = full_structure(shape)
    torch.manual_seed(0)
    conv = APRConv(2, 3, 3, ndim=3)
    img = torch.randn(1, 2, *shape)
    batch = APRBatch(img[0].reshape(2, -1).t().contiguous(), [s])
    got = conv(batch).features
    want = F.conv3d(img, conv.weight[0], conv.bias, padding=1)[0].reshape(3, -1).t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_thesis_figure_3_4():
    """1D example of thesis fig. 3.3/3.4 as a 2D image of height 1.

    Fine level (3): x0 x1 x2 x3 at cells 0..3; level 2: x4, x5 at cells 2, 3;
    xi1 = (x2 + x3) / 2, xi2 = x4. Thesis kernels are convolution-oriented
    (omega_k multiplies I_{i-k}); ours are cross-correlations, so alpha_{-1} = W[..., 2].
    """
    s = APRStructure.from_unsorted((1, 8), 3, [3, 3, 3, 3, 2, 2], [[0, 0], [0, 1], [0, 2], [0, 3], [0, 2], [0, 3]])
    assert s.levels.tolist() == [2, 2, 3, 3, 3, 3]  # sorted by level: x4, x5, x0, x1, x2, x3
    x0, x1, x2, x3, x4, x5 = 1.0, 2.0, 5.0, 7.0, 11.0, 13.0
    x = torch.tensor([x4, x5, x0, x1, x2, x3], dtype=torch.float64)[:, None]
    conv = APRConv(1, 1, 3, n_level_kernels=2, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 1] = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)   # alpha_{1}, alpha_0, alpha_{-1}
        conv.weight[1, 0, 0, 1] = torch.tensor([0.11, 0.13, 0.17], dtype=torch.float64)  # beta_{1}, beta_0, beta_{-1}
        conv.weight[:, 0, 0, 0] = 100.0  # rows above/below are outside the image: must not contribute
        conv.weight[:, 0, 0, 2] = 100.0
        y = conv(APRBatch(x, [s])).features[:, 0]
    a_m1, a0, a1 = 0.7, 0.5, 0.3
    b_m1, b0, b1 = 0.17, 0.13, 0.11
    xi1, xi2 = (x2 + x3) / 2, x4
    y4, y5, y0, y1, y2, y3 = y.tolist()
    assert y0 == pytest.approx(x1 * a_m1 + x0 * a0 + 0 * a1)
    assert y3 == pytest.approx(xi2 * a_m1 + x3 * a0 + x2 * a1)
    assert y4 == pytest.approx(x5 * b_m1 + x4 * b0 + xi1 * b1)
    assert y5 == pytest.approx(0 * b_m1 + x5 * b0 + x4 * b1)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("k,n_level_kernels,bias", [(1, 1, True), (3, 1, False), (3, 3, True), (5, 3, False)])
def test_gradcheck_random_structures(ndim, k, n_level_kernels, bias):
    shapes = {2: [(11, 9), (8, 13)], 3: [(6, 5, 7), (4, 6, 5)]}[ndim]
    structures = [random_structure(sh, seed=10 + i, min_level=1) for i, sh in enumerate(shapes)]
    batch = _batch(structures, 2)
    conv = APRConv(2, 2, k, n_level_kernels=n_level_kernels, bias=bias, ndim=ndim).double()
    x = batch.features.clone().requires_grad_()
    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_() if bias else None
    inputs = (x, w) + ((b,) if bias else ())

    def fn(x, w, b=None):
        return apr_conv(batch.with_features(x), w, b).features

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


def test_backward_is_adjoint_of_forward():
    """<conv(x), g> == <x, conv^T(g)> on a structure whose neighbours differ by > 1 level."""
    s = random_structure((32, 32), seed=7, p_split=0.45, min_level=1)
    batch = _batch([s], 3)
    conv = APRConv(3, 2, 5, n_level_kernels=2, bias=False).double()
    x = batch.features.clone().requires_grad_()
    y = apr_conv(batch.with_features(x), conv.weight.detach()).features
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close((y * g).sum(), (x * gx).sum(), rtol=1e-12, atol=1e-12)


def test_no_grad_keeps_no_state():
    s = random_structure((16, 16), seed=1)
    conv = APRConv(1, 2, 3)
    with torch.no_grad():
        y = conv(APRBatch(torch.randn(s.n_particles, 1), [s]))
    assert y.features.grad_fn is None and not y.features.requires_grad


@pytest.mark.parametrize("k", [3, 5])
def test_batch_equals_separate(k):
    structures = [random_structure((12, 9), seed=1), random_structure((20, 33), seed=2)]
    assert structures[0].level_max != structures[1].level_max  # level kernels count from each APR's level_max
    batch = _batch(structures, 2, dtype=torch.float32)
    conv = APRConv(2, 3, k, n_level_kernels=2)
    together = conv(batch).features
    alone = torch.cat([conv(APRBatch(x, [s])).features for s, x in zip(structures, batch.split())])
    torch.testing.assert_close(together, alone)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    structures = [random_structure((20, 17), seed=1), random_structure((15, 22), seed=2)]
    batch = _batch(structures, 3)
    conv = APRConv(3, 4, 3, n_level_kernels=2).double()
    x = batch.features.clone().requires_grad_()
    y = conv(batch.with_features(x)).features
    y.square().sum().backward()
    conv_gpu = APRConv(3, 4, 3, n_level_kernels=2).double().cuda()
    conv_gpu.load_state_dict(conv.state_dict())
    xg = batch.features.cuda().requires_grad_()
    yg = conv_gpu(batch.with_features(xg)).features
    yg.square().sum().backward()
    torch.testing.assert_close(yg.cpu(), y.detach())
    torch.testing.assert_close(xg.grad.cpu(), x.grad)
    torch.testing.assert_close(conv_gpu.weight.grad.cpu(), conv.weight.grad)
