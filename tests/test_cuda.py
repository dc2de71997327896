"""The APR layers and the thesis networks on a CUDA GPU (run by scripts/gpu_check.sh).

Without a GPU the CUDA tests are skipped, with the reason; the layer tests
also run on the CPU with the C kernels switched off (``torch-ops-on-cpu``),
which checks CUDA's code path everywhere. On CUDA the
layers use the torch ops of :data:`napari_aprnet.nn._backend.TORCH_OPS`
(the C kernels serve the CPU), with the index plans built in C on the host
and moved to the device. Each layer must equal its CPU result (float32,
1e-4) and pass gradcheck in float64 on the device; the thesis networks must
train on the GPU through the training loop (``device="cuda"``), with the
first step's loss equal to the CPU's.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import random_structure
from test_distributed import _assert_same_weights

from napari_aprnet.models import build_model
from napari_aprnet.nn import APRBatch, APRBatchNorm, APRConv, APRGlobalAvgPool, APRMaxPool, APRSpatialDropout, _backend
from napari_aprnet.nn._backend import TORCH_OPS, ops_for
from napari_aprnet.nn.functional import apr_conv
from napari_aprnet.training import TrainConfig, run_training, train
from napari_aprnet.training.checkpoint import load_checkpoint

NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh runs these on a GPU machine"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


@contextlib.contextmanager
def _torch_ops_only():
    """The C kernels switched off: the CPU runs the torch ops that serve CUDA."""
    saved = dict(_backend._TABLE)
    _backend._TABLE.clear()
    try:
        yield
    finally:
        _backend._TABLE.update(saved)


@pytest.fixture(params=["torch-ops-on-cpu", "cuda"])
def target(request):
    """(device, context): CUDA, or the CPU running CUDA's torch ops (checks the same code path without a GPU)."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(NO_CUDA)
        return torch.device("cuda"), contextlib.nullcontext
    return torch.device("cpu"), _torch_ops_only


def _batch(ndim: int, channels: int, dtype=torch.float32, seed: int = 0) -> APRBatch:
    shapes = [(21, 17), (30, 26)] if ndim == 2 else [(9, 13, 11), (12, 10, 14)]
    structures = [random_structure(s, seed=seed + i) for i, s in enumerate(shapes)]
    n = sum(s.n_particles for s in structures)
    gen = torch.Generator().manual_seed(seed)
    return APRBatch(torch.randn(n, channels, generator=gen, dtype=dtype), structures)


def _both(module: torch.nn.Module, batch: APRBatch, target):
    """Output and gradients (input, parameters) of ``module``: the CPU with its C kernels, then ``target``."""
    results = []
    for device, context in ((torch.device("cpu"), contextlib.nullcontext), target):
        with context():
            m = module.to(device)
            x = batch.features.to(device).clone().requires_grad_()
            out = m(batch.with_features(x))
            y = out.features if isinstance(out, APRBatch) else out
            r = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype).to(device)
            (y * r).sum().backward()
            grads = [p.grad.detach().cpu().clone() for p in m.parameters()]
            results.append((y.detach().cpu(), x.grad.detach().cpu(), grads))
            m.zero_grad(set_to_none=True)
    return results


def _assert_close(cpu, gpu):
    (y0, gx0, gp0), (y1, gx1, gp1) = cpu, gpu
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-4)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_target_uses_the_torch_ops(target):
    device, context = target
    with context():
        assert ops_for(torch.zeros(1, device=device)) is TORCH_OPS


@pytest.mark.parametrize("ndim,k,n_level_kernels", [(2, 3, 2), (2, 5, 1), (2, 11, 3), (3, 3, 2)])
def test_conv_equals_cpu(ndim, k, n_level_kernels, target):
    torch.manual_seed(0)
    conv = APRConv(3, 4, k, n_level_kernels=n_level_kernels, ndim=ndim)
    _assert_close(*_both(conv, _batch(ndim, 3), target))


@pytest.mark.parametrize("ndim", [2, 3])
def test_pool_and_batchnorm_equal_cpu(ndim, target):
    _assert_close(*_both(APRMaxPool(), _batch(ndim, 3), target))
    bn = APRBatchNorm(3)
    torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    _assert_close(*_both(bn, _batch(ndim, 3, seed=4), target))
    _assert_close(*_both(APRGlobalAvgPool(), _batch(ndim, 3, seed=5), target))


def test_spatial_dropout_stays_on_the_device(target):
    device, context = target
    with context():
        batch = _batch(2, 3).to(device)
        out = APRSpatialDropout(0.5).train()(batch)
    assert out.features.device == batch.features.device and out.features.shape == batch.features.shape


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck_float64(ndim, target):
    device, context = target
    batch = _batch(ndim, 2, dtype=torch.float64)
    x = batch.features.to(device).requires_grad_()
    w = torch.randn(2, 3, 2, *(3,) * ndim, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    n = batch.features.shape[0]
    xp = (torch.randperm(n, dtype=torch.float64)[:, None] / n).repeat(1, 2).to(device).requires_grad_()
    with context():
        assert torch.autograd.gradcheck(lambda x, w, b: apr_conv(batch.with_features(x), w, b).features,
                                        (x, w, b), fast_mode=True)
        assert torch.autograd.gradcheck(lambda x: APRMaxPool()(batch.with_features(x)).features, (xp,),
                                        fast_mode=True)


@needs_cuda
@pytest.mark.parametrize("name", ["APR_A", "APR_B", "APR_C", "Pix_B"])
def test_thesis_networks_train_on_cuda(name, tmp_path):
    """Three training steps on the GPU through the loop; the first step's loss equals the CPU's."""
    config = TrainConfig(model=name, steps=3, batch_size=4, size=64, bn_batches=1, seed=0)
    gpu = [e for e in train(config, tmp_path / "gpu", device="cuda")]
    cpu_first = next(iter(train(config, None)))
    assert [e.phase for e in gpu] == ["train"] * 3 + ["done"]
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in gpu[:3])
    assert gpu[0].loss == pytest.approx(cpu_first.loss, rel=1e-4)


def test_network_forward_equals_cpu(target):
    device, context = target
    torch.manual_seed(0)
    model = build_model("APR_B", n_classes=6).train()
    batch = _batch(2, 1, seed=7)
    y_cpu = model(batch)
    with context():
        y = model.to(device)(batch.to(device))
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL gives each process its own)")
def test_two_gpu_processes_equal_one(tmp_path):
    """Data parallel over NCCL: 2 GPU processes take the steps of 1 GPU process (weights within 1e-4)."""
    config = TrainConfig(model="APR_B", steps=5, batch_size=7, size=64, width=0.25, bn_batches=2, seed=1)
    one = run_training(config, tmp_path / "one", device="cuda")
    two = run_training(config, tmp_path / "two", device="cuda", nproc=2)
    _assert_same_weights(load_checkpoint(one.checkpoint)["state_dict"], load_checkpoint(two.checkpoint)["state_dict"])
