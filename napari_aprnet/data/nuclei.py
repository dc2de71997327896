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
from scipy.spatial import cKDTree

__all__ = ["NucleiParams", "NUCLEI_DATASETS", "default_shape", "make_nuclei", "NucleiDataset", "NucleiStream",
           "make_nuclei_splits"]

#: The synthetic segmentation datasets and their number of dimensions.
NUCLEI_DATASETS = {"nuclei2d": 2, "nuclei3d": 3}
_DEFAULT_SHAPES = {2: (256, 256), 3: (64, 128, 128)}
_CANDIDATES_PER_NUCLEUS = 4  # random places drawn per nucleus wanted; a crowded image may end with fewer nuclei


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


@dataclass
class _Nuclei:
    """Candidate nuclei as arrays (one row each): centre, semi-axes, orientation (columns: principal
    directions) and the boundary perturbation, a sum of three waves over the direction."""

    center: np.ndarray  # (n, ndim)
    axes: np.ndarray  # (n, ndim)
    rotation: np.ndarray  # (n, ndim, ndim)
    waves: np.ndarray  # (n, 3, ndim) unit vectors
    freq: np.ndarray  # (n, 3)
    phase: np.ndarray  # (n, 3)
    amp: np.ndarray  # (n, 3)
    group: np.ndarray  # (n,) touching pairs share a group

    @property
    def reach(self) -> np.ndarray:
        """A radius holding the whole nucleus (the perturbation only scales the radius by 1 + bump)."""
        return self.axes.max(1) * (1 + self.amp.sum(1)) + 1.0

    def take(self, index: np.ndarray) -> "_Nuclei":
        return _Nuclei(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


_STRETCH = {2: np.array([0.5, -0.5]), 3: np.array([0.5, 0.0, -0.5])}


def _rotations(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    if ndim == 2:
        a = rng.uniform(0, 2 * np.pi, n)
        c, s = np.cos(a), np.sin(a)
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
    q, r = np.linalg.qr(rng.normal(size=(n, ndim, ndim)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _random_nuclei(rng: np.random.Generator, n: int, ndim: int, p: NucleiParams) -> _Nuclei:
    """``n`` nuclei at the origin."""
    radius = rng.uniform(*p.radius, n)
    axes = radius[:, None] * rng.uniform(*p.elongation, n)[:, None] ** _STRETCH[ndim]  # longest/shortest = elongation
    waves = rng.normal(size=(n, 3, ndim))
    waves /= np.sqrt((waves ** 2).sum(-1, keepdims=True))
    return _Nuclei(np.zeros((n, ndim)), axes, _rotations(rng, n, ndim), waves, rng.integers(1, 4, (n, 3)).astype(float),
                   rng.uniform(0, 2 * np.pi, (n, 3)), rng.uniform(0, p.wobble / 3, (n, 3)), np.arange(n))


def _candidates(rng: np.random.Generator, n: int, shape: tuple[int, ...], p: NucleiParams) -> _Nuclei:
    """``n`` candidate groups at random places, in order: single nuclei and (with probability
    ``p.touching``) touching pairs. A nucleus may be cut by the image border by up to half its reach."""
    ndim = len(shape)
    first, second = _random_nuclei(rng, n, ndim, p), _random_nuclei(rng, n, ndim, p)
    last = np.asarray(shape, float) - 1
    margin = np.minimum(0.5 * first.reach[:, None], last / 2)
    first.center = rng.uniform(margin, last - margin)
    direction = rng.normal(size=(n, ndim))
    direction /= np.sqrt((direction ** 2).sum(1, keepdims=True))
    # each reaches at least (1 - wobble) > 0.8 of its shortest semi-axis from its centre: the two overlap
    second.center = first.center + direction * (0.8 * (first.axes.min(1) + second.axes.min(1)))[:, None]
    paired = np.flatnonzero(rng.random(n) < p.touching)
    both = first.take(np.concatenate([np.arange(n), paired]))
    partner = second.take(paired)
    for f in both.__dataclass_fields__:
        getattr(both, f)[n:] = getattr(partner, f)
    order = np.argsort(both.group, kind="stable")  # a pair's nuclei next to each other
    return both.take(order)


def _place(candidates: _Nuclei, target: float, mean_size: float) -> _Nuclei:
    """The candidate groups, in order, that touch no group accepted before them, until ``target`` pixels are
    (about) covered."""
    reach = candidates.reach
    pairs = cKDTree(candidates.center).query_pairs(2 * reach.max() + 1, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    gap = np.sqrt(((candidates.center[i] - candidates.center[j]) ** 2).sum(1)) - reach[i] - reach[j]
    clash = (gap <= 1) & (candidates.group[i] != candidates.group[j])
    i, j = np.concatenate([i[clash], j[clash]]), np.concatenate([j[clash], i[clash]])
    order = np.argsort(i, kind="stable")
    neighbours = np.split(j[order], np.searchsorted(i[order], np.arange(1, len(reach))))
    members = np.split(np.arange(len(reach)), np.flatnonzero(np.diff(candidates.group)) + 1)
    blocked = np.zeros(len(reach), bool)
    accepted: list[int] = []
    for group in members:
        if len(accepted) * mean_size >= target:
            break
        if blocked[group].any():
            continue
        accepted.extend(group.tolist())
        for k in group:
            blocked[neighbours[k]] = True
    return candidates.take(np.array(accepted, dtype=np.int64))


def _depth(nuclei: _Nuclei, i: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Normalised distance from the centre of nucleus ``i`` of the pixels of the box ``lo:hi``: < 1 inside,
    1 on its (perturbed) boundary."""
    f32 = np.float32
    box = tuple(int(b - a) for a, b in zip(lo, hi))
    offsets = np.indices(box, dtype=f32) + (lo - nuclei.center[i]).astype(f32).reshape((-1,) + (1,) * len(box))
    local = np.tensordot((nuclei.rotation[i] / nuclei.axes[i]).T.astype(f32), offsets, 1)  # principal axes
    rho = np.sqrt((local * local).sum(0))
    waves = (nuclei.waves[i] * nuclei.freq[i][:, None]).astype(f32)
    arg = np.tensordot(waves, local, 1) / np.maximum(rho, f32(1e-6)) + nuclei.phase[i].astype(f32).reshape(
        (-1,) + (1,) * len(box))
    return rho / (1 + np.tensordot(nuclei.amp[i].astype(f32), np.cos(arg), 1))


def _paint(shape, nuclei: _Nuclei) -> tuple[np.ndarray, np.ndarray]:
    """Instance mask (int32, labels 1..n consecutive) and the normalised depth of each pixel in its nucleus
    (< 1 inside, inf outside).

    A pixel inside two nuclei (touching pairs) goes to the one it lies deeper inside.
    """
    # half extent of each nucleus along each pixel axis: (1 + largest bump) * |row of R diag(axes)|
    extent = np.sqrt(((nuclei.rotation * nuclei.axes[:, None, :]) ** 2).sum(2)) * (1 + nuclei.amp.sum(1))[:, None]
    lo = np.clip(np.floor(nuclei.center - extent).astype(np.int64), 0, shape)
    hi = np.clip(np.ceil(nuclei.center + extent).astype(np.int64) + 1, 0, shape)
    mask = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    label = 0
    for i in range(len(lo)):
        if np.any(hi[i] <= lo[i]):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo[i], hi[i]))
        d = _depth(nuclei, i, lo[i], hi[i])
        take = (d < 1) & (d < depth[box])
        if not take.any():
            continue
        label += 1
        mask[box][take] = label
        depth[box][take] = d[take]
    present = np.zeros(label + 1, bool)  # a nucleus may lose all its pixels to its partner or the border
    present[np.unique(mask)] = True
    if not present.all():
        relabel = np.cumsum(present).astype(np.int32) - 1
        mask = relabel[mask]
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
    n_candidates = int(_CANDIDATES_PER_NUCLEUS * target / mean_size) + 8
    mask, depth = _paint(shape, _place(_candidates(rng, n_candidates, shape, p), target, mean_size))
    bright = np.concatenate([[0.0], rng.uniform(*p.brightness, int(mask.max()))]).astype(np.float32)
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
