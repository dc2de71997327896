"""Shared test helpers and fixtures (keep this module light: numpy only at import).

Plain functions (importable as ``from conftest import random_structure``) and
fixtures wrapping them:

- :func:`random_structure` -- a random valid particle-cell partition (quadtree
  / octree) of an image grid, with no other APR rule (no level balance).
- :func:`cell_means` -- numpy mean of the pixels in each particle cell.
- :func:`random_values` -- reproducible random particle values.
- :func:`shown_colour` -- the RGB a napari Image layer shows for a data value,
  and :func:`assert_level_colours` -- a level map layer shows each level in
  the legend's colour of its cell size (GUI tests).

The GUI tests (``tests/gui/``, napari widgets under Xvfb with pytest-qt) are
all marked ``gui`` here; without napari that folder is not collected, and
without a display (pytest-xvfb sets ``DISPLAY`` when Xvfb is installed)
its tests are skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from napari_aprnet.structure import APRStructure, level_max_for_shape, level_shape

_GUI_DIR = os.path.join(os.path.dirname(__file__), "gui")
collect_ignore_glob = [] if importlib.util.find_spec("napari") else ["gui/*"]


def pytest_collection_modifyitems(config, items):
    # DISPLAY is read now, not at import: pytest-xvfb sets it when it starts Xvfb
    no_display = sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
    skip = pytest.mark.skip(reason="napari widgets need a display: install Xvfb (apt-get install xvfb) "
                                   "for pytest-xvfb")
    for item in items:
        if str(item.fspath).startswith(_GUI_DIR):
            item.add_marker(pytest.mark.gui)
            if no_display:
                item.add_marker(skip)


@pytest.fixture
def notes(monkeypatch):
    """Collect the notifications the widgets show, as (message, level), instead of showing them."""
    import pkgutil

    from napari_aprnet import _widgets
    from napari_aprnet._widgets import _common

    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(_common, "notify", lambda message, level="error": shown.append((message, level)))
    for info in pkgutil.iter_modules(_widgets.__path__):
        module = __import__(f"napari_aprnet._widgets.{info.name}", fromlist=["notify"])
        if hasattr(module, "notify") and module is not _common:
            monkeypatch.setattr(module, "notify", _common.notify)
    return shown


def random_structure(shape, seed: int = 0, *, p_split: float = 0.55,
                     min_level: int = 1, level_max: int | None = None) -> APRStructure:
    """Return a random valid partition of ``shape`` into dyadic particle cells.

    Cells are split recursively from the root: always above ``min_level``,
    then with probability ``p_split``; cells entirely outside the image are
    dropped, so cells at the image border are clipped like in a real APR.

    Parameters
    ----------
    shape : tuple of int
        ``(y, x)`` or ``(z, y, x)``.
    seed : int
        Seed of the random generator (same seed, same structure).
    p_split : float
        Probability of splitting a cell below ``min_level``.
    min_level : int
        Every cell coarser than this level is split.
    level_max : int, optional
        Defaults to ``ceil(log2(max(shape)))``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    lmax = level_max_for_shape(shape) if level_max is None else int(level_max)
    rng = np.random.default_rng(seed)
    offsets = np.array(np.meshgrid(*([[0, 1]] * ndim), indexing="ij")).reshape(ndim, -1).T
    cells = np.zeros((1, ndim), dtype=np.int64)
    levels_out, coords_out = [], []
    for level in range(lmax + 1):
        if level == lmax:
            split = np.zeros(len(cells), dtype=bool)
        elif level < min_level:
            split = np.ones(len(cells), dtype=bool)
        else:
            split = rng.random(len(cells)) < p_split
        keep = cells[~split]
        levels_out.append(np.full(len(keep), level, dtype=np.uint8))
        coords_out.append(keep)
        children = (cells[split][:, None, :] * 2 + offsets[None]).reshape(-1, ndim)
        if level < lmax:
            grid = np.array(level_shape(shape, lmax, level + 1))
            children = children[np.all(children < grid, axis=1)]
        cells = children
    return APRStructure.from_unsorted(shape, lmax, np.concatenate(levels_out),
                                      np.concatenate(coords_out).astype(np.int32))


def cell_means(structure: APRStructure, image: np.ndarray) -> np.ndarray:
    """Mean of the pixels of ``image`` inside each particle cell (float64, numpy reference).

    ``image`` has the structure's shape, optionally with trailing channels.
    """
    ids = structure.particle_id_image().ravel()
    img = np.asarray(image, dtype=np.float64).reshape(ids.size, -1)
    counts = np.bincount(ids, minlength=structure.n_particles).astype(np.float64)
    sums = np.stack([np.bincount(ids, weights=img[:, c], minlength=structure.n_particles)
                     for c in range(img.shape[1])], axis=1)
    means = sums / counts[:, None]
    return means[:, 0] if np.ndim(image) == structure.ndim else means


def random_values(structure: APRStructure, channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Reproducible random float32 particle values, ``(Np,)`` or ``(Np, channels)``."""
    rng = np.random.default_rng(seed)
    size = (structure.n_particles,) if channels is None else (structure.n_particles, channels)
    return rng.standard_normal(size).astype(np.float32)


def shown_colour(layer, value: float) -> np.ndarray:
    """RGB (0-1) a napari Image layer shows for data ``value``: its contrast limits, gamma and colormap."""
    lo, hi = layer.contrast_limits
    return np.asarray(layer.colormap.map([((value - lo) / (hi - lo)) ** layer.gamma])[0][:3])


def assert_level_colours(layer, level_max: int) -> None:
    """``layer`` is an Image layer showing each level it holds in the legend's colour of its cell size."""
    from napari.layers import Image
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_aprnet._layer_data import level_legend

    assert isinstance(layer, Image) and layer.interpolation2d == "nearest"
    present = np.unique(np.asarray(layer.data))
    legend = level_legend(int(present.min()), level_max, present)
    assert sorted(level for level, _, _ in legend) == present.tolist()
    for level, colour, _ in legend:
        np.testing.assert_allclose(shown_colour(layer, level), transform_color(colour)[0][:3], atol=1e-6)


@pytest.fixture
def make_structure():
    """Fixture returning :func:`random_structure`."""
    return random_structure


@pytest.fixture
def structure_2d() -> APRStructure:
    """A small random 2D structure with odd sides (clipped border cells)."""
    return random_structure((37, 53), seed=1)


@pytest.fixture
def structure_3d() -> APRStructure:
    """A small random 3D structure with odd sides."""
    return random_structure((11, 19, 23), seed=2)
