"""Turn an APR into napari layer data tuples (no napari import needed).

Used by the ``.apr`` reader and the widgets. A layer data tuple is
``(data, kwargs, layer_type)`` as napari's plugin interface defines it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVEL_COLORS", "METADATA_KEY", "APR_KEY", "apr_layer_data", "apr_metadata", "beside_translate",
           "feature_montage",
           "level_color", "level_color_dict", "level_legend", "particle_cells"]

#: One colour per particle cell side, 1, 2, 4, ... 512 pixels (512 and larger share the last):
#: viridis sampled at ten points (perceptually ordered, colour-blind safe), fine = bright.
#: Keyed to the cell size, not the level number, so a colour means the same on every image.
LEVEL_COLORS = ("#fde725", "#b5de2b", "#6ece58", "#35b779", "#1f9e89", "#26828e",
                "#31688e", "#3e4989", "#482878", "#440154")
#: Layer metadata key holding a plain-dict summary of the APR.
METADATA_KEY = "aprnet"
#: Layer metadata key holding the APR object itself (for saving without re-conversion).
APR_KEY = "aprnet_apr"


def level_color(level: int, level_max: int) -> str:
    """Hex colour of particle cells of ``level`` in an APR whose pixel level is ``level_max``.

    The colour depends only on the cell side ``2 ** (level_max - level)`` pixels.
    """
    return LEVEL_COLORS[min(max(int(level_max) - int(level), 0), len(LEVEL_COLORS) - 1)]


def level_color_dict(level_min: int, level_max: int) -> dict[int | None, str]:
    """Labels-layer colour dictionary ``{level: colour}`` for levels ``level_min..level_max`` (pixel level)."""
    out: dict[int | None, str] = {lv: level_color(lv, level_max) for lv in range(int(level_min), int(level_max) + 1)}
    out[None] = "transparent"
    return out


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


def apr_layer_data(apr, name: str = "image", *, mode: str = "constant", source: str | None = None,
                   reconstruction: np.ndarray | None = None, level_map: np.ndarray | None = None,
                   extra: dict | None = None, level_map_beside: bool = True,
                   **layer_kwargs: Any) -> list[tuple[np.ndarray, dict, str]]:
    """Reconstruction (image) and level map (labels) layer data of an APR.

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
        Place the level map (opaque) beside the reconstruction, to the right, so both can be read
        (default); False lays it over the reconstruction at 0.5 opacity.
    **layer_kwargs
        Passed to both layers (e.g. ``scale``, ``translate``).
    """
    meta = apr_metadata(apr, reconstruction_mode=mode, **({"source": source} if source else {}), **(extra or {}))
    recon = np.asarray(apr.reconstruct(mode=mode) if reconstruction is None else reconstruction)
    if level_map is None:
        level_map = apr.reconstruct(mode="level")
    level_map = np.asarray(level_map).astype(np.uint8, copy=False)
    common = dict(layer_kwargs)
    rgb = recon.ndim == level_map.ndim + 1
    recon_kwargs = {"name": f"{name} reconstruction", "rgb": rgb,
                    "metadata": {METADATA_KEY: {**meta, "role": "reconstruction"}, APR_KEY: apr}, **common}
    level_kwargs = {"name": f"{name} level map", "opacity": 1.0 if level_map_beside else 0.5,
                    "colormap": level_color_dict(apr.level_min, apr.level_max),
                    "metadata": {METADATA_KEY: {**meta, "role": "level_map"}, APR_KEY: apr}, **common}
    if level_map_beside:
        level_kwargs["translate"] = beside_translate(level_map.shape, common.get("scale"), common.get("translate"))
    return [(recon, recon_kwargs, "image"), (level_map, level_kwargs, "labels")]


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
