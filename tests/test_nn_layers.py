"""APRBatch and the simple APR layers; bad inputs; thread-count independence."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import random_structure

from napari_aprnet.nn import (
    APRBatch,
    APRBatchNorm,
    APRConv,
    APRDropout,
    APRGlobalAvgPool,
    APRMaxPool,
    APRReLU,
    APRSpatialDropout,
)
from napari_aprnet.structure import APRStructure


@pytest.fixture
def two():
    return [random_structure((12, 10), seed=1), random_structure((9, 15), seed=2)]


def test_from_aprs_and_level_channel(two):
    aprs = [SimpleNamespace(structure=s, values=np.arange(s.n_particles, dtype=np.float32)) for s in two]
    b = APRBatch.from_aprs(aprs, add_level_channel=True, dtype=torch.float64)
    assert b.batch_size == 2 and b.n_channels == 2 and b.features.dtype == torch.float64
    assert b.offsets.tolist() == [0, two[0].n_particles, two[0].n_particles + two[1].n_particles]
    for s, f in zip(two, b.split()):
        np.testing.assert_array_equal(f[:, 0].numpy(), np.arange(s.n_particles))
        np.testing.assert_allclose(f[:, 1].numpy(), s.levels / s.level_max)
    b2 = APRBatch.from_aprs(aprs, values=[np.ones((s.n_particles, 3)) for s in two])
    assert b2.n_channels == 3 and b2.features.dtype == torch.float32
    assert b2.with_features(b2.features * 2)._cache is b2._cache


def test_global_avg_pool_is_per_apr_mean(two):
    b = APRBatch(torch.randn(sum(s.n_particles for s in two), 4), two)
    got = APRGlobalAvgPool()(b)
    want = torch.stack([f.mean(0) for f in b.split()])
    torch.testing.assert_close(got, want)


def test_batchnorm_relu_dropout(two):
    n = sum(s.n_particles for s in two)
    b = APRBatch(torch.randn(n, 3) * 5 + 2, two)
    y = APRBatchNorm(3)(b).features
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(APRReLU()(b).features, b.features.clamp_min(0))
    d = APRDropout(0.5)
    out = d(b).features
    assert set(torch.unique(out / b.features * 0.5).round(decimals=4).tolist()) <= {0.0, 1.0}
    d.eval()
    assert torch.equal(d(b).features, b.features)


def test_spatial_dropout_drops_whole_channels_per_apr(two):
    torch.manual_seed(0)
    n = sum(s.n_particles for s in two)
    b = APRBatch(torch.rand(n, 16) + 1, two)
    out = APRSpatialDropout(0.5)(b)
    for x, y in zip(b.split(), out.split()):
        zero = (y == 0).all(0)
        kept = (y != 0).all(0)
        assert torch.all(zero | kept)  # a channel is all dropped or all kept within an APR
        torch.testing.assert_close(y[:, kept], x[:, kept] * 2)
        assert 0 < zero.sum() < 16
    dropped = [(y == 0).all(0) for y in out.split()]
    assert not torch.equal(dropped[0], dropped[1])  # independent per APR (fails with prob 2^-16)


def test_bad_inputs(two):
    n = sum(s.n_particles for s in two)
    b = APRBatch(torch.randn(n, 2), two)
    with pytest.raises(ValueError, match="input channels"):
        APRConv(3, 4, 3)(b)
    with pytest.raises(ValueError, match="odd"):
        APRConv(2, 4, 4)
    with pytest.raises(ValueError, match="rows"):
        APRBatch(torch.randn(n + 1, 2), two)
    with pytest.raises(TypeError, match="floating"):
        APRBatch(torch.ones(n, 2, dtype=torch.int64), two)
    with pytest.raises(TypeError, match="float64"):
        APRConv(2, 4, 3).double()(b)
    with pytest.raises(ValueError, match="empty"):
        APRBatch(torch.zeros(0, 2), [])
    with pytest.raises(ValueError, match="empty"):
        APRBatch.from_aprs([])
    with pytest.raises(ValueError, match="ndim|2D"):
        APRConv(2, 4, 3, ndim=3)(b)
    with pytest.raises(TypeError, match="APRBatch"):
        APRConv(2, 4, 3)(torch.randn(n, 2))
    with pytest.raises(ValueError, match="same number of dimensions"):
        APRBatch(torch.zeros(two[0].n_particles + 1, 1), [two[0], APRStructure((1, 1, 1), 0, [0], [[0, 0, 0]])])
    gap = APRStructure((4, 4), 2, [1, 1, 1], [[0, 0], [0, 1], [1, 0]])  # one quadrant missing
    with pytest.raises(ValueError, match="tile the image"):
        APRConv(1, 1, 3)(APRBatch(torch.zeros(3, 1), [gap]))
    overlap = APRStructure((4, 4), 2, [1, 1, 1, 1, 2], [[0, 0], [0, 1], [1, 0], [1, 1], [3, 3]])
    with pytest.raises(ValueError, match="tile the image"):
        APRConv(1, 1, 3)(APRBatch(torch.zeros(5, 1), [overlap]))
    with pytest.raises(ValueError, match="level_max"):
        APRMaxPool()(APRBatch(torch.zeros(1, 1), [APRStructure((1, 1), 0, [0], [[0, 0]])]))


_THREAD_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    sys.path.insert(0, {tests!r})
    from conftest import random_structure
    from napari_aprnet.nn import APRBatch, APRConv, APRMaxPool
    torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(0)
    ss = [random_structure((96, 130), seed=1, p_split=0.8), random_structure((120, 77), seed=2, p_split=0.8)]
    n = sum(s.n_particles for s in ss)
    x = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    conv = APRConv(8, 8, 5, n_level_kernels=3).double()
    y = APRMaxPool()(conv(APRBatch(x, ss))).features
    y.square().sum().backward()
    np.savez(sys.argv[2], y=y.detach().numpy(), gx=x.grad.numpy(), gw=conv.weight.grad.numpy())
""")


def test_results_do_not_depend_on_thread_count(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_THREAD_SCRIPT.format(tests=os.path.dirname(__file__)))
    res = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = tmp_path / f"r{threads}.npz"
        subprocess.run([sys.executable, str(script), str(threads), str(out)], env=env, check=True)
        res.append(np.load(out))
    for key in ("y", "gx", "gw"):  # float64; only the BLAS summation order may differ between thread counts
        np.testing.assert_allclose(res[0][key], res[1][key], rtol=1e-12, atol=1e-12)


def test_plans_are_shared_and_structure_caches_clearable(two):
    from napari_aprnet.nn import clear_structure_caches
    from napari_aprnet.nn._plans import structure_rulebook
    b = APRBatch(torch.randn(sum(s.n_particles for s in two), 1), two)
    APRConv(1, 1, 3)(b)
    plan = b._cache[("conv", 3, 1, "cpu")]
    APRConv(1, 1, 3)(b.with_features(b.features * 2))  # same structures: the batch's plan is reused
    assert b._cache[("conv", 3, 1, "cpu")] is plan
    p1, p2 = APRMaxPool()(b), APRMaxPool()(b.with_features(b.features + 1))
    # the pooled batches share their plans
    assert all(a is c for a, c in zip(p1.structures, p2.structures)) and p1._cache is p2._cache
    rb = structure_rulebook(two[0], 3)
    assert structure_rulebook(two[0], 3) is rb
    clear_structure_caches(two)
    assert not any(str(k[0]).startswith("nn_") for s in two for k in s._cache)
