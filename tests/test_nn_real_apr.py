"""APR layers on APRs converted from images (APR.from_image), plus the torch-only (GPU) code path on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_nn_conv import reference_conv
from test_nn_pool import reference_pool

from napari_aprnet import APR
from napari_aprnet.nn import APRBatch, APRConv, APRMaxPool, _backend
from napari_aprnet.nn.functional import apr_conv


def _disk(shape, centre, radius):
    """A bright disk/ball on a dark background: fine particles at its edge, coarse ones elsewhere."""
    grid = np.mgrid[tuple(slice(0, n) for n in shape)]
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return np.where(d < radius, 1.0, 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def aprs_2d():
    aprs = [APR.from_image(_disk((32, 32), (10, 12), 5), rel_error=0.2),
            APR.from_image(_disk((21, 27), (12, 8), 4), rel_error=0.2)]
    assert all(len(np.unique(a.structure.levels)) >= 3 for a in aprs)  # genuinely adaptive
    return aprs


@pytest.fixture(scope="module")
def aprs_3d():
    aprs = [APR.from_image(_disk((9, 11, 10), (4, 5, 4), 2.5), rel_error=0.2)]
    assert len(np.unique(aprs[0].structure.levels)) >= 2
    return aprs


@pytest.mark.parametrize("k,n_level_kernels", [(3, 3), (5, 1)])
def test_gradcheck_conv_real_2d(aprs_2d, k, n_level_kernels):
    batch = APRBatch.from_aprs(aprs_2d, add_level_channel=True, dtype=torch.float64)
    batch = batch.with_features(batch.features / batch.features.abs().amax(0))
    conv = APRConv(2, 2, k, n_level_kernels=n_level_kernels).double()
    x = batch.features.clone().requires_grad_()
    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: apr_conv(batch.with_features(x), w, b).features, (x, w, b),
                                    fast_mode=True)
    # and the values match the dense reference
    want = np.concatenate([reference_conv(a.structure, f.detach().numpy(), w.detach().numpy(), b.detach().numpy())
                           for a, f in zip(aprs_2d, batch.split())])
    np.testing.assert_allclose(apr_conv(batch, w, b).features.detach().numpy(), want, rtol=1e-10, atol=1e-10)


def test_gradcheck_conv_real_3d(aprs_3d):
    batch = APRBatch.from_aprs(aprs_3d, dtype=torch.float64)
    conv = APRConv(1, 2, 3, n_level_kernels=2, ndim=3).double()
    x = batch.features.clone().requires_grad_()
    w = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: apr_conv(batch.with_features(x), w).features, (x, w),
                                    fast_mode=True)


def test_gradcheck_pool_real(aprs_2d, aprs_3d):
    for aprs in (aprs_2d, aprs_3d):
        n = sum(a.n_particles for a in aprs)
        x = (torch.randperm(n, dtype=torch.float64)[:, None] / n).requires_grad_()
        batch = APRBatch(x, [a.structure for a in aprs])
        assert torch.autograd.gradcheck(lambda x: APRMaxPool()(batch.with_features(x)).features, (x,),
                                        fast_mode=True)
        out = APRMaxPool()(batch)
        for s, xs, o, so in zip(batch.structures, batch.split(), out.split(), out.structures):
            ref = reference_pool(s, xs.detach().numpy())
            got = {(int(lv),) + tuple(int(c) for c in co): float(o[i, 0])
                   for i, (lv, co) in enumerate(zip(so.levels, so.coords))}
            assert got == {key: float(v[0]) for key, v in ref.items()}


def test_numeric_paths_agree(aprs_2d, monkeypatch):
    """gather + matmul with C tree/scatter kernels (CPU) and torch ops only (the GPU path) agree."""
    batch = APRBatch.from_aprs(aprs_2d, dtype=torch.float64)
    conv = APRConv(1, 3, 3, n_level_kernels=2).double()

    def run():
        x = batch.features.clone().requires_grad_()
        y = conv(APRBatch(x, batch.structures)).features
        y.square().sum().backward()
        g = (x.grad.clone(), conv.weight.grad.clone())
        conv.zero_grad()
        return y.detach(), g

    y1, (gx1, gw1) = run()  # gather + matmul, C tree/scatter
    monkeypatch.setattr(_backend, "_TABLE", {})  # torch ops only (GPU path)
    y3, (gx3, gw3) = run()
    for a, c in [(y1, y3), (gx1, gx3), (gw1, gw3)]:
        torch.testing.assert_close(a, c)


def test_network_on_real_aprs(aprs_2d):
    """conv -> pool -> conv -> pool runs, and pooled structures stay valid."""
    batch = APRBatch.from_aprs(aprs_2d, add_level_channel=True)
    net = torch.nn.Sequential(APRConv(2, 4, 3, n_level_kernels=2), APRMaxPool(), APRConv(4, 4, 3), APRMaxPool(),
                              APRConv(4, 2, 1))
    out = net(batch)
    assert out.features.shape == (sum(s.n_particles for s in out.structures), 2)
    assert out.structures[0].shape == (8, 8)
    out.features.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
