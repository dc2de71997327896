"""Turn an APR into napari layer data tuples (no napari import needed).

Used by the ``.apr`` reader and the widgets. A layer data tuple is
``(data, kwargs, layer_type)`` as napari's plugin interface defines it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_aprnet.lazy import stacked_pyramid

__all__ = ["LAZY_PIXELS", "LEVEL_COLORS", "METADATA_KEY", "APR_KEY", "apr_layer_data", "apr_metadata",
           "beside_translate", "lazy_layer_data", "pyramid_data", "use_lazy",
           "feature_montage",
           "level_color", "level_legend", "level_map_display", "particle_cells"]

#: One colour per particle cell side, 1, 2, 4, ... 512 pixels (512 and larger share the last):
#: viridis sampled at ten points (perceptually ordered, colour-blind safe), fine = bright.
#: Keyed to the cell size, not the level number, so a colour means the same on every image.
LEVEL_COLORS = ("#fde725", "#b5de2b", "#6ece58", "#35b779", "#1f9e89", "#26828e",
                "#31688e", "#3e4989", "#482878", "#440154")
#: Images with more values than this (all planes, channels and images of a stack) are shown as lazy
#: multiscale layers (64 Mi: a float32 reconstruction of 256 MiB plus a 64 MiB level map). Smaller
#: ones are reconstructed whole, so napari can render them at full resolution in 3D (of a multiscale
#: layer it renders only the coarsest level in 3D).
LAZY_PIXELS = 1 << 26
#: Layer metadata key holding a plain-dict summary of the APR.
METADATA_KEY = "aprnet"
#: Layer metadata key holding the APR object itself (for saving without re-conversion).
APR_KEY = "aprnet_apr"


def level_color(level: int, level_max: int) -> str:
    """Hex colour of particle cells of ``level`` in an APR whose pixel level is ``level_max``.

    The colour depends only on the cell side ``2 ** (level_max - level)`` pixels.
    """
    return LEVEL_COLORS[min(max(int(level_max) - int(level), 0), len(LEVEL_COLORS) - 1)]


def level_map_display(level_min: int, level_max: int) -> dict[str, Any]:
    """Image-layer keywords that colour a level map by cell size, as plain data (no napari import).

    The colormap has one bin per level ``level_min..level_max`` (stepwise,
    ``"zero"`` interpolation), coloured by :func:`level_color`; the contrast
    limits ``level_min - 0.5 .. level_max + 0.5`` put each level in the middle
    of its bin, so a colour always means the same cell size. Nearest-neighbour
    interpolation in 2D and 3D blends no levels across cell borders.
    """
    lo, hi = int(level_min), int(level_max)
    if not 0 <= lo <= hi:
        raise ValueError(f"invalid level range {lo}..{hi}")
    n = hi - lo + 1
    colormap = {"name": f"APR cell size (levels {lo}-{hi})", "interpolation": "zero",
                "colors": [level_color(lv, hi) for lv in range(lo, hi + 1)],
                "controls": [k / n for k in range(n + 1)]}
    return {"colormap": colormap, "contrast_limits": (lo - 0.5, hi + 0.5), "rgb": False,
            "interpolation2d": "nearest", "interpolation3d": "nearest"}


def level_legend(level_min: int, level_max: int, present=None) -> list[tuple[int, str, int]]:
    """``(level, colour, cell side in pixels)`` for each level (only those in ``present`` if given), finest first."""
    keep = None if present is None else {int(v) for v in present}
    return [(lv, level_color(lv, level_max), 1 << (int(level_max) - lv))
            for lv in range(int(level_max), int(level_min) - 1, -1) if keep is None or lv in keep]


def apr_metadata(apr, **extra: Any) -> dict[str, Any]:
    """Plain-dict summary of an APR: parameters, particle count, CR, levels."""
    params = apr.parameters
    meta = {
        "parameters": params.to_dict() if hasattr(params, "to_dict") else dict(params or {}),
        "n_particles": int(apr.n_particles),
        "computational_ratio": float(apr.computational_ratio),
        "level_min": int(apr.level_min),
        "level_max": int(apr.level_max),
        "shape": tuple(int(s) for s in apr.structure.shape),
    }
    meta.update(extra)
    return meta


def particle_cells(apr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, sides and levels of the particle cells, in pixel coordinates.

    Returns
    -------
    centres : ndarray of float, shape (Np, ndim)
        Centre of each particle cell, clipped to the image.
    sides : ndarray of int, shape (Np,)
        Cell side in pixels (``2 ** (level_max - level)``).
    levels : ndarray of uint8, shape (Np,)
    """
    s = apr.structure
    levels = np.asarray(s.levels)
    step = (1 << (int(s.level_max) - levels.astype(np.int64)))[:, None]
    lo = np.asarray(s.coords, dtype=np.int64) * step
    hi = np.minimum(lo + step, np.asarray(s.shape, dtype=np.int64)[None, :])
    centres = (lo + hi - 1) / 2.0
    return centres, step[:, 0], levels


def use_lazy(apr) -> bool:
    """True when the reconstruction of ``apr`` (all channels) has more than :data:`LAZY_PIXELS` values."""
    return int(apr.structure.n_pixels) * int(apr.n_channels) > LAZY_PIXELS


def apr_layer_data(apr, name: str = "image", *, mode: str = "constant", source: str | None = None,
                   reconstruction: np.ndarray | None = None, level_map: np.ndarray | None = None,
                   extra: dict | None = None, level_map_beside: bool = True, lazy: bool | None = None,
                   **layer_kwargs: Any) -> list[tuple[Any, dict, str]]:
    """Reconstruction and level map layer data of an APR (two Image layers).

    Parameters
    ----------
    apr : APR
    name : str
        Base name; layers are called ``"<name> reconstruction"`` and ``"<name> level map"``.
    mode : {"constant", "smooth"}
        Reconstruction mode.
    source : str, optional
        File the APR came from, recorded in the metadata.
    reconstruction, level_map : ndarray, optional
        Already computed ``apr.reconstruct(mode=mode)`` and ``apr.reconstruct(mode="level")``.
    extra : dict, optional
        More entries for ``metadata["aprnet"]`` (e.g. error statistics).
    level_map_beside : bool
        Place the level map (opaque; colours by :func:`level_map_display`) beside the
        reconstruction, to the right, so both can be read
        (default); False lays it over the reconstruction at 0.5 opacity.
    lazy : bool, optional
        Give lazy multiscale data (:func:`napari_aprnet.lazy.apr_pyramid`: the APR's own levels,
        tiles reconstructed on demand) instead of whole arrays. By default when the image has more
        than :data:`LAZY_PIXELS` values and no arrays are given.
    **layer_kwargs
        Passed to both layers (e.g. ``scale``, ``translate``).
    """
    meta = apr_metadata(apr, reconstruction_mode=mode, **({"source": source} if source else {}), **(extra or {}))
    if lazy is None:
        lazy = reconstruction is None and level_map is None and use_lazy(apr)
    if lazy:
        return lazy_layer_data([apr], name, meta=meta, mode=mode, level_map_beside=level_map_beside, **layer_kwargs)
    recon = np.asarray(apr.reconstruct(mode=mode) if reconstruction is None else reconstruction)
    if level_map is None:
        level_map = apr.reconstruct(mode="level")
    level_map = np.asarray(level_map).astype(np.uint8, copy=False)
    return _layer_tuples(apr, name, meta, recon, level_map, level_map_beside, layer_kwargs,
                         (apr.level_min, apr.level_max))


def lazy_layer_data(aprs, name: str = "image", *, meta: dict, lead_shape: tuple[int, ...] = (),
                    mode: str = "constant", level_map_beside: bool = True,
                    **layer_kwargs: Any) -> list[tuple[Any, dict, str]]:
    """Layer data of APRs as lazy multiscale reconstructions and level maps, stacked along ``lead_shape``.

    Each layer holds the pyramid of :func:`napari_aprnet.lazy.stacked_pyramid`
    (one level when the image is small); nothing of pixel size is computed
    here. The contrast limits are the range of the particle values.

    Parameters
    ----------
    aprs : sequence of APR
        Same shape and channels; row-major over ``lead_shape`` (one APR for ``()``).
    meta : dict
        The ``metadata["aprnet"]`` summary (see :func:`apr_metadata`).
    """
    recon = pyramid_data(stacked_pyramid(aprs, lead_shape, mode))
    level_map = pyramid_data(stacked_pyramid(aprs, lead_shape, "level"))
    kwargs = dict(layer_kwargs)
    if "contrast_limits" not in kwargs and aprs[0].n_channels == 1:
        lo, hi = min(float(np.min(a.values)) for a in aprs), max(float(np.max(a.values)) for a in aprs)
        kwargs["contrast_limits"] = (lo, hi if hi > lo else lo + 1.0)
    levels = (min(int(a.level_min) for a in aprs), max(int(a.level_max) for a in aprs))
    return _layer_tuples(aprs[0], name, {**meta, "lazy": True}, recon, level_map, level_map_beside, kwargs, levels)


def pyramid_data(levels: list):
    """napari's multiscale data of pyramid levels: the list of levels, or the one level itself."""
    return levels if len(levels) > 1 else levels[0]


def _layer_tuples(apr, name: str, meta: dict, recon, level_map, level_map_beside: bool,
                  layer_kwargs: dict, levels: tuple[int, int]) -> list[tuple[Any, dict, str]]:
    first_recon = recon[0] if isinstance(recon, list) else recon
    first_level = level_map[0] if isinstance(level_map, list) else level_map
    display = level_map_display(*levels)
    common = {k: v for k, v in layer_kwargs.items() if k not in display}
    multiscale = {"multiscale": True} if isinstance(recon, list) else {}
    rgb = first_recon.ndim == first_level.ndim + 1
    recon_kwargs = {"name": f"{name} reconstruction", "rgb": rgb,
                    "metadata": {METADATA_KEY: {**meta, "role": "reconstruction"}, APR_KEY: apr},
                    **multiscale, **layer_kwargs}
    level_kwargs = {"name": f"{name} level map", "opacity": 1.0 if level_map_beside else 0.5,
                    **display, "metadata": {METADATA_KEY: {**meta, "role": "level_map"}, APR_KEY: apr},
                    **multiscale, **common}
    if level_map_beside:
        level_kwargs["translate"] = beside_translate(first_level.shape, common.get("scale"), common.get("translate"))
    return [(recon, recon_kwargs, "image"), (level_map, level_kwargs, "image")]


def beside_translate(shape, scale=None, translate=None, gap: float = 0.05) -> tuple[float, ...]:
    """Translate that places an image of ``shape`` just right of one at ``translate`` (same scale)."""
    n = len(shape)
    scale = tuple(scale)[-n:] if scale is not None else (1.0,) * n
    out = list(tuple(translate)[-n:] if translate is not None else (0.0,) * n)
    out[-1] = float(out[-1]) + shape[-1] * float(scale[-1]) * (1 + gap)
    return tuple(float(v) for v in out)


def feature_montage(features: np.ndarray, gap: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Lay channel maps ``(C, h, w)`` out as a grid, each scaled to [0, 1] by its own 1-99 % range.

    Returns the montage ``(rows * (h + gap) - gap, cols * (w + gap) - gap)``
    (float32; gaps 0) and the top-left pixel ``(y, x)`` of each channel's tile.
    """
    features = np.asarray(features, dtype=np.float32)
    c, h, w = features.shape
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    out = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap), dtype=np.float32)
    corners = np.zeros((c, 2), dtype=np.int64)
    for k in range(c):
        r, q = divmod(k, cols)
        y, x = r * (h + gap), q * (w + gap)
        lo, hi = np.percentile(features[k], (1, 99))
        tile = (features[k] - lo) / (hi - lo) if hi > lo else np.zeros((h, w), np.float32)
        out[y:y + h, x:x + w] = np.clip(tile, 0, 1)
        corners[k] = (y, x)
    return out, corners
