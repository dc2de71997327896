"""Synthetic shape images (thesis section 4.1.1).

Each image holds ONE object, the *contour* of a triangle, square or circle,
regular or "fuzzy" (a sinusoidal perturbation of random amplitude and
frequency added to the contour). The contour is parameterised continuously
(a radial function of the angle), sampled densely and crudely mapped to
pixels by rounding, which gives the aliasing that makes small perturbations
hard to see. Size, location and orientation are random; background and
foreground intensities are uniform in [0, 1], at least ``min_contrast`` apart.

Outline by default: the thesis calls the object types "the contours of" the
shapes and maps "the parameterized curves ... to pixel locations by
rounding", which marks a one-pixel outline. ``ShapeParams(filled=True)``
gives the other reading (the region inside the contour in the foreground
intensity); both learn equally well (``benchmarks/results/training.md``).

The perturbation is added to the radius and its amplitude is a fraction of
the image side, not of the object: the thesis gives no ranges, and a
relative amplitude made the perturbation of small objects smaller than a
pixel, so that a fuzzy shape was drawn exactly like its regular twin and its
label could not be learnt (the error floor of about 10 % found in
``benchmarks/results/training.md``). The default ranges keep every
perturbation at 2 pixels or more at 256x256 and 1 pixel or more after 2x
downsampling, and small enough (and of high enough frequency) not to change
which shape it is.

Every image is a pure function of ``(seed, split, class, index)`` (or
``(seed, batch, position)`` for streams), so datasets are reproducible, can
be generated lazily in worker processes, and smaller datasets are prefixes
(subsets) of larger ones (thesis 4.1.3.4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterator

import numpy as np

__all__ = [
    "CLASS_NAMES", "ShapeParams", "DEFAULT_PARAMS", "MODIFIED_PARAMS", "ShapeInfo",
    "draw_shape", "random_shape", "ShapeStream", "ShapesDataset", "make_shapes_dataset",
    "make_shapes_splits",
]

CLASS_NAMES: tuple[str, ...] = (
    "triangle", "square", "circle", "fuzzy_triangle", "fuzzy_square", "fuzzy_circle",
)
_SIDES = {"triangle": 3, "square": 4, "circle": 0}
MAX_AMPLITUDE_OF_INRADIUS = 0.3


@dataclass(frozen=True)
class ShapeParams:
    """Ranges the random shapes are drawn from.

    Parameters
    ----------
    radius : (float, float)
        Circumradius as a fraction of the image side. The default upper bound
        0.25 makes the largest objects span half the side, i.e. cover roughly
        a quarter of the image (thesis 4.1.1).
    amplitude : (float, float)
        Perturbation amplitude of fuzzy shapes (added to the radius), as a
        fraction of the image side (or of the object's circumradius, see
        ``amplitude_of``); at most 0.3 of the inradius is used, so the
        ripple never hides which shape it is on. Default: 2 to 6.4 pixels
        at 256x256.
    frequency : (int, int)
        Perturbation frequency (whole periods around the contour, inclusive
        range) of fuzzy shapes; whole periods keep the contour closed. From
        8 up: a ripple of 5-7 periods on a shape with 3 or 4 corners varies
        on the scale of its sides and reads as another polygon rather than
        a perturbed outline; those set the residual error of the first
        ranges (5-16, ``benchmarks/results/training.md``).
    min_contrast : float
        Minimum absolute difference of foreground and background intensity.
    filled : bool
        Fill the inside of the contour with the foreground intensity
        instead of drawing the contour line.
    amplitude_of : {"image", "radius"}
        What ``amplitude`` is a fraction of. ``"radius"`` with amplitude
        (0.03, 0.12) and frequency (5, 16) is this package's first
        distribution, kept to reproduce the diagnosis in
        ``benchmarks/results/training.md``.
    """

    radius: tuple[float, float] = (0.08, 0.25)
    amplitude: tuple[float, float] = (0.008, 0.025)
    frequency: tuple[int, int] = (8, 16)
    min_contrast: float = 0.05
    filled: bool = False
    amplitude_of: str = "image"

    def __post_init__(self):
        lo, hi = self.radius
        if not 0 < lo <= hi <= 0.45:
            raise ValueError(f"radius range must satisfy 0 < low <= high <= 0.45, got {self.radius}")
        a0, a1 = self.amplitude
        if not 0 <= a0 <= a1 < 0.25:
            raise ValueError(f"amplitude range (fraction of the image side) must satisfy 0 <= low <= high < 0.25, "
                             f"got {self.amplitude}")
        f0, f1 = self.frequency
        if not 1 <= f0 <= f1:
            raise ValueError(f"frequency range must satisfy 1 <= low <= high, got {self.frequency}")
        if self.amplitude_of not in ("image", "radius"):
            raise ValueError(f"amplitude_of must be 'image' or 'radius', got {self.amplitude_of!r}")
        if not 0 <= self.min_contrast < 1:
            raise ValueError(f"min_contrast must be in [0, 1), got {self.min_contrast}")

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and logs)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeParams":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


DEFAULT_PARAMS = ShapeParams()
def _widen(p: ShapeParams) -> ShapeParams:
    """The "more extreme" distribution around ``p`` (a superset of it)."""
    r0, r1 = p.radius
    a0, a1 = p.amplitude
    f0, f1 = p.frequency
    return replace(p, radius=(r0 * 2 / 3, min(0.45, r1 * 1.28)), amplitude=(a0 * 2 / 3, min(0.24, a1 * 1.5)),
                   frequency=(max(1, f0 - 2), f1 + 8))


#: "More extreme" parameters: the default distribution is a subset of this one
#: (thesis 4.1.3.4, footnote 1): smaller and larger objects, subtler and
#: stronger, slower and faster perturbations.
MODIFIED_PARAMS = _widen(DEFAULT_PARAMS)


@dataclass(frozen=True)
class ShapeInfo:
    """Ground-truth parameters of one generated image (lengths in pixels; ``amplitude`` is 0 for regular shapes)."""

    label: int
    center: tuple[float, float]
    radius: float
    rotation: float
    amplitude: float
    frequency: int
    phase: float
    background: float
    foreground: float
    filled: bool = False
    amplitude_of: str = "image"

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def _radial(theta: np.ndarray, sides: int, radius: float, rotation: float) -> np.ndarray:
    """Distance from the centre to a regular polygon's contour (circle if sides == 0)."""
    if sides == 0:
        return np.full_like(theta, radius)
    sector = 2 * np.pi / sides
    t = np.mod(theta - rotation, sector) - sector / 2
    return radius * np.cos(np.pi / sides) / np.cos(t)


def _inradius(sides: int, radius: float) -> float:
    return radius * np.cos(np.pi / sides) if sides else radius


def _contour(theta: np.ndarray, info: ShapeInfo) -> np.ndarray:
    """Radius of the (perturbed) contour at the angles ``theta``."""
    name = CLASS_NAMES[info.label]
    r = _radial(theta, _SIDES[name.replace("fuzzy_", "")], info.radius, info.rotation)
    if name.startswith("fuzzy_"):
        r = r + info.amplitude * np.sin(info.frequency * theta + info.phase)
    return r


def draw_shape(size: int, info: ShapeInfo) -> np.ndarray:
    """Render the object described by ``info`` on a ``size x size`` float32 image.

    The contour ``r(theta) + A sin(f theta + phase)`` (``A = 0`` for regular
    shapes) is sampled with steps shorter than half a pixel and every sample
    is rounded to the nearest pixel, which is set to the foreground
    intensity. With ``info.filled``, every pixel whose centre lies inside
    the contour is set instead.
    """
    cy, cx = info.center
    image = np.full((size, size), info.background, dtype=np.float32)
    if info.filled:
        reach = info.radius + info.amplitude + 1
        y0, y1 = max(0, int(cy - reach)), min(size, int(np.ceil(cy + reach)) + 1)
        x0, x1 = max(0, int(cx - reach)), min(size, int(np.ceil(cx + reach)) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        inside = np.hypot(dy, dx) <= _contour(np.arctan2(dy, dx), info)
        image[y0:y1, x0:x1][inside] = info.foreground
        return image
    # Arc length bound: 2 pi (R + A) for the base plus 2 pi A f per turn for the ripple.
    n = int(np.ceil(4 * 2 * np.pi * (2.0 * info.radius + info.amplitude * (1 + info.frequency)))) + 64
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = _contour(theta, info)
    ys = np.clip(np.rint(cy + r * np.sin(theta)).astype(np.int64), 0, size - 1)
    xs = np.clip(np.rint(cx + r * np.cos(theta)).astype(np.int64), 0, size - 1)
    image[ys, xs] = info.foreground
    return image


def random_shape(rng: np.random.Generator, label: int, size: int,
                 params: ShapeParams = DEFAULT_PARAMS) -> tuple[np.ndarray, ShapeInfo]:
    """Draw the random parameters of one image of class ``label`` and render it.

    Returns
    -------
    image : ndarray of float32, shape (size, size)
    info : ShapeInfo
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label}")
    if size < 16:
        raise ValueError(f"shape images need size >= 16 pixels, got {size}")
    name = CLASS_NAMES[label]
    radius = rng.uniform(*params.radius) * size
    amplitude = rng.uniform(*params.amplitude) * (size if params.amplitude_of == "image" else radius)
    amplitude = amplitude if name.startswith("fuzzy_") else 0.0
    amplitude = min(amplitude, MAX_AMPLITUDE_OF_INRADIUS * _inradius(_SIDES[name.replace("fuzzy_", "")], radius))
    frequency = int(rng.integers(params.frequency[0], params.frequency[1] + 1))
    phase = rng.uniform(0, 2 * np.pi)
    rotation = rng.uniform(0, 2 * np.pi)
    extent = radius + amplitude + 1.0
    lo, hi = extent, size - 1 - extent
    if hi < lo:  # object larger than the image: centre it
        lo = hi = (size - 1) / 2
    center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    while True:
        bg, fg = rng.uniform(0, 1, size=2)
        if abs(fg - bg) >= params.min_contrast:
            break
    info = ShapeInfo(int(label), center, float(radius), float(rotation), float(amplitude),
                     frequency, float(phase), float(bg), float(fg), bool(params.filled))
    return draw_shape(size, info), info


class ShapeStream:
    """Infinite, reproducible stream of labelled batches (thesis 4.1.3.2).

    Batch ``i`` depends only on ``(seed, i)``, so ``stream[i]`` can be
    computed in any worker process and a resumed run sees the same batches.

    Parameters
    ----------
    seed : int
        Random seed.
    size : int
        Image side in pixels (default 256).
    batch : int
        Images per batch (default 36).
    params : ShapeParams, optional
        Shape distribution (default :data:`DEFAULT_PARAMS`).
    classes : sequence of str, optional
        Subset of :data:`CLASS_NAMES` (labels follow this order); default all six.
    """

    def __init__(self, seed: int = 0, size: int = 256, batch: int = 36,
                 params: ShapeParams = DEFAULT_PARAMS, classes: tuple[str, ...] | None = None):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.seed, self.size, self.batch_size, self.params = int(seed), int(size), int(batch), params
        self.class_names, self._labels = _class_subset(classes)

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return batch ``index``: images (B, size, size) float32 and labels (B,) int64."""
        if index < 0:
            raise IndexError(f"batch index must be >= 0, got {index}")
        labels = np.random.default_rng([self.seed, 7, index]).integers(0, len(self.class_names), self.batch_size)
        images = np.empty((self.batch_size, self.size, self.size), dtype=np.float32)
        for j, label in enumerate(labels):
            images[j] = random_shape(np.random.default_rng([self.seed, 8, index, j]), self._labels[label],
                                     self.size, self.params)[0]
        return images, labels.astype(np.int64)

    def image(self, index: int) -> tuple[np.ndarray, int]:
        """Image number ``index`` of the stream (``batch(index // B)[index % B]``), for per-image loaders."""
        b, j = divmod(int(index), self.batch_size)
        label = int(np.random.default_rng([self.seed, 7, b]).integers(0, len(self.class_names), self.batch_size)[j])
        image = random_shape(np.random.default_rng([self.seed, 8, b, j]), self._labels[label], self.size,
                             self.params)[0]
        return image, label

    __getitem__ = batch

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        i = 0
        while True:
            yield self.batch(i)
            i += 1


class ShapesDataset:
    """A fixed, lazily generated dataset of shape images.

    Item ``i`` is image ``i // n_classes`` of class ``i % n_classes``, so the
    first ``6 * k`` items are the dataset with ``k`` images per class: the
    datasets of 20, 50, ..., 2000 images per class are nested.

    Parameters
    ----------
    n_per_class : int
        Images per class.
    seed : int
        Random seed of the collection.
    size : int
        Image side in pixels.
    split : int
        Independent sub-stream (0 train, 1 validation, 2 test, 3 modified test).
    params : ShapeParams
        Shape distribution.
    classes : sequence of str, optional
        Subset of :data:`CLASS_NAMES` (labels follow this order); default all six.
    """

    def __init__(self, n_per_class: int, seed: int = 0, size: int = 256, split: int = 0,
                 params: ShapeParams = DEFAULT_PARAMS, classes: tuple[str, ...] | None = None):
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        self.n_per_class, self.seed, self.size = int(n_per_class), int(seed), int(size)
        self.split, self.params = int(split), params
        self.class_names, self._labels = _class_subset(classes)

    def __len__(self) -> int:
        return self.n_per_class * len(self.class_names)

    @property
    def labels(self) -> np.ndarray:
        """Labels of all items (int64)."""
        return np.arange(len(self), dtype=np.int64) % len(self.class_names)

    def info(self, i: int) -> ShapeInfo:
        """Ground-truth parameters of item ``i``."""
        return self._generate(i)[1]

    def _generate(self, i: int) -> tuple[np.ndarray, ShapeInfo]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        k, label = divmod(int(i), len(self.class_names))
        shape_label = self._labels[label]
        rng = np.random.default_rng([self.seed, 100 + self.split, shape_label, k])
        return random_shape(rng, shape_label, self.size, self.params)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self._generate(i)[0], int(i) % len(self.class_names)

    def subset(self, n_per_class: int) -> "ShapesDataset":
        """The nested subset with ``n_per_class`` images per class."""
        if n_per_class > self.n_per_class:
            raise ValueError(f"subset of {n_per_class} per class asked from a dataset of {self.n_per_class}")
        return ShapesDataset(n_per_class, self.seed, self.size, self.split, self.params, self.class_names)

    def describe(self) -> dict:
        """Plain-dict description (for logs and checkpoints)."""
        return {"kind": "shapes", "n_per_class": self.n_per_class, "seed": self.seed, "size": self.size,
                "split": self.split, "params": self.params.to_dict(), "classes": list(self.class_names)}


def _class_subset(classes) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(class names, their indices in CLASS_NAMES) for a subset of the classes (None = all six)."""
    if classes is None:
        return CLASS_NAMES, tuple(range(len(CLASS_NAMES)))
    classes = tuple(str(c) for c in classes)
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes must be at least two distinct names from {CLASS_NAMES}, got {classes}")
    return classes, tuple(CLASS_NAMES.index(c) for c in classes)


def make_shapes_dataset(n_per_class: int, seed: int = 0, size: int = 256, modified: bool = False,
                        split: int | None = None, params: ShapeParams | None = None,
                        classes: tuple[str, ...] | None = None) -> ShapesDataset:
    """A fixed dataset of shape images with ``n_per_class`` images per class.

    Parameters
    ----------
    n_per_class : int
        Images per class; datasets with the same ``seed``/``split`` are nested.
    seed : int
        Random seed.
    size : int
        Image side (default 256).
    modified : bool
        Draw from the "more extreme" :data:`MODIFIED_PARAMS` distribution.
    split : int, optional
        Independent sub-stream; defaults to 0 (3 when ``modified``).
    params : ShapeParams, optional
        Explicit distribution (overrides ``modified``).
    classes : sequence of str, optional
        Subset of :data:`CLASS_NAMES` (labels follow this order); default all six.
    """
    if params is None:
        params = MODIFIED_PARAMS if modified else DEFAULT_PARAMS
    if split is None:
        split = 3 if modified else 0
    return ShapesDataset(n_per_class, seed, size, split, params, classes)


def make_shapes_splits(n_train: int, n_val: int = 500, n_test: int = 500, seed: int = 0, size: int = 256,
                       params: ShapeParams | None = None,
                       classes: tuple[str, ...] | None = None) -> dict[str, ShapesDataset]:
    """Independent train / val / test / test_modified datasets (thesis 4.1.3.4).

    With ``params`` given, the modified test set uses the same ranges widened
    like :data:`MODIFIED_PARAMS` widens :data:`DEFAULT_PARAMS`.
    """
    params = params or DEFAULT_PARAMS
    modified = _widen(params)
    return {
        "train": ShapesDataset(n_train, seed, size, 0, params, classes),
        "val": ShapesDataset(n_val, seed, size, 1, params, classes),
        "test": ShapesDataset(n_test, seed, size, 2, params, classes),
        "test_modified": ShapesDataset(n_test, seed, size, 3, modified, classes),
    }
