"""Synthetic fluorescence-like nuclei with instance masks (segmentation data), 2D and 3D.

Each image holds blobby nuclei: ellipses (2D) or ellipsoids (3D) of random
semi-axes and orientation whose boundary is perturbed by a smooth,
low-frequency function of the direction, so no two are alike. Some come as
*touching pairs*: two nuclei placed so that their shapes overlap; every
pixel of the overlap goes to the nucleus it lies deeper inside, which gives
a shared boundary as between real touching nuclei. The others do not touch.

Intensities: a background offset plus, inside each nucleus, its brightness
times a smooth texture (a few random low-frequency waves); the image is
blurred by a Gaussian (the optics) and photon-counted with Poisson noise
(the camera), then divided by the photon scale, so values are about 0..1
(float32). The instance mask (int32, 0 background, 1..n nuclei) is the
ground truth before blur and noise.

Sizes are in pixels and do not scale with the image (a nucleus is as big in
a large image as in a small one); the number of nuclei follows from the
covered fraction of the image. Every image is a pure function of
``(seed, split, index)``, so datasets are reproducible and can be generated
lazily in worker processes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NucleiParams", "NUCLEI_DATASETS", "default_shape", "make_nuclei", "NucleiDataset", "NucleiStream",
           "make_nuclei_splits"]

#: The synthetic segmentation datasets and their number of dimensions.
NUCLEI_DATASETS = {"nuclei2d": 2, "nuclei3d": 3}
_DEFAULT_SHAPES = {2: (256, 256), 3: (64, 128, 128)}
_PLACEMENT_TRIES = 60  # random centres tried per nucleus before the image counts as full


def default_shape(ndim: int) -> tuple[int, ...]:
    """The default image shape: 256x256 (2D) or 64x128x128 (3D)."""
    if ndim not in _DEFAULT_SHAPES:
        raise ValueError(f"nuclei images are 2D or 3D, got ndim={ndim}")
    return _DEFAULT_SHAPES[ndim]


@dataclass(frozen=True)
class NucleiParams:
    """Ranges the random nuclei and imaging conditions are drawn from (lengths in pixels).

    Parameters
    ----------
    radius : (float, float)
        Mean semi-axis of a nucleus.
    elongation : (float, float)
        Ratio of the longest to the shortest semi-axis.
    wobble : float
        Largest relative amplitude of the boundary perturbation (0 = smooth ellipses).
    coverage : (float, float)
        Fraction of the image covered by nuclei (aimed at; a crowded image may hold less).
    touching : float
        Fraction of the nuclei placed as touching pairs.
    brightness : (float, float)
        Nucleus intensity above the background.
    texture : float
        Relative amplitude of the interior texture.
    background : (float, float)
        Background offset.
    blur : (float, float)
        Standard deviation of the Gaussian blur.
    photons : (float, float)
        Photon counts of intensity 1 (lower = noisier).
    """

    radius: tuple[float, float] = (6.0, 14.0)
    elongation: tuple[float, float] = (1.0, 1.8)
    wobble: float = 0.15
    coverage: tuple[float, float] = (0.15, 0.35)
    touching: float = 0.3
    brightness: tuple[float, float] = (0.2, 0.9)
    texture: float = 0.25
    background: tuple[float, float] = (0.02, 0.15)
    blur: tuple[float, float] = (0.8, 1.6)
    photons: tuple[float, float] = (30.0, 200.0)

    def __post_init__(self):
        for name in ("radius", "elongation", "coverage", "brightness", "background", "blur", "photons"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} range must satisfy 0 <= low <= high, got {(lo, hi)}")
        if self.radius[0] < 1.5:
            raise ValueError(f"nuclei need a radius of at least 1.5 pixels, got {self.radius}")
        if self.elongation[0] < 1:
            raise ValueError(f"elongation is a ratio >= 1, got {self.elongation}")
        if not 0 <= self.wobble < 0.5:
            raise ValueError(f"wobble must be in [0, 0.5), got {self.wobble}")
        if not self.coverage[1] < 0.8:
            raise ValueError(f"coverage must stay below 0.8, got {self.coverage}")
        if not 0 <= self.touching <= 1 or not 0 <= self.texture < 1:
            raise ValueError(f"touching must be in [0, 1] and texture in [0, 1), got {self.touching}, {self.texture}")
        if self.photons[0] <= 0:
            raise ValueError(f"photons must be > 0, got {self.photons}")

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and logs)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NucleiParams":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _Nucleus:
    """One nucleus: centre, semi-axes, orientation and its boundary perturbation (a few waves over the direction)."""

    def __init__(self, center, axes, rotation, waves, wave_freq, wave_phase, wave_amp):
        self.center, self.axes, self.rotation = np.asarray(center, float), axes, rotation
        self.waves, self.wave_freq, self.wave_phase, self.wave_amp = waves, wave_freq, wave_phase, wave_amp
        self.reach = float(axes.max() * (1 + wave_amp.sum())) + 1.0  # a radius holding the whole nucleus

    def moved(self, center) -> "_Nucleus":
        return _Nucleus(center, self.axes, self.rotation, self.waves, self.wave_freq, self.wave_phase,
                        self.wave_amp)

    def depth(self, offsets: np.ndarray) -> np.ndarray:
        """Normalised distance of points from the centre: < 1 inside, 1 on the (perturbed) boundary.

        ``offsets`` are ``(..., ndim)`` positions relative to the centre.
        """
        local = (offsets @ self.rotation) / self.axes
        rho = np.sqrt((local ** 2).sum(-1))
        direction = local / np.maximum(rho, 1e-9)[..., None]
        bump = np.cos((direction @ self.waves.T) * self.wave_freq + self.wave_phase) @ self.wave_amp
        return rho / (1 + bump)


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _random_nucleus(rng: np.random.Generator, ndim: int, p: NucleiParams) -> _Nucleus:
    radius = rng.uniform(*p.radius)
    stretch = rng.uniform(*p.elongation) ** np.linspace(0.5, -0.5, ndim)  # longest / shortest = elongation
    waves = rng.normal(size=(3, ndim))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    return _Nucleus(np.zeros(ndim), radius * stretch, _rotation(rng, ndim), waves,
                    rng.integers(1, 4, 3).astype(float), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0, p.wobble / 3, 3))


def _group(rng: np.random.Generator, ndim: int, p: NucleiParams) -> list[_Nucleus]:
    """One nucleus, or (with probability ``p.touching``) a touching pair, around the origin."""
    first = _random_nucleus(rng, ndim, p)
    if rng.random() >= p.touching:
        return [first]
    second = _random_nucleus(rng, ndim, p)
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction)
    # each reaches at least (1 - wobble) > 0.8 of its shortest semi-axis from its centre: the two overlap
    return [first, second.moved(direction * 0.8 * (first.axes.min() + second.axes.min()))]


def _place(rng, shape, group: list[_Nucleus], centers: np.ndarray, reaches: np.ndarray) -> list[_Nucleus]:
    """``group`` moved to a random place where it does not touch the nuclei at ``centers`` ([] if none is found).

    A nucleus may be cut by the image border by up to half its reach.
    """
    offsets = np.array([n.center for n in group])
    reach = np.array([n.reach for n in group])
    half = np.asarray(shape, float) / 2
    lo = np.minimum(0.5 * reach.max() - offsets.min(0), half)
    hi = np.maximum(2 * half - 1 - 0.5 * reach.max() - offsets.max(0), half)
    shifts = rng.uniform(lo, hi, size=(_PLACEMENT_TRIES, len(shape)))
    cand = shifts[:, None, :] + offsets[None]  # (tries, group, ndim)
    gap = np.linalg.norm(cand[:, :, None, :] - centers[None, None], axis=-1) - reach[:, None] - reaches
    free = np.flatnonzero((gap > 1).all(axis=(1, 2)))
    if not len(free):
        return []
    return [n.moved(c) for n, c in zip(group, cand[free[0]])]


def _paint(shape, nuclei: list[_Nucleus]) -> tuple[np.ndarray, np.ndarray]:
    """Instance mask (int32) and the normalised depth of each pixel in its nucleus (inf outside)."""
    mask = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    for label, n in enumerate(nuclei, start=1):
        lo = np.maximum(np.floor(n.center - n.reach).astype(int), 0)
        hi = np.minimum(np.ceil(n.center + n.reach).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        d = n.depth(grid - n.center).astype(np.float32)
        take = (d < 1) & (d < depth[box])  # an overlap goes to the nucleus it lies deeper inside
        mask[box][take] = label
        depth[box][take] = d[take]
    return mask, depth


def _texture(rng, shape, strength: float) -> np.ndarray:
    """A smooth random field around 1 (a sum of a few low-frequency plane waves)."""
    field = np.zeros(shape, np.float32)
    axes = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    for _ in range(4):
        k = rng.normal(size=len(shape)) * 0.25  # wavelength ~ 25 pixels
        arg = sum(ki * a for ki, a in zip(k.astype(np.float32), axes))
        field += np.cos(arg + np.float32(rng.uniform(0, 2 * np.pi)))
    return 1 + strength * field / 2


def make_nuclei(rng: np.random.Generator, shape: tuple[int, ...],
                params: NucleiParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image of nuclei and its instance mask.

    Parameters
    ----------
    rng : numpy Generator
        The source of all randomness.
    shape : tuple of int
        ``(H, W)`` or ``(D, H, W)``, each side >= 16.
    params : NucleiParams, optional
        The distributions (defaults when None).

    Returns
    -------
    image : ndarray of float32, ``shape``
        Blurred, Poisson-noisy fluorescence-like image, about 0..1.
    mask : ndarray of int32, ``shape``
        Instance labels, 0 background, 1..n nuclei (ground truth before blur and noise).
    """
    p = params or NucleiParams()
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 16:
        raise ValueError(f"nuclei images are 2D or 3D with sides >= 16 pixels, got shape {shape}")
    target = rng.uniform(*p.coverage) * np.prod(shape)
    mean_size = (np.pi if len(shape) == 2 else 4 / 3 * np.pi) * np.mean(p.radius) ** len(shape)
    nuclei: list[_Nucleus] = []
    while len(nuclei) * mean_size < target:
        group = _place(rng, shape, _group(rng, len(shape), p), np.array([n.center for n in nuclei]).reshape(
            -1, len(shape)), np.array([n.reach for n in nuclei]))
        if not group:
            break
        nuclei.extend(group)
    mask, depth = _paint(shape, nuclei)
    bright = np.concatenate([[0.0], rng.uniform(*p.brightness, len(nuclei))]).astype(np.float32)
    rim = np.where(mask > 0, 1 - 0.2 * np.minimum(depth, 1) ** 4, 0).astype(np.float32)  # a slightly darker rim
    signal = bright[mask] * rim * _texture(rng, shape, p.texture) + np.float32(rng.uniform(*p.background))
    signal = ndimage.gaussian_filter(signal, rng.uniform(*p.blur), mode="nearest")
    photons = rng.uniform(*p.photons)
    image = rng.poisson(np.maximum(signal, 0) * photons).astype(np.float32) / np.float32(photons)
    return image, mask


class NucleiDataset:
    """A fixed, lazily generated dataset of ``n`` nuclei images; item ``i`` is ``(image, mask)``.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Random seed of the collection.
    shape : tuple of int, optional
        Image shape (default :func:`default_shape` of ``ndim``).
    split : int
        Independent sub-stream (0 train, 1 validation, 2 test).
    params : NucleiParams, optional
        The distributions.
    ndim : int
        2 or 3, used when ``shape`` is None.
    """

    def __init__(self, n: int, seed: int = 0, shape: tuple[int, ...] | None = None, split: int = 0,
                 params: NucleiParams | None = None, ndim: int = 2):
        if n < 1:
            raise ValueError(f"a nuclei dataset needs n >= 1 images, got {n}")
        self.n, self.seed, self.split = int(n), int(seed), int(split)
        self.shape = tuple(int(s) for s in (shape or default_shape(ndim)))
        self.params = params or NucleiParams()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a dataset of {self.n} images")
        return make_nuclei(np.random.default_rng([self.seed, 200 + self.split, int(i)]), self.shape, self.params)

    def describe(self) -> dict:
        """Plain-dict description (for logs and checkpoints)."""
        return {"kind": "nuclei", "n": self.n, "seed": self.seed, "shape": list(self.shape), "split": self.split,
                "params": self.params.to_dict()}


class NucleiStream:
    """An endless, reproducible stream of nuclei images for streaming training: ``image(i) -> (image, mask)``.

    Image ``i`` depends only on ``(seed, i)`` and never repeats an image of a
    :class:`NucleiDataset` of the same seed.
    """

    def __init__(self, seed: int = 0, shape: tuple[int, ...] | None = None, params: NucleiParams | None = None,
                 ndim: int = 2):
        self.seed = int(seed)
        self.shape = tuple(int(s) for s in (shape or default_shape(ndim)))
        self.params = params or NucleiParams()

    def image(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index < 0:
            raise IndexError(f"stream index must be >= 0, got {index}")
        return make_nuclei(np.random.default_rng([self.seed, 199, int(index)]), self.shape, self.params)


def make_nuclei_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, shape: tuple[int, ...] | None = None,
                       params: NucleiParams | None = None, ndim: int = 2) -> dict[str, NucleiDataset]:
    """Independent train / val / test nuclei datasets."""
    return {name: NucleiDataset(n, seed, shape, split, params, ndim)
            for split, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))}
