"""Sample images for demos, the napari sample menu and tests (no GUI imports).

Every generator is seeded and deterministic: the same arguments give the same
array on every machine.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fluorescence_blobs", "natural_photo", "shapes_gallery"]


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
