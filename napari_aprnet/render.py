"""Turn reconstructions and level maps into displayable uint8 images (no GUI imports).

Level colours are the ones the napari widgets use (``_layer_data.LEVEL_COLORS``),
so a PNG written by ``aprnet convert --level-map`` looks like the viewer.
"""
from __future__ import annotations

import numpy as np

from napari_aprnet._layer_data import level_color

__all__ = ["level_map_rgb", "to_uint8", "middle_slice"]


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def level_map_rgb(levels_img: np.ndarray, level_min: int, level_max: int) -> np.ndarray:
    """Colour a level map: one distinct colour per level.

    Parameters
    ----------
    levels_img : ndarray of int
        Particle level of each pixel (``APR.reconstruct(mode="level")``).
    level_min, level_max : int
        Range of levels of the APR; pixels outside it are black.

    Returns
    -------
    ndarray of uint8, shape ``levels_img.shape + (3,)``
    """
    levels_img = np.asarray(levels_img)
    if not np.issubdtype(levels_img.dtype, np.integer):
        raise TypeError(f"a level map must hold integers, got dtype {levels_img.dtype}")
    level_min, level_max = int(level_min), int(level_max)
    if not 0 <= level_min <= level_max:
        raise ValueError(f"invalid level range {level_min}..{level_max}")
    lut = np.zeros((level_max + 2, 3), dtype=np.uint8)
    for level in range(level_min, level_max + 1):
        lut[level] = _hex_to_rgb(level_color(level, level_max))
    idx = np.where((levels_img >= level_min) & (levels_img <= level_max), levels_img, level_max + 1)
    return lut[idx.astype(np.intp)]


def to_uint8(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale an image linearly to uint8 (``lo`` -> 0, ``hi`` -> 255; default its min and max).

    uint8 input is returned unchanged; a constant image maps to 0. NaNs map to 0.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8 and lo is None and hi is None:
        return image
    data = image.astype(np.float64)
    finite = np.isfinite(data)
    if lo is None:
        lo = float(data[finite].min()) if finite.any() else 0.0
    if hi is None:
        hi = float(data[finite].max()) if finite.any() else 0.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.clip((np.where(finite, data, lo) - lo) * scale, 0, 255)
    return np.rint(out).astype(np.uint8)


def middle_slice(image: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """The middle z-slice of a 3D image (channels kept); 2D images unchanged."""
    image = np.asarray(image)
    if spatial_ndim == 3:
        return image[image.shape[0] // 2]
    return image
