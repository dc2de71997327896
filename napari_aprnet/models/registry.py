"""The network registry: model names, their parsed form (:class:`ModelSpec`) and the builders.

A name is ``<kind>_<architecture>[-<variant>]`` (``"APR_B"``, ``"Pix_A-expanded"``);
:func:`parse_model_name` turns it into a :class:`ModelSpec` once, and
:func:`build_model` takes either. A new network family registers its
architectures and variants here and adds its module next to
:mod:`napari_aprnet.models.classifiers`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from napari_aprnet.models.classifiers import ARCHITECTURES, ClassifierNet, build_classifier

__all__ = ["MODEL_NAMES", "ModelSpec", "build_model", "conv_weight_count", "model_from_config",
           "parse_model_name"]

MODEL_NAMES = tuple(f"{kind}_{a}" for a in ARCHITECTURES for kind in ("APR", "Pix"))
_VARIANTS = {"APR": (None, "same", "close"), "Pix": (None, "expanded")}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed, checked model name.

    Attributes
    ----------
    kind : {"APR", "Pix"}
        APR network or pixel CNN.
    arch : str
        Architecture (a key of :data:`~napari_aprnet.models.classifiers.ARCHITECTURES`).
    variant : str or None
        ``"same"``, ``"close"`` (APR) or ``"expanded"`` (pixels).
    """

    kind: str
    arch: str
    variant: str | None = None

    @property
    def base_name(self) -> str:
        """The name without the variant, e.g. ``"APR_B"``."""
        return f"{self.kind}_{self.arch}"

    @property
    def mode(self) -> str:
        """The network input: ``"apr"`` or ``"pixels"``."""
        return "apr" if self.kind == "APR" else "pixels"

    @property
    def image_channels(self) -> int:
        """Channels of the images the architecture was designed for (1 grey, 3 RGB)."""
        return ARCHITECTURES[self.arch].in_channels_pixels

    @property
    def default_in_channels(self) -> int:
        """Network input channels by default (APR_C: RGB plus the particle level)."""
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
    if kind not in _VARIANTS or arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} "
                         f"(APR variants: -same, -close; pixel variant: -expanded)")
    if variant not in _VARIANTS[kind]:
        allowed = ", ".join(v for v in _VARIANTS[kind] if v)
        raise ValueError(f"unknown variant {variant!r} for {kind} networks; choose one of: {allowed}")
    return ModelSpec(kind, arch, variant)


def build_model(name: str | ModelSpec, n_classes: int | None = None, variant: str | None = None,
                in_channels: int | None = None, *, width: float = 1.0, dropout: float = 0.0,
                spatial_dropout: float = 0.0) -> ClassifierNet:
    """Build a thesis network.

    Parameters
    ----------
    name : str or ModelSpec
        ``APR_A``, ``Pix_A``, ``APR_B``, ``Pix_B``, ``APR_C`` or ``Pix_C``,
        optionally with ``-variant`` appended; or the parsed :class:`ModelSpec`.
    n_classes : int, optional
        Output classes (default 6 for A/B, 2 for C).
    variant : {None, "same", "close", "expanded"}
        See :mod:`napari_aprnet.models.classifiers`.
    in_channels : int, optional
        Network input channels (default 1 for A/B; 3 for Pix_C, 4 for APR_C).
    width : float
        Multiplier of every channel count except the output (for small test nets).
    dropout : float
        Dropout probability between the 1x1 convolutions (thesis 4.1.3.4: 0.5).
    spatial_dropout : float
        Feature-map dropout probability after the last pooling (thesis: 0.3).
    """
    spec = name if isinstance(name, ModelSpec) else parse_model_name(name, variant)
    return build_classifier(spec.kind, spec.arch, spec.variant, n_classes, in_channels, width=width,
                            dropout=dropout, spatial_dropout=spatial_dropout)


def model_from_config(config: dict) -> ClassifierNet:
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
