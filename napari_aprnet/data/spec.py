"""The network input specification: how an image becomes a network input (training and inference)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from napari_aprnet.apr import APR
from napari_aprnet.data.transforms import match_channels, resize_bilinear, to_float01
from napari_aprnet.nn import APRBatch
from napari_aprnet.params import APRParameters

__all__ = ["InputSpec", "MODES", "NORMALISATIONS"]

MODES = ("apr", "pixels")
NORMALISATIONS = ("image", "dataset")
_FLAT_STD = 1e-6  # images whose std is below this are flat: only their mean is removed


@dataclass
class InputSpec:
    """What a network takes as input and how images are turned into it.

    Parameters
    ----------
    mode : {"apr", "pixels"}
        APR networks take :class:`napari_aprnet.nn.APRBatch`, pixel networks
        ``(B, C, H, W)`` (or ``(B, C, D, H, W)``) tensors.
    size : int
        Images are resized (bilinear) to ``size x size`` (with ``resize``).
    channels : int
        Image channels: 1 (grey) or 3 (RGB; 2D only).
    rel_error : float
        APR relative error threshold E.
    apr_params : dict, optional
        Full :class:`napari_aprnet.params.APRParameters` as a dict
        (``rel_error`` above takes precedence).
    add_level_channel : bool
        APR only: append the particle level, normalised to [0, 1], as an
        extra input channel (thesis 4.2.3).
    mean, std : list of float
        Per-channel normalisation of pixel or particle values when
        ``normalisation`` is ``"dataset"`` (after APR formation, which sees
        the [0, 1] image).
    normalisation : {"image", "dataset"}
        ``"image"``: every image (and channel) is standardised to zero mean
        and unit variance on its own; for an APR the mean and variance are
        those of its piecewise-constant reconstruction (particle values
        weighted by the pixels of their cells), computed from the particles.
        This makes the input independent of brightness, contrast and offset,
        so a faint object is as visible to the first layer as a bright one.
        ``"dataset"``: the fixed ``mean``/``std`` above (checkpoints written
        before this option existed load as ``"dataset"``).
    ndim : {2, 3}
        Spatial dimensions of the images: 2, or 3 for grey stacks ``(z, y, x)``.
    resize : bool
        Resize images to ``size`` (classification: the network has a fixed
        input size). Segmentation networks are fully convolutional and take
        images at their own shape (False); ``size`` is then the side of the
        training images, for information.
    """

    mode: str = "apr"
    size: int = 256
    channels: int = 1
    rel_error: float = 0.1
    apr_params: dict | None = None
    add_level_channel: bool = False
    mean: list = field(default_factory=lambda: [0.5])
    std: list = field(default_factory=lambda: [0.2887])
    normalisation: str = "image"
    ndim: int = 2
    resize: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"input mode must be one of {MODES}, got {self.mode!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise ValueError(f"input size must be >= 8 pixels, got {self.size}")
        if not self.rel_error > 0:
            raise ValueError(f"rel_error must be > 0, got {self.rel_error}")
        self.mean = [float(m) for m in np.broadcast_to(np.asarray(self.mean, float), (self.channels,))]
        self.std = [float(s) for s in np.broadcast_to(np.asarray(self.std, float), (self.channels,))]
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.ndim not in (2, 3) or (self.ndim == 3 and (self.channels != 1 or self.resize)):
            raise ValueError(f"images are 2D, or 3D grey stacks that are not resized; got ndim={self.ndim}, "
                             f"channels={self.channels}, resize={self.resize}")

    @property
    def network_channels(self) -> int:
        """Input channels the network sees (image channels + level channel)."""
        return self.channels + int(self.mode == "apr" and self.add_level_channel)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown input specification fields: {sorted(unknown)}")
        return cls(**{"normalisation": "dataset", **d})

    def apr_key(self) -> str:
        """The part of the spec that determines an APR (for cache keys)."""
        return json.dumps({"rel_error": self.rel_error, "params": self.apr_params, "channels": self.channels},
                          sort_keys=True)

    # ----- per-image steps (run in worker processes) -------------------
    def prepare(self, image: np.ndarray, *, convert_channels: bool = True) -> np.ndarray:
        """Float32 image (integers scaled to [0, 1]) with the spec's channels, resized to ``size`` with ``resize``."""
        image = to_float01(image)
        if self.ndim == 3:
            if image.ndim != 3:
                raise ValueError(f"this network takes 3D grey stacks (z, y, x), got an array of shape {image.shape}")
            return image
        image = match_channels(image, self.channels, convert=convert_channels)
        return resize_bilinear(image, self.size) if self.resize else image

    def to_apr(self, image: np.ndarray, cancel: Callable[[], bool] | None = None):
        """APR of a prepared image (grey APR; colour channels resampled at the particles); ``cancel`` as in
        :meth:`APR.from_image`."""
        params = None
        if self.apr_params is not None:
            params = APRParameters.from_dict({**self.apr_params, "rel_error": self.rel_error})
        return APR.from_image(image, rel_error=self.rel_error, params=params,
                              channel_axis=-1 if image.ndim == self.ndim + 1 else None, cancel=cancel)

    def statistics(self, values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(mean, std)`` (float32) that :meth:`normalise` uses for these values.

        ``normalisation="dataset"``: the fixed ``mean`` and ``std``.
        ``"image"``: those of the values, weighted by ``weights`` (one per
        value, e.g. the pixels of each particle cell); a flat image gets std 1.
        """
        if self.normalisation == "dataset":
            return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        flat = np.asarray(values).reshape(-1, self.channels).astype(np.float64)
        w = None if weights is None else np.asarray(weights, np.float64).reshape(-1)
        mean = np.average(flat, axis=0, weights=w)
        std = np.sqrt(np.average((flat - mean) ** 2, axis=0, weights=w))
        std = np.where(std > _FLAT_STD, std, 1.0)
        return mean.astype(np.float32), std.astype(np.float32)

    def normalise(self, values: np.ndarray, weights: np.ndarray | None = None,
                  stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Normalise the channels-last values ``(..., C)`` or grey ``(...)`` of one image.

        ``weights`` as in :meth:`statistics`; ``stats`` gives the ``(mean,
        std)`` to use instead (e.g. those of a whole image, for one of its tiles).
        """
        values = np.asarray(values, np.float32)
        mean, std = self.statistics(values, weights) if stats is None else stats
        if self.channels == 1:
            return (values - mean[0]) / std[0]
        return (values - mean) / std

    def pixel_input(self, image: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``(C, H, W)`` (or ``(C, D, H, W)``) normalised array of a prepared image (``stats`` as in
        :meth:`normalise`)."""
        x = self.normalise(image, stats=stats)
        return x[None] if x.ndim == self.ndim else np.ascontiguousarray(np.moveaxis(x, -1, 0))

    # ----- batches (main process) ------------------------------------------
    def collate_inputs(self, items: Sequence[Any]):
        """Network input from per-image items (APRs or ``(C, H, W)`` arrays)."""
        if self.mode == "pixels":
            shapes = {item.shape for item in items}
            if len(shapes) > 1:
                raise ValueError(f"a batch of a pixel network holds images of one shape, got {sorted(shapes)}; "
                                 f"use batch size 1 or images of one size")
            return torch.from_numpy(np.stack(items))
        values = [self.normalise(apr.values, apr.structure.pixel_counts) for apr in items]
        return APRBatch.from_aprs(list(items), values=values, add_level_channel=self.add_level_channel)

    def make_input(self, images: Iterable[np.ndarray], *, convert_channels: bool = False):
        """Network input for raw images (prepare, convert, collate) in this process."""
        prepared = [self.prepare(im, convert_channels=convert_channels) for im in images]
        if self.mode == "pixels":
            return self.collate_inputs([self.pixel_input(im) for im in prepared])
        return self.collate_inputs([self.to_apr(im) for im in prepared])
