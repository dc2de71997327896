"""The thesis networks (Tables 4.1 and 4.3) as APRNets and pixel CNNs.

Architectures
-------------
``A`` / ``B`` (Table 4.1, synthetic shapes, 1 input channel, 6 classes):
an 11x11 convolution followed by two (A) or four (B) 3x3 convolutions, each
with batch normalisation, ReLU and 2x2 max pooling, then two (A) or two (B)
1x1 convolutions (ReLU between) and global average pooling.

``C`` (Table 4.3, cats vs dogs, 2 classes): four 3x3 convolutions with BN,
ReLU, pooling, then two 1x1 convolutions. The APR version takes RGB plus
the particle level (4 channels).

Names are ``APR_A``, ``Pix_A``, ``APR_B``, ``Pix_B``, ``APR_C``, ``Pix_C``.
Variants: for APR nets ``"same"`` (one kernel shared by all levels: as many
weights as the pixel twin) and ``"close"`` (two level kernels in the first
layer, one after: +3872 weights for A and B); for pixel nets
``"expanded"`` (more channels in the spatial layers, to match the APR
net's weight count):

- ``Pix_A-expanded``: conv1-3 with 64 channels -> 83,712 weights (APR_A 85,088)
- ``Pix_B-expanded``: conv1-2 with 40, conv3-5 with 96 channels -> 226,216 (APR_B 226,592)
- ``Pix_C-expanded``: conv1-4 with 128 channels -> 462,464 (thesis Table 4.3)

(widths are multiples of 8 chosen to come closest to the APR count; the
thesis does not give the Table 4.1 expanded widths.)

Parameter counts in the thesis are convolution weights only; see
:func:`conv_weight_count`. Convolutions followed by batch normalisation have
no bias (it would be cancelled by BN); the 1x1 convolutions have one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_aprnet import nn as aprnn

__all__ = ["ARCHITECTURES", "ClassifierNet", "build_classifier"]


@dataclass(frozen=True)
class _Arch:
    convs: tuple[tuple[int, int, int], ...]  # (out channels, kernel size, APR level kernels)
    hidden: int  # width of the first 1x1 convolution
    n_classes: int
    in_channels_pixels: int
    in_channels_apr: int
    expanded: tuple[int, ...]  # widths of the spatial convs in the "expanded" pixel net


ARCHITECTURES: dict[str, _Arch] = {
    "A": _Arch(((32, 11, 5), (32, 3, 4), (32, 3, 3)), 32, 6, 1, 1, (64, 64, 64)),
    "B": _Arch(((32, 11, 5), (32, 3, 4), (64, 3, 3), (64, 3, 2), (64, 3, 1)), 64, 6, 1, 1, (40, 40, 96, 96, 96)),
    "C": _Arch(((32, 3, 4), (64, 3, 3), (128, 3, 2), (128, 3, 1)), 128, 2, 3, 4, (128, 128, 128, 128)),
}
def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class _PixelGAP(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ClassifierNet(nn.Module):
    """A sequence of named blocks (``conv1`` ... ``convN``) followed by global average pooling.

    Attributes
    ----------
    config : dict
        Plain-data arguments of :func:`build_model`; ``model_from_config(config)`` rebuilds the net.
    mode : {"apr", "pixels"}
        Input type: :class:`napari_aprnet.nn.APRBatch` or ``(B, C, H, W)`` tensors.
    blocks : nn.ModuleDict
        The layers in order; feature maps can be taken after any of them.
    """

    def __init__(self, blocks: dict[str, nn.Module], gap: nn.Module, mode: str, config: dict):
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.gap = gap
        self.mode = mode
        self.config = dict(config)

    def layer_names(self) -> list[str]:
        """Names of the blocks, in order."""
        return list(self.blocks.keys())

    def features(self, x, upto: str | int):
        """Output of block ``upto`` (name or index): an APRBatch or a (B, C, H, W) tensor."""
        names = self.layer_names()
        if isinstance(upto, int):
            if not -len(names) <= upto < len(names):
                raise IndexError(f"layer index {upto} out of range; the network has {len(names)} layers")
            upto = names[upto]
        if upto not in self.blocks:
            raise KeyError(f"unknown layer {upto!r}; layers are {names}")
        for name, block in self.blocks.items():
            x = block(x)
            if name == upto:
                return x
        raise AssertionError("unreachable")

    def forward(self, x) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.gap(x)


def _pixel_layers():
    return {"conv": lambda i, o, k, n, bias: nn.Conv2d(i, o, k, padding=k // 2, bias=bias),
            "bn": nn.BatchNorm2d, "relu": lambda: nn.ReLU(inplace=False),
            "pool": lambda: nn.MaxPool2d(2, 2), "dropout": nn.Dropout, "spatial_dropout": nn.Dropout2d,
            "gap": _PixelGAP}


def _apr_layers():
    return {"conv": lambda i, o, k, n, bias: aprnn.APRConv(i, o, k, n_level_kernels=n, bias=bias, ndim=2),
            "bn": aprnn.APRBatchNorm, "relu": aprnn.APRReLU, "pool": aprnn.APRMaxPool,
            "dropout": aprnn.APRDropout, "spatial_dropout": aprnn.APRSpatialDropout,
            "gap": aprnn.APRGlobalAvgPool}


def build_classifier(kind: str, arch_name: str, variant: str | None, n_classes: int | None = None,
                     in_channels: int | None = None, *, width: float = 1.0, dropout: float = 0.0,
                     spatial_dropout: float = 0.0) -> ClassifierNet:
    """Build the thesis network ``kind`` (``"APR"`` or ``"Pix"``), architecture ``arch_name``, ``variant``.

    The arguments are those of :func:`napari_aprnet.models.build_model`, with the
    name already parsed.
    """
    arch = ARCHITECTURES[arch_name]
    n_classes = arch.n_classes if n_classes is None else int(n_classes)
    if in_channels is None:
        in_channels = arch.in_channels_apr if kind == "APR" else arch.in_channels_pixels
    if n_classes < 2 or in_channels < 1 or width <= 0:
        raise ValueError(f"need n_classes >= 2, in_channels >= 1 and width > 0; got {n_classes}, "
                         f"{in_channels}, {width}")
    for p, what in ((dropout, "dropout"), (spatial_dropout, "spatial_dropout")):
        if not 0 <= p < 1:
            raise ValueError(f"{what} must be in [0, 1), got {p}")
    mode = "apr" if kind == "APR" else "pixels"
    L = _apr_layers() if kind == "APR" else _pixel_layers()

    convs = list(arch.convs)
    if variant == "expanded":
        convs = [(w, k, n) for w, (_, k, n) in zip(arch.expanded, convs)]
    if variant == "same":
        convs = [(o, k, 1) for o, k, _ in convs]
    elif variant == "close":
        convs = [(o, k, 2 if i == 0 else 1) for i, (o, k, _) in enumerate(convs)]

    blocks: dict[str, nn.Module] = {}
    c = int(in_channels)
    for i, (out, k, n_levels) in enumerate(convs):
        out = _scaled(out, width)
        # Pooling before ReLU gives the same values and gradients as the thesis'
        # BN -> ReLU -> pool (max commutes with a monotone function) on 4x fewer elements.
        layers = [L["conv"](c, out, k, n_levels if kind == "APR" else 1, False), L["bn"](out), L["pool"](),
                  L["relu"]()]
        if i == len(convs) - 1 and spatial_dropout > 0:
            layers.append(L["spatial_dropout"](spatial_dropout))
        blocks[f"conv{i + 1}"] = nn.Sequential(*layers)
        c = out
    hidden = _scaled(arch.hidden, width)
    layers = [L["conv"](c, hidden, 1, 1, True), L["relu"]()]
    if dropout > 0:
        layers.append(L["dropout"](dropout))
    blocks[f"conv{len(convs) + 1}"] = nn.Sequential(*layers)
    blocks[f"conv{len(convs) + 2}"] = nn.Sequential(L["conv"](hidden, n_classes, 1, 1, True))

    config = {"name": f"{kind}_{arch_name}", "variant": variant, "n_classes": n_classes,
              "in_channels": int(in_channels), "width": float(width), "dropout": float(dropout),
              "spatial_dropout": float(spatial_dropout)}
    return ClassifierNet(blocks, L["gap"](), mode, config)
