"""From images to network inputs: input specification, APR conversion, cache, batch loaders.

The network input is described by an :class:`InputSpec` (stored in every
checkpoint): pixels or APR, image size, channels, APR parameters,
normalisation. :func:`make_loader` returns a torch ``DataLoader`` whose
worker processes read/generate images, augment them and convert them to
APRs in parallel (thesis 4.2.4: APRs are computed from the transformed
images); the main process only concatenates the batch.

For fixed datasets without augmentation, converted APRs are kept in an
:class:`APRCache` keyed by a hash of the image and the APR parameters, so
epochs after the first do not convert again.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from napari_aprnet.apr import load_apr, save_apr
from napari_aprnet.data.transforms import augment, match_channels, resize_bilinear, to_float01
from napari_aprnet.io.apr_h5 import APRFileError

__all__ = ["InputSpec", "APRCache", "Batch", "make_loader", "stream_batches", "epoch_batches",
           "image_key", "estimate_normalisation"]

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
        ``(B, C, H, W)`` tensors.
    size : int
        Images are resized (bilinear) to ``size x size``.
    channels : int
        Image channels: 1 (grey) or 3 (RGB).
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
        """Float32 [0, 1] image with the spec's channels, resized to ``size``."""
        image = match_channels(to_float01(image), self.channels, convert=convert_channels)
        return resize_bilinear(image, self.size)

    def to_apr(self, image: np.ndarray):
        """APR of a prepared image (grey APR; colour channels resampled at the particles)."""
        from napari_aprnet import APR
        params = None
        if self.apr_params is not None:
            from napari_aprnet.params import APRParameters
            params = APRParameters.from_dict({**self.apr_params, "rel_error": self.rel_error})
        return APR.from_image(image, rel_error=self.rel_error, params=params,
                              channel_axis=-1 if image.ndim == 3 else None)

    def normalise(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Normalise the channels-last values ``(..., C)`` or grey ``(...)`` of one image.

        ``weights`` (one per value, e.g. the pixels of each particle cell)
        weight the per-image statistics of ``normalisation="image"``.
        """
        values = np.asarray(values, np.float32)
        if self.normalisation == "dataset":
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
        else:
            flat = values.reshape(-1, self.channels).astype(np.float64)
            w = None if weights is None else np.asarray(weights, np.float64).reshape(-1)
            mean = np.average(flat, axis=0, weights=w)
            std = np.sqrt(np.average((flat - mean) ** 2, axis=0, weights=w))
            std = np.where(std > _FLAT_STD, std, 1.0)
            mean, std = mean.astype(np.float32), std.astype(np.float32)
        if self.channels == 1:
            return (values - mean[0]) / std[0]
        return (values - mean) / std

    def pixel_input(self, image: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` normalised array of a prepared image."""
        x = self.normalise(image)
        return x[None] if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, -1, 0))

    # ----- batches (main process) ------------------------------------------
    def collate_inputs(self, items: Sequence[Any]):
        """Network input from per-image items (APRs or ``(C, H, W)`` arrays)."""
        if self.mode == "pixels":
            return torch.from_numpy(np.stack(items))
        from napari_aprnet.nn import APRBatch
        values = [self.normalise(apr.values, apr.structure.pixel_counts) for apr in items]
        return APRBatch.from_aprs(list(items), values=values, add_level_channel=self.add_level_channel)

    def make_input(self, images: Iterable[np.ndarray], *, convert_channels: bool = False):
        """Network input for raw images (prepare, convert, collate) in this process."""
        prepared = [self.prepare(im, convert_channels=convert_channels) for im in images]
        if self.mode == "pixels":
            return self.collate_inputs([self.pixel_input(im) for im in prepared])
        return self.collate_inputs([self.to_apr(im) for im in prepared])


def image_key(image: np.ndarray, spec: InputSpec) -> str:
    """Hash of an image's bytes, shape and dtype plus the APR parameters."""
    h = hashlib.sha1()
    a = np.ascontiguousarray(image)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
    h.update(spec.apr_key().encode())
    return h.hexdigest()


class APRCache:
    """Converted APRs keyed by :func:`image_key`.

    Held in memory (the main process adds every APR its workers converted;
    workers started for the next epoch inherit or receive the filled cache)
    and, with ``directory``, also on disk (one ``<key>.apr`` file per APR, in
    the validated :mod:`napari_aprnet.io.apr_h5` format, written atomically),
    which persists across runs. Files in the folder are data, never code: an
    entry that does not load as a valid ``.apr`` file is converted again.
    """

    _KEY = re.compile(r"[0-9a-f]{40}")  # a sha1 hex digest from image_key

    def __init__(self, directory: str | Path | None = None):
        self.memory: dict[str, Any] = {}
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.memory)

    def _path(self, key: str) -> Path:
        if not self._KEY.fullmatch(key):
            raise ValueError(f"APR cache keys are hex digests from image_key(), got {key!r}")
        return self.directory / f"{key}.apr"

    def get(self, key: str):
        apr = self.memory.get(key)
        if apr is None and self.directory is not None:
            path = self._path(key)
            if path.is_file():
                try:
                    apr = load_apr(path)
                except (OSError, APRFileError):
                    apr = None  # damaged entry: convert again
        return apr

    def put(self, key: str, apr) -> None:
        self.memory[key] = apr
        if self.directory is not None:
            path = self._path(key)
            if not path.exists():
                save_apr(apr, path)


@dataclass
class Batch:
    """One loaded batch: network ``inputs``, ``labels`` (B,) int64, ``n_converted`` APR conversions."""

    inputs: Any
    labels: torch.Tensor
    n_converted: int = 0
    new: list = field(default_factory=list)  # (key, apr) pairs converted in a worker

    def __len__(self) -> int:
        return len(self.labels)


class _ItemDataset(torch.utils.data.Dataset):
    """Per-image work done in worker processes: read/generate, prepare, augment, convert."""

    def __init__(self, source, spec: InputSpec, augment_seed: int | None, cache: APRCache | None):
        self.source, self.spec, self.augment_seed, self.cache = source, spec, augment_seed, cache
        self.epoch = 0

    def __len__(self):
        return len(self.source) if hasattr(self.source, "__len__") else 2**62

    def __getitem__(self, i):
        image, label = self.source[i] if not hasattr(self.source, "image") else self.source.image(i)
        image = self.spec.prepare(image)
        if self.augment_seed is not None:
            image = augment(image, np.random.default_rng([self.augment_seed, self.epoch, int(i)]))
        if self.spec.mode == "pixels":
            return self.spec.pixel_input(image), int(label), None, None
        key = None
        if self.cache is not None and self.augment_seed is None:
            key = image_key(image, self.spec)
            apr = self.cache.get(key)
            if apr is not None:
                return apr, int(label), None, None
        apr = self.spec.to_apr(image)
        return apr, int(label), key, apr


def _collate(spec: InputSpec):
    def collate(items):
        inputs = spec.collate_inputs([it[0] for it in items])
        labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
        converted = sum(it[3] is not None for it in items)
        new = [(it[2], it[3]) for it in items if it[2] is not None]
        return Batch(inputs, labels, converted, new)
    return collate


def _worker_init(_):
    torch.set_num_threads(1)
    try:
        from napari_aprnet import _native
        _native.set_num_threads(1)
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def stream_batches(batch_size: int, start: int, stop: int) -> list[list[int]]:
    """Image indices of stream batches ``start .. stop - 1`` (batch ``s`` = images ``s*B .. s*B+B-1``)."""
    return [list(range(s * batch_size, (s + 1) * batch_size)) for s in range(start, stop)]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, skip: int = 0,
                  shuffle: bool = True) -> list[list[int]]:
    """Index batches of one epoch (a reproducible permutation of ``n``), minus the first ``skip`` batches."""
    order = np.random.default_rng([seed, 53, epoch]).permutation(n) if shuffle else np.arange(n)
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    return batches[skip:]


class _Loader:
    """Iterable over :class:`Batch` objects that feeds new APRs back into the cache."""

    def __init__(self, loader, cache: APRCache | None):
        self.loader, self.cache = loader, cache

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.cache is not None:
                for key, apr in batch.new:
                    self.cache.put(key, apr)
            batch.new = []
            yield batch


def make_loader(source, spec: InputSpec, batches: Sequence[Sequence[int]], *, workers: int = 0,
                augment_seed: int | None = None, epoch: int = 0, cache: APRCache | None = None) -> _Loader:
    """Loader over the given index ``batches`` of ``source``.

    Parameters
    ----------
    source : dataset or ShapeStream
        ``source[i] -> (image, label)`` (or ``source.image(i)`` for streams).
    spec : InputSpec
        How images become network inputs.
    batches : list of list of int
        Indices of each batch, in order (see :func:`stream_batches`, :func:`epoch_batches`).
    workers : int
        Worker processes doing generation, augmentation and APR conversion
        (0 = in this process).
    augment_seed : int, optional
        Apply :func:`augment` with a generator seeded by ``(augment_seed, epoch, index)``.
    epoch : int
        Epoch number (augmentation seeding).
    cache : APRCache, optional
        Cache of converted APRs (used only without augmentation).
    """
    ds = _ItemDataset(source, spec, augment_seed, cache)
    ds.epoch = epoch
    kwargs: dict = {}
    if workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": 2}
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[list(b) for b in batches], num_workers=workers,
                                         collate_fn=_collate(spec), **kwargs)
    return _Loader(loader, cache)


def estimate_normalisation(source, channels: int, size: int, n: int = 200, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of up to ``n`` random images of ``source`` (prepared like training images)."""
    spec = InputSpec(mode="pixels", size=size, channels=channels)
    idx = np.random.default_rng([seed, 71]).permutation(len(source))[:n]
    stack = np.stack([spec.prepare(source[int(i)][0]).reshape(-1, channels) for i in idx]).reshape(-1, channels)
    std = np.maximum(stack.std(axis=0), 1e-3)
    return stack.mean(axis=0).tolist(), std.tolist()

