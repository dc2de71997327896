"""The network registry: model names, their parsed form (:class:`ModelSpec`) and the builders.

A name is ``<kind>_<architecture>[-<variant>]`` (``"APR_B"``, ``"Pix_A-expanded"``,
``"APR_UNet"``); :func:`parse_model_name` turns it into a :class:`ModelSpec`
once, and :func:`build_model` takes either. Two families: the thesis
classifiers (:mod:`napari_aprnet.models.classifiers`, architectures ``A``,
``B``, ``C``) and the segmentation U-Nets (:mod:`napari_aprnet.models.unet`,
architecture ``UNet``). A new family registers its architectures and
variants here and adds its module beside them.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from napari_aprnet.models.classifiers import ARCHITECTURES, ClassifierNet, build_classifier
from napari_aprnet.models.unet import UNET_LEVEL_KERNELS, UNet, build_unet

__all__ = ["MODEL_NAMES", "UNET_NAMES", "ModelSpec", "build_model", "conv_weight_count", "model_from_config",
           "parse_model_name"]

UNET = "UNet"  # the architecture name of the U-Nets
MODEL_NAMES = tuple(f"{kind}_{a}" for a in ARCHITECTURES for kind in ("APR", "Pix"))  # the classifiers
UNET_NAMES = (f"APR_{UNET}", f"Pix_{UNET}")  # the segmentation networks
_VARIANTS = {("APR", "classifier"): (None, "same", "close"), ("Pix", "classifier"): (None, "expanded"),
             ("APR", "unet"): tuple(UNET_LEVEL_KERNELS), ("Pix", "unet"): (None,)}
_UNET_DEFAULTS = {"n_classes": 2, "in_channels": 1, "depth": 3, "width": 16}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed, checked model name.

    Attributes
    ----------
    kind : {"APR", "Pix"}
        APR network or pixel CNN.
    arch : str
        Architecture: a key of :data:`~napari_aprnet.models.classifiers.ARCHITECTURES`
        (classifiers) or ``"UNet"``.
    variant : str or None
        ``"same"``, ``"close"`` (APR) or ``"expanded"`` (pixels); U-Nets: ``"same"`` (APR).
    """

    kind: str
    arch: str
    variant: str | None = None

    @property
    def base_name(self) -> str:
        """The name without the variant, e.g. ``"APR_B"``."""
        return f"{self.kind}_{self.arch}"

    @property
    def family(self) -> str:
        """``"classifier"`` (one label per image) or ``"unet"`` (one label per particle or pixel)."""
        return "unet" if self.arch == UNET else "classifier"

    @property
    def mode(self) -> str:
        """The network input: ``"apr"`` or ``"pixels"``."""
        return "apr" if self.kind == "APR" else "pixels"

    @property
    def image_channels(self) -> int:
        """Channels of the images the architecture was designed for (1 grey, 3 RGB)."""
        if self.family == "unet":
            return _UNET_DEFAULTS["in_channels"]
        return ARCHITECTURES[self.arch].in_channels_pixels

    @property
    def default_in_channels(self) -> int:
        """Network input channels by default (APR_C: RGB plus the particle level)."""
        if self.family == "unet":
            return _UNET_DEFAULTS["in_channels"]
        a = ARCHITECTURES[self.arch]
        return a.in_channels_apr if self.kind == "APR" else a.in_channels_pixels


def parse_model_name(name: str, variant: str | None = None) -> ModelSpec:
    """Parse ``"APR_A-same"`` into ``ModelSpec("APR", "A", "same")`` and check it.

    Raises
    ------
    ValueError
        For unknown names or variants, listing the valid ones.
    """
    base, _, suffix = name.partition("-")
    if suffix:
        if variant is not None and variant != suffix:
            raise ValueError(f"model {name!r} conflicts with variant {variant!r}")
        variant = suffix
    kind, _, arch = base.partition("_")
    if kind not in ("APR", "Pix") or (arch not in ARCHITECTURES and arch != UNET):
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES + UNET_NAMES)} "
                         f"(APR variants: -same, -close; pixel variant: -expanded; APR_UNet: -same)")
    spec = ModelSpec(kind, arch)
    allowed = _VARIANTS[(kind, spec.family)]
    if variant not in allowed:
        names = ", ".join(v for v in allowed if v) or "none"
        raise ValueError(f"unknown variant {variant!r} for {spec.base_name}; variants: {names}")
    return ModelSpec(kind, arch, variant)


def build_model(name: str | ModelSpec, n_classes: int | None = None, variant: str | None = None,
                in_channels: int | None = None, *, width: float | int | None = None, dropout: float = 0.0,
                spatial_dropout: float = 0.0, ndim: int = 2, depth: int | None = None) -> ClassifierNet | UNet:
    """Build a network by name.

    Parameters
    ----------
    name : str or ModelSpec
        ``APR_A``, ``Pix_A``, ``APR_B``, ``Pix_B``, ``APR_C``, ``Pix_C`` (thesis
        classifiers) or ``APR_UNet``, ``Pix_UNet`` (segmentation), optionally
        with ``-variant`` appended; or the parsed :class:`ModelSpec`.
    n_classes : int, optional
        Output classes (default 6 for A/B, 2 for C and the U-Nets).
    variant : {None, "same", "close", "expanded"}
        See :mod:`napari_aprnet.models.classifiers`; ``APR_UNet-same`` has one
        kernel per convolution instead of two level kernels.
    in_channels : int, optional
        Network input channels (default 1 for A/B and the U-Nets; 3 for Pix_C, 4 for APR_C).
    width : float or int, optional
        Classifiers: multiplier of every channel count except the output
        (default 1.0, for small test nets). U-Nets: channels of the first
        stage, doubled at every pooling (default 16).
    dropout : float
        Classifiers: dropout probability between the 1x1 convolutions (thesis 4.1.3.4: 0.5).
    spatial_dropout : float
        Classifiers: feature-map dropout probability after the last pooling (thesis: 0.3).
    ndim : int
        U-Nets: 2 or 3 spatial dimensions (classifiers are 2D).
    depth : int, optional
        U-Nets: number of poolings (default 3).
    """
    spec = name if isinstance(name, ModelSpec) else parse_model_name(name, variant)
    if spec.family == "unet":
        if dropout or spatial_dropout:
            raise ValueError("the U-Nets have no dropout; leave dropout and spatial_dropout at 0")
        d = _UNET_DEFAULTS
        return build_unet(spec.kind, spec.variant, d["n_classes"] if n_classes is None else n_classes,
                          d["in_channels"] if in_channels is None else in_channels, ndim,
                          d["depth"] if depth is None else depth, d["width"] if width is None else width)
    if ndim != 2 or depth is not None:
        raise ValueError(f"{spec.base_name} is a 2D classifier: ndim and depth apply to the U-Nets only")
    return build_classifier(spec.kind, spec.arch, spec.variant, n_classes, in_channels,
                            width=1.0 if width is None else width, dropout=dropout, spatial_dropout=spatial_dropout)


def model_from_config(config: dict) -> ClassifierNet | UNet:
    """Rebuild a network from its ``config`` dict."""
    config = dict(config)
    try:
        name = config.pop("name")
    except KeyError:
        raise ValueError("model config has no 'name'") from None
    return build_model(name, **config)


def conv_weight_count(model: nn.Module) -> int:
    """Number of convolution weights (the thesis' '#parameters'): every parameter with 2+ dimensions."""
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)
