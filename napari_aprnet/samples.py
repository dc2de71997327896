"""Sample images for demos, the napari sample menu and tests (no GUI imports).

Every generator is seeded and deterministic: the same arguments give the same
array on every machine.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fluorescence_blobs", "lattice_blobs_apr", "natural_photo", "nuclei_image", "shapes_gallery"]

#: Seed of the nuclei sample: never used by a training stream or dataset (those use seeds 0, 1, ...).
NUCLEI_SAMPLE_SEED = 20261201


def fluorescence_blobs(shape: tuple[int, ...] = (32, 128, 128), n_blobs: int = 40, *,
                       seed: int = 0, radius: tuple[float, float] = (2.0, 6.0),
                       background: float = 100.0, brightness: float = 1000.0,
                       noise: bool = True) -> np.ndarray:
    """Return a fluorescence-like image of Gaussian blobs with Poisson noise.

    Parameters
    ----------
    shape : tuple of int
        Image shape, ``(y, x)`` or ``(z, y, x)``.
    n_blobs : int
        Number of blobs.
    seed : int
        Seed of the random generator (positions, sizes, brightness, noise).
    radius : (float, float)
        Range of the blob standard deviations in pixels.
    background : float
        Constant background photon count.
    brightness : float
        Mean peak photon count of a blob.
    noise : bool
        Draw Poisson noise (True) or return the noise-free expectation.

    Returns
    -------
    ndarray of uint16
        The image.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2D or 3D with positive sides, got {shape}")
    if n_blobs < 0:
        raise ValueError(f"n_blobs must be >= 0, got {n_blobs}")
    rng = np.random.default_rng(seed)
    expected = np.full(shape, float(background), dtype=np.float64)
    for _ in range(int(n_blobs)):
        centre = rng.uniform(0, shape)
        sigma = rng.uniform(*radius)
        peak = brightness * rng.uniform(0.3, 1.0)
        half = int(np.ceil(3 * sigma))
        lo = [max(0, int(c) - half) for c in centre]
        hi = [min(n, int(c) + half + 1) for c, n in zip(centre, shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        grids = np.ogrid[tuple(slice(l, h) for l, h in zip(lo, hi))]
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        expected[tuple(slice(l, h) for l, h in zip(lo, hi))] += peak * np.exp(-r2 / (2 * sigma**2))
    image = rng.poisson(expected) if noise else np.rint(expected)
    return np.clip(image, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def natural_photo() -> np.ndarray:
    """Return a 512 x 512 grayscale photograph (scikit-image's public-domain "camera").

    scikit-image ships this file inside its wheel, so no network is needed; it is
    installed together with napari.

    Raises
    ------
    ImportError
        If scikit-image is not installed.
    """
    try:  # an optional dependency (installed with napari): imported on use
        from skimage import data
    except ImportError as exc:  # pragma: no cover - napari depends on scikit-image
        raise ImportError("the natural photo sample needs scikit-image "
                          "(pip install scikit-image)") from exc
    return np.asarray(data.camera())


def shapes_gallery(size: int = 256, *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Return one synthetic-shapes image per class, stacked along axis 0.

    Parameters
    ----------
    size : int
        Side of each square image.
    seed : int
        Seed of the generator.

    Returns
    -------
    images : ndarray, shape (n_classes, size, size)
    class_names : list of str
    """
    # napari_aprnet.data imports torch: imported on use, to keep the sample menu light
    from napari_aprnet.data.shapes import ShapesDataset

    dataset = ShapesDataset(1, seed=seed, size=size, split=0)
    images = np.stack([dataset[i][0] for i in range(len(dataset))])
    return images, list(dataset.class_names)


def nuclei_image(shape: tuple[int, ...] = (512, 512), *, seed: int = NUCLEI_SAMPLE_SEED
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence image of nuclei (touching pairs included) and its instance labels.

    The same generator as the ``nuclei2d``/``nuclei3d`` training data
    (:func:`napari_aprnet.data.nuclei.make_nuclei`, default parameters).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` or ``(D, H, W)``, each side >= 16.
    seed : int
        Seed of the generator.

    Returns
    -------
    image : ndarray of float32
    labels : ndarray of int32
        0 background, 1..n nuclei.
    """
    from napari_aprnet.data.nuclei import make_nuclei

    return make_nuclei(np.random.default_rng(seed), shape)


def lattice_blobs_apr(shape: tuple[int, ...] = (64, 256, 256), *, period: int = 64, radius: float = 6.0,
                      coarse_cell: int = 16, background: float = 100.0, brightness: float = 1000.0):
    """An APR made directly, without a pixel image: Gaussian blobs on a lattice, fine cells around them.

    Cells of ``coarse_cell`` pixels cover the image; a cell whose centre lies
    closer than ``radius + 2 * side`` to a blob centre (the lattice points
    ``period / 2 + i * period`` per axis) is split into its children, down to
    pixels. Each particle's value is ``background + brightness * exp(-d**2 /
    (2 radius**2))`` at its cell centre (``d`` to the nearest blob), rounded
    like uint16 data. Big synthetic volumes (512 x 2048 x 2048) take seconds
    and only the particles' memory, for benchmarks and tests of browsing.

    Returns
    -------
    APR
        With ``parameters`` None (it was not formed from an image).
    """
    from napari_aprnet.apr import APR
    from napari_aprnet.structure import APRStructure, level_max_for_shape, level_shape

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1 or period < 1 or radius <= 0:
        raise ValueError(f"need a 2D or 3D shape with positive sides, period >= 1 and radius > 0; got "
                         f"{shape}, {period}, {radius}")
    level_max = level_max_for_shape(shape)
    coarse = max(0, level_max - max(int(coarse_cell), 1).bit_length() + 1)
    cells = np.stack(np.unravel_index(np.arange(np.prod(level_shape(shape, level_max, coarse))),
                                      level_shape(shape, level_max, coarse)), axis=1).astype(np.int64)
    levels, coords = [], []
    for level in range(coarse, level_max + 1):
        side = 1 << (level_max - level)
        centre = (cells * side + np.minimum(cells * side + side, shape) - 1) / 2.0
        near = _lattice_distance(centre, period) < radius + 2 * side
        if level == level_max:
            near[:] = False
        levels.append(np.full(int((~near).sum()), level, np.uint8))
        coords.append(cells[~near])
        cells = _children(cells[near], level_shape(shape, level_max, level + 1)) if near.any() \
            else np.zeros((0, len(shape)), np.int64)
    structure = APRStructure(shape, level_max, np.concatenate(levels), np.concatenate(coords), coarse)
    side = (1 << (level_max - structure.levels.astype(np.int64)))[:, None]
    lo = structure.coords.astype(np.int64) * side
    centre = (lo + np.minimum(lo + side, shape) - 1) / 2.0
    values = background + brightness * np.exp(-_lattice_distance(centre, period) ** 2 / (2 * radius**2))
    return APR(structure, np.rint(values).astype(np.float32))


def _lattice_distance(points: np.ndarray, period: int) -> np.ndarray:
    """Distance from each point to the nearest lattice point ``period / 2 + i * period``."""
    q = np.mod(points - period / 2.0, period)
    return np.sqrt((np.minimum(q, period - q) ** 2).sum(axis=1))


def _children(cells: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The children (inside ``grid``) of cells, sorted row-major."""
    ndim = cells.shape[1]
    offsets = np.stack(np.unravel_index(np.arange(1 << ndim), (2,) * ndim), axis=1)
    kids = (cells[:, None, :] * 2 + offsets[None]).reshape(-1, ndim)
    kids = kids[np.all(kids < np.asarray(grid), axis=1)]
    keys = np.ravel_multi_index(tuple(kids.T), grid)
    return kids[np.argsort(keys, kind="stable")]
