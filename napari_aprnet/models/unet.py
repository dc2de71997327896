"""U-Nets for segmentation: ``APR_UNet`` on particles and its pixel twin ``Pix_UNet``.

Architecture (a standard U-Net with "same" padding and batch normalisation)
---------------------------------------------------------------------------
Encoder stage ``s = 0 .. depth`` has ``width * 2**s`` channels and two blocks
[3x3 (3x3x3) convolution without bias -> batch norm -> ReLU]; a 2x max pooling
precedes every stage but the first. Decoder stage ``s = depth - 1 .. 0``
upsamples the deeper features to stage ``s``, concatenates
``[skip | upsampled]`` and applies two blocks with ``width * 2**s`` channels.
A 1x1 convolution with bias gives the ``n_classes`` logits.

``APR_UNet`` uses :class:`~napari_aprnet.nn.APRConv`, ``APRBatchNorm``,
``APRReLU``, ``APRMaxPool``, ``APRUpsample`` and ``APRConcat``. It takes an
:class:`~napari_aprnet.nn.APRBatch` (the image channels, plus the particle
level channel when the input specification adds it, as for the classifiers)
and returns the logits of every particle as a tensor ``(N_total, n_classes)``
in the batch's particle order. Its convolutions have two level kernels by
default (``n_level_kernels = 2``): kernel 0 for the particles at their
structure's finest level (the pixel-size particles at edges), kernel 1 shared
by all coarser particles, whose stencils span a wider, smoother area. This is
the thesis' level-specific kernels (B networks) at twice the pixel twin's
weights, rather than one kernel per level; the ``-same`` variant has one.

``Pix_UNet`` uses ``ConvNd`` with padding ``k // 2``, ``MaxPoolNd(2,
ceil_mode=True)`` and nearest upsampling by 2 cropped to the skip's size, and
maps ``(B, C, *spatial)`` to ``(B, n_classes, *spatial)``. On an all-pixel APR
with the same weights both nets compute the same function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_aprnet import nn as aprnn

__all__ = ["UNet", "build_unet", "UNET_LEVEL_KERNELS"]

UNET_LEVEL_KERNELS = {None: 2, "same": 1}  # APR_UNet variant -> level kernels per convolution


class _PixelUpsample(nn.Module):
    """Nearest-neighbour upsampling by 2, cropped to the skip connection's size."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return up[(slice(None), slice(None)) + tuple(slice(0, n) for n in skip.shape[2:])]


class _PixelConcat(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


def _pixel_layers(ndim: int) -> dict:
    conv, bn, pool = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if ndim == 2 else
                      (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d))
    return {"conv": lambda i, o, k, bias: conv(i, o, k, padding=k // 2, bias=bias), "bn": bn, "relu": nn.ReLU,
            "pool": lambda: pool(2, ceil_mode=True), "up": _PixelUpsample, "cat": _PixelConcat}


def _apr_layers(ndim: int, n_level_kernels: int) -> dict:
    return {"conv": lambda i, o, k, bias: aprnn.APRConv(i, o, k, n_level_kernels=n_level_kernels if k > 1 else 1,
                                                        bias=bias, ndim=ndim),
            "bn": aprnn.APRBatchNorm, "relu": aprnn.APRReLU, "pool": aprnn.APRMaxPool, "up": aprnn.APRUpsample,
            "cat": aprnn.APRConcat}


def _stage(L: dict, c_in: int, c_out: int) -> nn.Sequential:
    """Two blocks [3x3 convolution -> batch norm -> ReLU]."""
    return nn.Sequential(L["conv"](c_in, c_out, 3, False), L["bn"](c_out), L["relu"](),
                         L["conv"](c_out, c_out, 3, False), L["bn"](c_out), L["relu"]())


class UNet(nn.Module):
    """A U-Net on APRs or pixels (see the module docstring); build with :func:`build_unet`.

    Attributes
    ----------
    config : dict
        Plain-data arguments of :func:`napari_aprnet.models.build_model`;
        ``model_from_config(config)`` rebuilds the net.
    mode : {"apr", "pixels"}
        Input type: :class:`~napari_aprnet.nn.APRBatch` or ``(B, C, *spatial)`` tensors.
    encoders, decoders : nn.ModuleList
        Stages from fine to coarse, and from coarse to fine.
    """

    def __init__(self, encoders: list, decoders: list, layers: dict, head: nn.Module, mode: str, config: dict):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.pool, self.up, self.cat = layers["pool"](), layers["up"](), layers["cat"]()
        self.head = head
        self.mode = mode
        self.config = dict(config)

    @property
    def depth(self) -> int:
        """Number of poolings."""
        return len(self.decoders)

    def _check_input(self, x) -> None:
        if self.mode == "pixels":
            return
        if not isinstance(x, aprnn.APRBatch):
            raise TypeError(f"APR_UNet takes an APRBatch, got {type(x).__name__}; build one with "
                            "APRBatch.from_aprs(aprs)")
        small = min(s.level_max for s in x.structures)
        if small < self.depth:
            raise ValueError(f"APR_UNet of depth {self.depth} pools {self.depth} times, but an APR of the batch has "
                             f"level_max {small} (longest side <= {2 ** small} pixels); use larger images or a "
                             "smaller depth")

    def forward(self, x):
        """Per-particle logits ``(N_total, n_classes)`` (APR) or ``(B, n_classes, *spatial)`` (pixels)."""
        self._check_input(x)
        skips = []
        for i, stage in enumerate(self.encoders):
            if i:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)
        skips.pop()  # the bottleneck is no skip connection
        for stage in self.decoders:
            skip = skips.pop()
            x = stage(self.cat(skip, self.up(x, skip)))
        out = self.head(x)
        return out.features if self.mode == "apr" else out


def build_unet(kind: str, variant: str | None, n_classes: int, in_channels: int, ndim: int, depth: int,
               width: int) -> UNet:
    """Build ``APR_UNet`` (``kind="APR"``) or ``Pix_UNet`` (``kind="Pix"``).

    The arguments are those of :func:`napari_aprnet.models.build_model` with the
    name parsed; ``width`` is the channel count of the first stage.
    """
    for value, what, low in ((n_classes, "n_classes", 2), (in_channels, "in_channels", 1), (depth, "depth", 1),
                             (width, "width", 1)):
        if int(value) != value or value < low:
            raise ValueError(f"U-Net {what} must be an integer >= {low}, got {value}")
    if ndim not in (2, 3):
        raise ValueError(f"U-Nets are 2D or 3D (ndim 2 or 3), got ndim={ndim}")
    if depth > 10:
        raise ValueError(f"U-Net depth must be <= 10 (each stage pools 2x), got {depth}")
    n_classes, in_channels, depth, width = int(n_classes), int(in_channels), int(depth), int(width)
    mode = "apr" if kind == "APR" else "pixels"
    L = _apr_layers(ndim, UNET_LEVEL_KERNELS[variant]) if kind == "APR" else _pixel_layers(ndim)
    channels = [width * 2 ** s for s in range(depth + 1)]
    encoders = [_stage(L, c_in, c) for c_in, c in zip([in_channels] + channels[:-1], channels)]
    decoders = [_stage(L, channels[s] + channels[s + 1], channels[s]) for s in range(depth - 1, -1, -1)]
    head = L["conv"](channels[0], n_classes, 1, True)
    config = {"name": f"{kind}_UNet", "variant": variant, "n_classes": n_classes, "in_channels": in_channels,
              "ndim": int(ndim), "depth": depth, "width": width}
    return UNet(encoders, decoders, L, head, mode, config)
