"""torch.nn modules that take and return :class:`APRBatch` objects."""
from __future__ import annotations

import math

import torch
from torch import nn

from napari_aprnet.nn.batch import APRBatch
from napari_aprnet.nn.functional import apr_concat, apr_conv, apr_max_pool, apr_upsample

__all__ = ["APRConv", "APRMaxPool", "APRUpsample", "APRConcat", "APRBatchNorm", "APRDropout", "APRSpatialDropout",
           "APRReLU", "APRGlobalAvgPool"]


def _check_batch(x) -> APRBatch:
    if not isinstance(x, APRBatch):
        raise TypeError(f"APR layers take an APRBatch, got {type(x).__name__}; build one with "
                        "APRBatch.from_aprs(aprs)")
    return x


class APRConv(nn.Module):
    """Convolution on APR particles (thesis eq. 3.3) with level-specific kernels.

    Parameters
    ----------
    in_channels, out_channels : int
        Feature channels.
    kernel_size : int
        Odd stencil size ``k`` (1 skips all reconstruction: a per-level matmul).
    n_level_kernels : int
        Number of kernels: particles at their structure's ``level_max`` use
        kernel 0, one level coarser kernel 1, ...; coarser levels share the last.
    bias : bool
        One bias per output channel.
    ndim : int
        2 or 3 spatial dimensions.

    Attributes
    ----------
    weight : Parameter, shape (n_level_kernels, out_channels, in_channels, k, k[, k])
        Cross-correlation orientation, as ``torch.nn.Conv2d`` (weight[j] is a
        Conv2d weight).
    bias : Parameter, shape (out_channels,) or None
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_level_kernels: int = 1,
                 bias: bool = True, ndim: int = 2):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if int(n_level_kernels) < 1:
            raise ValueError(f"n_level_kernels must be >= 1, got {n_level_kernels}")
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"channel counts must be >= 1, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.n_level_kernels, self.ndim = int(kernel_size), int(n_level_kernels), int(ndim)
        shape = (self.n_level_kernels, self.out_channels, self.in_channels) + (self.kernel_size,) * ndim
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform like torch's ConvNd, independently per level kernel."""
        for j in range(self.n_level_kernels):
            nn.init.kaiming_uniform_(self.weight.data[j], a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size ** self.ndim
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: APRBatch) -> APRBatch:
        x = _check_batch(x)
        if x.ndim != self.ndim:
            raise ValueError(f"APRConv(ndim={self.ndim}) got {x.ndim}D APRs")
        return apr_conv(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"n_level_kernels={self.n_level_kernels}, bias={self.bias is not None}, ndim={self.ndim}")


class APRMaxPool(nn.Module):
    """Max pooling of the finest-level particles into their parents (thesis 3.2.1)."""

    def forward(self, x: APRBatch) -> APRBatch:
        return apr_max_pool(_check_batch(x))


class APRUpsample(nn.Module):
    """The structural inverse of :class:`APRMaxPool`: ``forward(coarse, fine)`` (see
    :func:`~napari_aprnet.nn.functional.apr_upsample`)."""

    def forward(self, coarse: APRBatch, fine: APRBatch) -> APRBatch:
        return apr_upsample(coarse, fine)


class APRConcat(nn.Module):
    """Channel concatenation of two batches on the same structures: ``forward(a, b)`` is ``[a | b]``."""

    def forward(self, a: APRBatch, b: APRBatch) -> APRBatch:
        return apr_concat(a, b)


class APRBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over all particles of the batch (statistics per channel)."""

    def forward(self, x: APRBatch) -> APRBatch:  # type: ignore[override]
        x = _check_batch(x)
        return x.with_features(super().forward(x.features))


class APRReLU(nn.Module):
    """Elementwise ReLU of the particle features."""

    def forward(self, x: APRBatch) -> APRBatch:
        x = _check_batch(x)
        return x.with_features(torch.relu(x.features))


class APRDropout(nn.Dropout):
    """Elementwise dropout of particle features."""

    def forward(self, x: APRBatch) -> APRBatch:  # type: ignore[override]
        x = _check_batch(x)
        return x.with_features(super().forward(x.features))


class APRSpatialDropout(nn.Module):
    """Drops whole channels of each APR (like Dropout2d), scaling the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: APRBatch) -> APRBatch:
        x = _check_batch(x)
        if not self.training or self.p == 0.0:
            return x
        f = x.features
        if self.p == 1.0:
            return x.with_features(f * 0)
        keep = torch.empty((x.batch_size, f.shape[1]), device=f.device, dtype=f.dtype).bernoulli_(1 - self.p)
        counts = torch.as_tensor(x.offsets[1:] - x.offsets[:-1], device=f.device)
        mask = torch.repeat_interleave(keep / (1 - self.p), counts, dim=0)
        return x.with_features(f * mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class APRGlobalAvgPool(nn.Module):
    """Mean over each APR's particles; returns a (batch_size, C) tensor.

    Every particle counts once, whatever its size (as in the thesis networks).
    """

    def forward(self, x: APRBatch) -> torch.Tensor:
        x = _check_batch(x)
        f = x.features
        counts = torch.as_tensor(x.offsets[1:] - x.offsets[:-1], device=f.device)
        seg = torch.repeat_interleave(torch.arange(x.batch_size, device=f.device), counts)
        out = f.new_zeros((x.batch_size, f.shape[1])).index_add(0, seg, f)
        return out / counts.clamp_min(1).to(f.dtype)[:, None]
