"""Training crops from images a user annotated in memory (e.g. a napari Image and a drawn Labels layer).

How unlabelled pixels are treated: the *annotated area* of an image is the
box around everything drawn in it (grown to at least the crop size, centred,
within the image). Inside it, every pixel without a label counts as
background; outside it, nothing is trained on. So a user who draws a few
nuclei should draw *every* nucleus in the area they work on (a rectangle
around the drawn ones): an undrawn nucleus inside the box is taught as
background. This is the rule of the usual annotate-a-region workflow; after
a first training the user segments the whole image, corrects the result and
retrains on it, and the annotated area grows to the whole image.

Training crops (:class:`CropDataset`, item ``i`` a pure function of the
seed and ``i``) lie inside the annotated areas; half of them are centred
on a random labelled pixel (so that small annotations are seen often),
half at a uniformly random place, and each is flipped along every axis and
rotated by a multiple of 90 degrees in its last two axes (image and labels
alike). Validation holds out, by a seeded choice, whole annotated images of
a stack (when two or more planes / images carry labels) or else a slab at
one end of the longest side of the annotated area (when that leaves at
least a crop on both sides); its crops are fixed tiles. When neither fits,
validation tiles the training area and :attr:`Splits.held_out` is false.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AnnotatedImages", "CropDataset", "Splits", "MAX_VAL_CROPS"]

MAX_VAL_CROPS = 32  # validation tiles kept (a seeded choice), so that a big annotated image validates quickly
_MIN_CROP = 16
_MAX_LABEL = np.iinfo(np.int32).max


def _as_crop(crop, ndim: int) -> tuple[int, ...]:
    sides = (int(crop),) * ndim if np.ndim(crop) == 0 else tuple(int(c) for c in crop)
    if len(sides) != ndim or min(sides) < _MIN_CROP:
        raise ValueError(f"the crop is {ndim} sides of at least {_MIN_CROP} pixels, got {crop}")
    return sides


@dataclass(frozen=True)
class _Area:
    """A box ``lo:hi`` of one annotated image (index ``pair``) and the labelled pixels in it (absolute)."""

    pair: int
    lo: tuple
    hi: tuple
    labelled: np.ndarray  # (n, ndim) int64

    @property
    def shape(self) -> tuple:
        return tuple(b - a for a, b in zip(self.lo, self.hi))


class AnnotatedImages:
    """Images and the label images drawn on them, checked, with their annotated areas.

    Parameters
    ----------
    image : array
        One image ``(*spatial)`` or colour ``(*spatial, 3|4)`` (2D only), or
        a stack of them along leading axes.
    labels : integer array
        Instance labels of the same spatial shape (and leading axes), 0 = not drawn.
    ndim : {2, 3}
        Spatial dimensions of one image: 2 (a 3D array is then a stack of 2D
        images along its first axis) or 3 (a volume).
    rgb : bool
        The image's last axis holds colour channels.

    Raises
    ------
    ValueError
        Shapes differ, labels are not integers >= 0, nothing is drawn, or
        (3D) every drawn object lies in a single plane.
    """

    def __init__(self, image, labels, ndim: int = 2, *, rgb: bool = False):
        image, labels = np.asarray(image), np.asarray(labels)
        if ndim not in (2, 3) or (rgb and ndim == 3):
            raise ValueError(f"annotated images are 2D (grey or colour) or 3D grey volumes, got ndim={ndim}, "
                             f"rgb={rgb}")
        spatial = image.shape[:-1] if rgb else image.shape
        if spatial != labels.shape:
            raise ValueError(f"the labels have shape {labels.shape} but the image {image.shape}"
                             f"{' (colour, last axis)' if rgb else ''}; draw the labels on a Labels layer of "
                             "the image's shape")
        if labels.ndim < ndim:
            raise ValueError(f"a {labels.ndim}D image cannot hold {ndim}D images; choose 2D")
        if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > _MAX_LABEL)):
            raise ValueError(f"labels must be integers in 0..{_MAX_LABEL} (0 = not drawn), got dtype "
                             f"{labels.dtype}")
        if image.dtype.kind not in "uif":
            raise ValueError(f"the image must hold integer or float intensities, got dtype {image.dtype}")
        lead = labels.shape[: labels.ndim - ndim]
        images = image.reshape((-1,) + image.shape[len(lead):])
        masks = labels.reshape((-1,) + labels.shape[len(lead):])
        keep = [i for i in range(len(masks)) if masks[i].any()]
        if not keep:
            raise ValueError("no labels are drawn: paint a few objects (every one in the area you work on) "
                             "in the Labels layer first")
        self.ndim, self.rgb = int(ndim), bool(rgb)
        self.images = [images[i] for i in keep]
        self.labels = [masks[i] for i in keep]
        self.indices = [tuple(int(v) for v in np.unravel_index(i, lead)) for i in keep] if lead else [()]
        if ndim == 3 and all(self._flat_objects(m) for m in self.labels):
            raise ValueError("every drawn object lies in a single plane, but 3D training needs objects drawn "
                             "through all their planes (napari: raise the Labels layer's 'n edit dim' to 3, or "
                             "paint plane by plane); or train 2D on the planes")

    @staticmethod
    def _flat_objects(mask: np.ndarray) -> bool:
        """True when every object of a 3D mask has a thickness of one pixel along some axis."""
        from scipy import ndimage

        for box in ndimage.find_objects(mask):
            if box is not None and all(s.stop - s.start > 1 for s in box):
                return False
        return True

    @property
    def n_objects(self) -> int:
        """Distinct labels over all images (a label reused in two images of a stack counts twice)."""
        return int(sum(len(np.unique(m)) - 1 for m in self.labels))

    @property
    def channels(self) -> int:
        """Colour channels (1 grey, 3 RGB: alpha is dropped when the network input is prepared)."""
        return 3 if self.rgb else 1

    def _area(self, k: int, crop: tuple) -> _Area:
        """The annotated area of image ``k``: the box of its labels, grown to ``crop`` (centred, in the image)."""
        mask = self.labels[k]
        for side, c in zip(mask.shape, crop):
            if c > side:
                raise ValueError(f"the crop {list(crop)} is larger than the image {list(mask.shape)}; choose a "
                                 f"crop of at most {min(mask.shape)} pixels")
        where = np.argwhere(mask > 0)
        lo, hi = where.min(0), where.max(0) + 1
        grow = np.maximum(np.asarray(crop) - (hi - lo), 0)
        lo = np.clip(lo - grow // 2, 0, np.asarray(mask.shape) - np.maximum(hi - lo, crop))
        hi = np.maximum(hi, lo + np.asarray(crop))
        return _Area(k, tuple(int(v) for v in lo), tuple(int(v) for v in hi), where)

    def splits(self, crop, n_train: int, seed: int = 0, val_fraction: float = 0.2) -> "Splits":
        """Training crops (``n_train`` of them) and held-out validation tiles, reproducible by ``seed``."""
        crop = _as_crop(crop, self.ndim)
        if n_train < 1 or not 0 < val_fraction < 1:
            raise ValueError(f"need n_train >= 1 and 0 < val_fraction < 1, got {n_train}, {val_fraction}")
        areas = [self._area(k, crop) for k in range(len(self.labels))]
        rng = np.random.default_rng([seed, 97])
        if len(areas) >= 2:
            order = rng.permutation(len(areas))
            k = min(len(areas) - 1, max(1, int(round(len(areas) * val_fraction))))
            train, val, held_out = [areas[i] for i in sorted(order[k:])], [areas[i] for i in sorted(order[:k])], True
        else:
            parts = _slab_split(areas[0], crop, val_fraction, bool(rng.integers(2)))
            held_out = parts is not None
            train, val = parts if held_out else (areas, areas)
        return Splits(CropDataset(self, train, crop, n_train, seed, augment=True),
                      CropDataset(self, val, crop, None, seed, augment=False), held_out)

    def describe(self) -> dict:
        return {"kind": "annotated images", "n_images": len(self.labels), "ndim": self.ndim,
                "shape": list(self.labels[0].shape), "n_objects": self.n_objects}


def _restrict(area: _Area, lo, hi) -> _Area:
    inside = np.all((area.labelled >= lo) & (area.labelled < hi), axis=1)
    return _Area(area.pair, tuple(lo), tuple(hi), area.labelled[inside])


def _slab_split(area: _Area, crop: tuple, fraction: float, at_end: bool) -> tuple[list, list] | None:
    """(train, val) parts of one area: a slab along its longest side (relative to the crop), or None."""
    axis = int(np.argmax(np.asarray(area.shape) / np.asarray(crop)))
    length, c = area.shape[axis], crop[axis]
    n_val = max(c, int(round(length * fraction)))
    if length - n_val < c:
        return None
    cut = area.hi[axis] - n_val if at_end else area.lo[axis] + n_val
    first_hi, second_lo = list(area.hi), list(area.lo)
    first_hi[axis], second_lo[axis] = cut, cut
    first, second = _restrict(area, area.lo, first_hi), _restrict(area, second_lo, area.hi)
    return ([first], [second]) if at_end else ([second], [first])


def _tiles(area: _Area, crop: tuple) -> list[tuple]:
    """Corners of crop-sized tiles covering an area (the last tile of each axis flush with its end)."""
    starts = [sorted({*range(a, b - c + 1, c), b - c}) for a, b, c in zip(area.lo, area.hi, crop)]
    return [tuple(int(v) for v in corner) for corner in np.array(np.meshgrid(*starts, indexing="ij")).reshape(
        len(crop), -1).T]


@dataclass
class Splits:
    """Training crops, validation crops, and whether the validation area is held out from training."""

    train: "CropDataset"
    val: "CropDataset"
    held_out: bool


class CropDataset:
    """Crops of annotated images; item ``i`` is ``(image crop, label crop)`` (labels int32).

    With ``n`` given, the crops are random (see the module docstring) and
    item ``i`` depends only on ``(seed, i)``; without, they are the fixed
    tiles covering the areas (at most :data:`MAX_VAL_CROPS`, a seeded choice).
    """

    def __init__(self, source: AnnotatedImages, areas: list, crop: tuple, n: int | None, seed: int = 0,
                 augment: bool = True):
        self.source, self.areas, self.crop = source, list(areas), tuple(crop)
        self.seed, self.augment = int(seed), augment
        if n is None:
            tiles = [(a.pair, corner) for a in self.areas for corner in _tiles(a, self.crop)]
            if len(tiles) > MAX_VAL_CROPS:
                keep = np.random.default_rng([seed, 98]).choice(len(tiles), MAX_VAL_CROPS, replace=False)
                tiles = [tiles[i] for i in sorted(keep)]
            self.tiles: list | None = tiles
            self.n = len(tiles)
        else:
            self.tiles, self.n = None, int(n)
        sizes = np.array([np.prod(a.shape) for a in self.areas], float)
        self._weights = sizes / sizes.sum()

    def __len__(self) -> int:
        return self.n

    def _corner(self, rng: np.random.Generator) -> tuple[int, tuple]:
        area = self.areas[int(rng.choice(len(self.areas), p=self._weights))]
        lo, crop = np.asarray(area.lo), np.asarray(self.crop)
        last = np.asarray(area.hi) - crop  # the largest corner inside the area
        if len(area.labelled) and rng.random() < 0.5:
            centre = area.labelled[rng.integers(len(area.labelled))]
            corner = np.clip(centre - crop // 2, lo, last)
        else:
            corner = lo + (rng.random(len(lo)) * (last - lo + 1)).astype(np.int64)
        return area.pair, tuple(int(v) for v in corner)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} crops")
        rng = np.random.default_rng([self.seed, 96, int(i)])
        pair, corner = self.tiles[i] if self.tiles is not None else self._corner(rng)
        box = tuple(slice(c, c + s) for c, s in zip(corner, self.crop))
        image, labels = self.source.images[pair][box], self.source.labels[pair][box].astype(np.int32)
        if self.augment:
            image, labels = _flip_rotate(image, labels, rng, self.source.ndim)
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)

    def describe(self) -> dict:
        return {"kind": "annotated crops", "n": self.n, "crop": list(self.crop), "random": self.tiles is None}


def _flip_rotate(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, ndim: int):
    """The same random flips (every spatial axis) and 90-degree rotation (last two spatial axes, when square)."""
    for axis in range(ndim):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    k = int(rng.integers(4))
    if labels.shape[-1] == labels.shape[-2]:
        image, labels = np.rot90(image, k, axes=(ndim - 2, ndim - 1)), np.rot90(labels, k, axes=(ndim - 2, ndim - 1))
    return image, labels
