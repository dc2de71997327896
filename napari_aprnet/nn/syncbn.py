"""Batch normalisation over the global batch of all processes of a ``torch.distributed`` group.

When a network is trained by several processes, each holding a share of the
batch, batch norm must use the statistics of the whole batch so that the run
equals one process with the same batch. :func:`sync_batch_norm` does this for
any tensor with channels on dim 1 (APR particle features ``(N, C)``, pixel maps
``(B, C, H, W)``):

- forward: every process reduces its share to ``(count, sum, sum of squares)``
  per channel (from its local mean and variance, in float64, so the
  subtraction ``E[x^2] - mean^2`` loses no precision); one ``all_reduce`` gives
  the global mean and biased variance, which normalise; the running
  statistics get the unbiased global variance (``n / (n - 1)``, ``n`` the
  global count), as ``torch.nn.BatchNorm`` on the concatenated batch.
- backward: the gradient through the global mean and variance needs the sums
  ``sum(dy)`` and ``sum(dy * x_hat)`` over the whole batch (one more
  ``all_reduce``); the weight and bias gradients stay local: the training
  loop sums parameter gradients over the processes.

Processes may hold different numbers of particles (or images): the counts
are reduced with the sums. Every process must call with a non-empty share.

:class:`~napari_aprnet.nn.modules.APRBatchNorm` uses this whenever it trains
inside an initialised process group of more than one process; pixel networks
get :class:`SyncPixelBatchNorm` from :func:`convert_sync_batchnorm`
(``torch.nn.SyncBatchNorm`` refuses CPU tensors, so gloo runs could not use it).
Without a process group both run the plain ``torch.nn.BatchNorm`` code.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["sync_group", "sync_batch_norm", "SyncPixelBatchNorm", "convert_sync_batchnorm"]


def sync_group(bn: _BatchNorm):
    """The process group ``bn`` synchronises over now, or None (eval mode, no group, or one process)."""
    if not bn.training or not dist.is_available() or not dist.is_initialized():
        return None
    group = getattr(bn, "process_group", None) or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _channel_view(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """The dims reduced over (all but dim 1) and the shape broadcasting a per-channel vector against ``x``."""
    return [d for d in range(x.dim()) if d != 1], [1, x.shape[1]] + [1] * (x.dim() - 2)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, group):
        dims, shape = _channel_view(x)
        c = x.shape[1]
        n_local = x.numel() // c
        if n_local == 0:
            raise ValueError("synchronised batch norm got an empty share of the batch; every process needs "
                             "at least one image")
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)
        m64, v64 = mean.double(), var.double()
        stats = torch.cat([m64 * n_local, (v64 + m64 * m64) * n_local, m64.new_full((1,), float(n_local))])
        dist.all_reduce(stats, group=group)
        n = float(stats[-1])
        g_mean = stats[:c] / n
        g_var = (stats[c:2 * c] / n - g_mean * g_mean).clamp_min(0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - factor).add_(g_mean.to(running_mean.dtype), alpha=factor)
                unbiased = g_var * (n / max(n - 1, 1))
                running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)
        invstd = torch.rsqrt(g_var + eps).to(x.dtype)
        x_hat = (x - g_mean.to(x.dtype).view(shape)) * invstd.view(shape)
        y = x_hat if weight is None else x_hat * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.n, ctx.group = n, group
        return y

    @staticmethod
    def backward(ctx, dy):
        x_hat, weight, invstd = ctx.saved_tensors
        dims, shape = _channel_view(dy)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            c = dy.shape[1]
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            mean_dy, mean_dy_xhat = both[:c] / ctx.n, both[c:] / ctx.n
            scale = invstd if weight is None else invstd * weight
            gx = (dy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale.view(shape)
        if weight is not None and ctx.needs_input_grad[1]:
            gw = sum_dy_xhat
        if ctx.needs_input_grad[2]:
            gb = sum_dy
        return gx, gw, gb, None, None, None, None, None


def sync_batch_norm(bn: _BatchNorm, x: torch.Tensor, group) -> torch.Tensor:
    """``bn`` (training mode) applied to ``x`` with the statistics of the whole batch of ``group``.

    Updates ``bn``'s running statistics and ``num_batches_tracked`` like ``bn.forward``.
    """
    factor = 0.0
    running_mean = running_var = None
    if bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        running_mean, running_var = bn.running_mean, bn.running_var
    return _SyncBatchNormFunction.apply(x, bn.weight, bn.bias, running_mean, running_var, factor, bn.eps, group)


class SyncPixelBatchNorm(_BatchNorm):
    """Batch norm of ``(B, C, ...)`` tensors over the global batch while a process group trains.

    Without a process group (or in eval mode) it is ``torch.nn.BatchNorm2d``'s
    computation. Made by :func:`convert_sync_batchnorm`; the state dict keys
    are those of the batch norm it replaces.
    """

    process_group = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) tensor, got {x.dim()}D input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = sync_group(self)
        if group is None:
            return super().forward(x)
        self._check_input_dim(x)
        return sync_batch_norm(self, x, group)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace the ``torch.nn.BatchNorm1d/2d/3d`` layers of ``module`` by :class:`SyncPixelBatchNorm` (in place).

    Weights, running statistics and train/eval mode carry over; APR batch
    norms synchronise by themselves and are left alone. Returns ``module``
    (or its replacement when ``module`` itself is a batch norm).
    """
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):  # not subclasses (APRBatchNorm)
        new = SyncPixelBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        ref = next((t for t in module.state_dict().values() if t.is_floating_point()), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
