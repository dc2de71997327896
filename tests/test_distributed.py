"""Data-parallel training: N processes (loopback gloo) equal one process; synchronised batch norm; failures.

The multi-process tests spawn two local processes each (a few seconds: the
new processes import torch).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import random_structure

from napari_aprnet.cli.main import main as cli_main
from napari_aprnet.nn import APRBatch, APRBatchNorm, SyncPixelBatchNorm, convert_sync_batchnorm
from napari_aprnet.nn.syncbn import _SyncBatchNormFunction
from napari_aprnet.training import TrainConfig, run_training, train
from napari_aprnet.training.checkpoint import load_checkpoint
from napari_aprnet.training.distributed import Group, split_bounds
from napari_aprnet.training.launcher import DistributedError, launch

RTOL = 1e-4  # the bound: weights after 5 steps equal within 1e-4 relative


def _assert_same_weights(a: dict, b: dict) -> None:
    """Every tensor of state dict ``b`` equals ``a``'s within RTOL relative (in norm); counters exactly."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].double(), b[k].double()
        if not a[k].is_floating_point():
            assert torch.equal(x, y), k
            continue
        assert float((x - y).norm()) <= RTOL * float(x.norm()) + 1e-12, (k, float((x - y).norm() / x.norm()))


def _small(model: str, **kw) -> TrainConfig:
    return TrainConfig(**{"model": model, "steps": 5, "size": 64, "width": 0.25, "bn_batches": 2, **kw})


def test_split_bounds_cover_the_batch_in_order():
    for n in range(1, 12):
        for world in range(1, 5):
            bounds = [split_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_shard_refuses_a_batch_smaller_than_the_processes():
    g = object.__new__(Group)  # only the sharding logic: no process group needed
    g.rank, g.world_size = 1, 3
    assert g.shard([[0, 1, 2, 3, 4, 5, 6]]) == [[2, 3]]
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        g.shard([list(range(7)), [7, 8]])
    # evaluation: a rank may get nothing (split_bounds(2, r, 3): r0 nothing, r1 [7], r2 [8])
    assert g.shard([[7, 8]], allow_empty=True) == [[7]]
    g.rank = 0
    assert g.shard([[7, 8], [9, 10, 11]], allow_empty=True) == [[9]]


def test_two_processes_equal_one_apr(tmp_path):
    """APR_B, 5 steps, global batch 7 (shares 3 and 4 images): the weights of 2 processes equal 1 process's."""
    config = _small("APR_B", batch_size=7, seed=1)
    one = run_training(config, tmp_path / "one")
    events = list(train(config, tmp_path / "two", nproc=2))
    two = events[-1]
    assert [e.phase for e in events] == ["train"] * 5 + ["done"]
    assert all(e.comm_time > 0 for e in events[:5])
    # rank 0 alone writes: one log row per step, no other files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoint.pt", "log.csv"]
    assert [int(r["step"]) for r in _log_rows(tmp_path / "two")] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([e.loss for e in events[:5]],  # the loss of the whole global batch
                               [float(r["loss"]) for r in _log_rows(tmp_path / "one")], rtol=1e-4)
    _assert_same_weights(load_checkpoint(one.checkpoint)["state_dict"],
                         load_checkpoint(two.checkpoint)["state_dict"])


def _log_rows(run_dir):
    import csv
    with open(run_dir / "log.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["phase"] == "train"]


def test_pixel_net_stopped_and_resumed_from_the_cli_equals_one_process(tmp_path):
    """Pix_B with 2 processes: stopped mid-run (all ranks at the same step), resumed by
    ``aprnet train --resume --nproc 2``; the final weights equal one uninterrupted process."""
    config = _small("Pix_B", batch_size=6, seed=0)
    one = run_training(config, tmp_path / "one")
    seen = []
    for ev in train(config, tmp_path / "two", nproc=2, stop=lambda: len(seen) >= 2):
        seen.append(ev)
    assert seen[-1].phase == "stopped" and seen[-1].step < 5
    stored = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert stored["train"]["step"] == seen[-1].step
    assert cli_main(["train", "--out", str(tmp_path / "two"), "--resume", "--nproc", "2"]) == 0
    rows = _log_rows(tmp_path / "two")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    _assert_same_weights(load_checkpoint(one.checkpoint)["state_dict"],
                         load_checkpoint(tmp_path / "two" / "checkpoint.pt")["state_dict"])


# ----- synchronised batch norm -------------------------------------------------------------------

def _bn_case(seed: int = 0):
    """Two APRs of different particle counts (APRBatch features) and three pixel maps, with loss weights."""
    gen = torch.Generator().manual_seed(seed)
    structures = [random_structure((13, 11), seed=1), random_structure((20, 17), seed=2)]
    n = sum(s.n_particles for s in structures)
    apr_x = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 2 + 1
    pix_x = torch.randn(3, 3, 5, 4, generator=gen, dtype=torch.float64) - 2
    return structures, apr_x, torch.randn(n, 3, generator=gen, dtype=torch.float64), pix_x, \
        torch.randn(3, 3, 5, 4, generator=gen, dtype=torch.float64)


def _bn_modules(momentum):
    torch.manual_seed(5)
    apr = APRBatchNorm(3, momentum=momentum).double()
    pix = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    for m in (apr, pix):
        torch.nn.init.uniform_(m.weight, 0.5, 1.5)
        torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    return apr, pix


def _bn_run(apr, pix, structures, apr_x, apr_r, pix_x, pix_r):
    """Two training forward passes and one backward: outputs, gradients and running statistics."""
    xa, xp = apr_x.clone().requires_grad_(), pix_x.clone().requires_grad_()
    apr(APRBatch(apr_x, structures))  # a first pass moves the running statistics
    pix(pix_x)
    ya = apr(APRBatch(xa, structures)).features
    yp = pix(xp)
    ((ya * apr_r).sum() + (yp * pix_r).sum()).backward()
    out = {"apr_y": ya, "pix_y": yp, "apr_gx": xa.grad, "pix_gx": xp.grad}
    for name, m in (("apr", apr), ("pix", pix)):
        out.update({f"{name}_gw": m.weight.grad, f"{name}_gb": m.bias.grad, f"{name}_mean": m.running_mean,
                    f"{name}_var": m.running_var})
    return {k: v.detach().clone() for k, v in out.items()}


def _bn_body(group, momentum):
    """Rank r: the r-th APR of the batch and pixel maps [r:...] (shares of different sizes)."""
    structures, apr_x, apr_r, pix_x, pix_r = _bn_case()
    apr, pix = _bn_modules(momentum)
    pix = convert_sync_batchnorm(pix)
    assert isinstance(pix, SyncPixelBatchNorm)
    counts = [s.n_particles for s in structures]
    a, b = (0, counts[0]) if group.rank == 0 else (counts[0], sum(counts))
    p, q = (0, 1) if group.rank == 0 else (1, 3)
    mine = _bn_run(apr, pix, structures[group.rank:group.rank + 1], apr_x[a:b], apr_r[a:b], pix_x[p:q],
                   pix_r[p:q])
    gathered = [None, None]
    dist.all_gather_object(gathered, mine)
    yield gathered


@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_batchnorm_two_processes_equal_concatenated_batch(momentum):
    """Outputs, input gradients, summed weight gradients and running statistics equal one batch norm on the
    concatenated batch (float64)."""
    structures, apr_x, apr_r, pix_x, pix_r = _bn_case()
    ref = _bn_run(*_bn_modules(momentum), structures, apr_x, apr_r, pix_x, pix_r)
    (ranks,) = list(launch(_bn_body, (momentum,), 2))
    for key in ("apr_y", "apr_gx", "pix_y", "pix_gx"):
        torch.testing.assert_close(torch.cat([ranks[0][key], ranks[1][key]]), ref[key], rtol=1e-10, atol=1e-12)
    for key in ("apr_gw", "apr_gb", "pix_gw", "pix_gb"):  # the loop sums parameter gradients over the ranks
        torch.testing.assert_close(ranks[0][key] + ranks[1][key], ref[key], rtol=1e-10, atol=1e-12)
    for key in ("apr_mean", "apr_var", "pix_mean", "pix_var"):
        torch.testing.assert_close(ranks[0][key], ref[key], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ranks[1][key], ref[key], rtol=1e-10, atol=1e-12)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_function_gradcheck(one_process_group):
    """The synchronised function (all-reduces over a one-process group) equals F.batch_norm and passes
    gradcheck in float64, for (N, C) features and (B, C, H, W) maps."""
    gen = torch.Generator().manual_seed(0)
    for shape in ((23, 3), (2, 3, 4, 5)):
        x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1).requires_grad_()
        w = torch.rand(3, generator=gen, dtype=torch.float64).add_(0.5).requires_grad_()
        b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        y = _SyncBatchNormFunction.apply(x, w, b, rm, rv, 0.1, 1e-5, one_process_group)
        rm_ref, rv_ref = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        ref = F.batch_norm(x, rm_ref, rv_ref, w, b, training=True, momentum=0.1, eps=1e-5)
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close((rm, rv), (rm_ref, rv_ref))
        assert torch.autograd.gradcheck(
            lambda x, w, b: _SyncBatchNormFunction.apply(x, w, b, None, None, 0.0, 1e-5, one_process_group),
            (x, w, b))


def test_batchnorm_without_group_is_the_plain_path():
    """No process group: APRBatchNorm is BatchNorm1d on the features, bit for bit."""
    assert not dist.is_initialized()
    structures, apr_x, *_ = _bn_case()
    bn, ref = APRBatchNorm(3).double(), torch.nn.BatchNorm1d(3).double()
    assert torch.equal(bn(APRBatch(apr_x, structures)).features, ref(apr_x))
    assert torch.equal(bn.running_var, ref.running_var)


# ----- failures -----------------------------------------------------------------------------------

def _dying_body(group):
    t = torch.ones(1)
    dist.all_reduce(t)
    if group.rank == 1:
        os._exit(3)  # dies without a word while rank 0 waits in the next all-reduce
    yield "started"
    dist.all_reduce(t)
    yield "unreachable"


def test_a_dying_process_stops_the_others(monkeypatch):
    monkeypatch.setenv("APRNET_DIST_TIMEOUT", "60")
    seen = []
    with pytest.raises(DistributedError, match=r"training process [01] of 2 failed"):
        for payload in launch(_dying_body, (), 2):
            seen.append(payload)
    assert "unreachable" not in seen


def test_an_error_in_a_process_keeps_its_type(tmp_path):
    """A user error raised by the processes (here: rank 0 finds a finished run in the folder) reaches the caller."""
    config = _small("APR_A", batch_size=4, steps=1)
    run_training(config, tmp_path)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        list(train(config, tmp_path, nproc=2))


def test_bad_process_counts():
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        list(train(_small("APR_A", batch_size=4), nproc=0))
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        list(train(_small("APR_A", batch_size=2), nproc=3))
