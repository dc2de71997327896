"""Lazy array-likes of an APR's image: pixels reconstructed from the particles on demand.

:class:`LazyReconstruction` looks like a read-only numpy array of the
reconstruction (``shape``, ``dtype``, ``ndim``, ``size``, integer and slice
indexing with steps, ``numpy.asarray``) but holds only the particles: a
selection is reconstructed when it is read, and nothing of the full pixel
size is allocated. :func:`apr_pyramid` gives one per resolution level of the
APR, the multiscale data napari browses; :class:`LazyStack` stacks them along
leading axes (a time series, an E sweep).

Pyramid levels
--------------
Level ``k`` of the pyramid is the grid of APR level ``L = level_max - k``
(cells of ``2**k`` pixels, ``ceil(n / 2**k)`` per axis). A cell covered by a
particle of level ``<= L`` shows that particle's value; a cell holding finer
particles (an interior tree node) shows the APR tree's value:

- ``"constant"``: the tree mean, the mean of the cell's children inside the
  image, each child counting once, recursively (LibAPR's tree mean). Inside
  the image this is the mean of the ``2**k``-pixel block of the constant
  reconstruction; along the far edges, where blocks are cut, it is the
  repeated 2x mean in which a cut pair counts its one existing child.
- ``"level"`` (the level map): the finest particle level inside the cell.
- ``"smooth"``: the smooth reconstruction of the level-``L`` APR, the
  particles of levels ``<= L`` plus the tree nodes of level ``L`` carrying
  their tree means (built once per level, on first use).

Making a view builds the APR's row tables (once per APR, linear in the
particles; a file reader has built them already while checking the file).
Slicing (slices only, with any steps) gives a lazy view of the selection,
as numpy slicing gives a view: nothing is read. napari's multiscale slicing
relies on this: it first cuts a tile across all planes, then picks one. A
selection with an integer index (a plane, a row, a value) is read and
returned as a numpy array, unless it holds more than ``eager_values`` values
(then it stays lazy too). ``numpy.asarray`` reads any view, except one larger
than ``max_values``: that raises :class:`MemoryError` instead. Arrays read
are read-only (they may be shared with a small cache of recently read
regions).
"""
from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from napari_aprnet import _native
from napari_aprnet.coarsen import level_apr
from napari_aprnet.structure import APRStructure, level_shape

__all__ = ["LazyReconstruction", "LazyStack", "TileCache", "apr_pyramid", "pyramid_depth", "stacked_pyramid"]

MODES = ("constant", "smooth", "level")
#: Selections with an integer index up to this many values are read at once (larger ones stay lazy).
EAGER_VALUES = 1 << 24
#: ``numpy.asarray`` refuses views larger than this (1 GiB of float32).
MAX_VALUES = 1 << 28
#: The coarsest pyramid level has at most this many cells per image (napari renders it in 3D).
COARSEST_VALUES = 1 << 22


class TileCache:
    """A thread-safe least-recently-used cache of reconstructed regions, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        """The cached array for ``key`` (now most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray) -> None:
        """Store a read-only ``value``, dropping the least recently used ones beyond ``max_bytes``."""
        if value.nbytes > self.max_bytes:
            return
        value.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += value.nbytes - (old.nbytes if old is not None else 0)
            self._items[key] = value
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes


# ----- index arithmetic -----------------------------------------------------

def _expand_key(key, ndim: int) -> list:
    """The key as one int or slice per axis (Ellipsis expanded, missing axes full)."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for an array of {ndim} dimensions")
    items = []
    for k in key:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (slice, int, np.integer)):
            raise TypeError(f"lazy APR images take integers and slices as indices, got {k!r}; "
                            "read a region first (np.asarray(view[...])) for other indexing")
        items.append(k)
    return items + [slice(None)] * (ndim - len(items))


def _take_axis(axis: range, item, length_name: str = "axis") -> range | int:
    """Index a progression of base indices with an int (-> base index) or a slice (-> progression)."""
    if isinstance(item, slice):
        return axis[item]
    n = len(axis)
    i = int(item)
    if not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for {length_name} with size {n}")
    return axis[i]


def _bounds(axis: range) -> tuple[int, int, int, bool]:
    """(low, high, step, reversed) of the cells a non-empty progression reads, ascending."""
    lo, hi = min(axis[0], axis[-1]), max(axis[0], axis[-1])
    return lo, hi + 1, abs(axis.step), axis.step < 0


def _as_slice(axis: range) -> slice:
    """The slice selecting a progression (``range(5, -1, -2)`` -> ``slice(5, None, -2)``)."""
    return slice(axis.start, axis.stop if axis.stop >= 0 else None, axis.step)


class _LazyArray:
    """Shared behaviour: shape, size, the eager rule of indexing, the ``__array__`` guard."""

    shape: tuple[int, ...]
    dtype: np.dtype
    eager_values = EAGER_VALUES
    max_values = MAX_VALUES

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the values would take in memory."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d lazy image")
        return self.shape[0]

    def __getitem__(self, key):
        items = _expand_key(key, self.ndim)
        view = self._select(items)
        if isinstance(view, _LazyArray) and (all(isinstance(k, slice) for k in items)
                                             or view.size > self.eager_values):
            return view
        out = np.asarray(view)
        return out[()] if out.ndim == 0 else out  # a scalar for a single value, as numpy gives

    def __array__(self, dtype=None, copy=None):
        if self.size > self.max_values:
            raise MemoryError(
                f"this lazy APR image has {self.size:,} values ({self.nbytes / 2**30:.1f} GiB); it is not "
                "reconstructed whole: index a region (view[z0:z1, y0:y1, x0:x1]) or use a coarser pyramid level")
        out = np.asarray(self._materialize())
        return out if dtype is None else out.astype(dtype, copy=False)

    def _select(self, items: list):
        raise NotImplementedError

    def _materialize(self) -> np.ndarray:
        raise NotImplementedError


# ----- one APR ----------------------------------------------------------------

_SOURCE_KEYS = itertools.count()


class _Source:
    """What a lazy reconstruction reads: an APR at one grid level in one mode, and a tile cache."""

    def __init__(self, structure: APRStructure, values: np.ndarray | None, mode: str, level: int,
                 cache: TileCache):
        self.structure, self.values, self.mode, self.level, self.cache = structure, values, mode, level, cache
        self.shape = level_shape(structure.shape, structure.level_max, level)
        self._derived: tuple | None = None
        self._lock = threading.Lock()
        self._key = next(_SOURCE_KEYS)  # unique for the life of the process (an id() can be reused)
        # the row tables, once per APR (cached on the structure): built now, typically in a worker,
        # not on napari's first slice
        _native.particle_table(structure)
        if mode == "smooth" and level == structure.level_max:
            _native.tree_table(structure)

    def read(self, region: tuple, step: tuple) -> np.ndarray:
        """Cells of ``region`` (per axis (start, stop)) every ``step`` cells, channels last (cached)."""
        key = (self._key, region, step)
        out = self.cache.get(key)
        if out is None:
            structure, values, level = self.structure, self.values, self.level
            if self.mode == "smooth" and level < structure.level_max:
                structure, values = self._smooth_level_apr()
                level = structure.level_max
            out = _native.reconstruct(structure, values, self.mode, region, level=level, step=step)
            out = out.astype(np.uint8) if self.mode == "level" else out
            self.cache.put(key, out)
        return out

    def _smooth_level_apr(self) -> tuple[APRStructure, np.ndarray]:
        with self._lock:
            if self._derived is None:
                self._derived = level_apr(self.structure, self.values, self.level)
            return self._derived


class LazyReconstruction(_LazyArray):
    """Read-only array-like of an APR's reconstruction at one grid level, computed on demand.

    Parameters
    ----------
    structure : APRStructure
    values : ndarray (Np,) or (Np, C), or None
        Particle values (float32); ignored for ``mode="level"``.
    mode : {"constant", "smooth", "level"}
        See the module docstring; ``"level"`` gives uint8 levels, the others float32.
    pyramid_level : int
        0 for pixels, ``k`` for cells of ``2**k`` pixels (APR level ``level_max - k``).
    cache : TileCache, optional
        Shared cache of reconstructed regions (a 64 MiB one of its own if None).
    """

    def __init__(self, structure: APRStructure, values=None, mode: str = "constant", pyramid_level: int = 0,
                 cache: TileCache | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown reconstruction mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0 <= int(pyramid_level) <= structure.level_max:
            raise ValueError(f"pyramid level {pyramid_level} is outside 0..{structure.level_max}")
        if mode != "level":
            values = np.asarray(values, dtype=np.float32)
            if values.ndim not in (1, 2) or values.shape[0] != structure.n_particles:
                raise ValueError(f"values must have shape ({structure.n_particles},) or "
                                 f"({structure.n_particles}, C), got {values.shape}")
        else:
            values = None
        source = _Source(structure, values, mode, structure.level_max - int(pyramid_level), cache or TileCache())
        channels = range(values.shape[1]) if values is not None and values.ndim == 2 else None
        self._init_view(source, [range(n) for n in source.shape], channels)

    @classmethod
    def _view(cls, source: _Source, axes: list, channels) -> "LazyReconstruction":
        view = cls.__new__(cls)
        view._init_view(source, axes, channels)
        return view

    def _init_view(self, source: _Source, axes: list, channels) -> None:
        self._source = source
        self._axes = axes  # per spatial axis: a range of cells (kept) or an int (dropped)
        self._channels = channels  # None (one value per particle), a range or an int
        self.dtype = np.dtype(np.uint8 if source.mode == "level" else np.float32)
        kept = [len(a) for a in axes if isinstance(a, range)]
        self.shape = tuple(kept) + ((len(channels),) if isinstance(channels, range) else ())

    @property
    def mode(self) -> str:
        """Reconstruction mode."""
        return self._source.mode

    @property
    def pyramid_level(self) -> int:
        """0 for pixels, ``k`` for cells of ``2**k`` pixels."""
        return self._source.structure.level_max - self._source.level

    def _select(self, items: list) -> "LazyReconstruction":
        items = iter(items)
        axes = [_take_axis(a, next(items)) if isinstance(a, range) else a for a in self._axes]
        channels = self._channels
        if isinstance(channels, range):
            channels = _take_axis(channels, next(items), "the channel axis")
        return self._view(self._source, axes, channels)

    def _materialize(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros(self.shape, dtype=self.dtype)
        region, step, flips, picks = [], [], [], []
        for a in self._axes:
            ax = a if isinstance(a, range) else range(a, a + 1)
            lo, hi, st, rev = _bounds(ax)
            region.append((lo, hi))
            step.append(st)
            flips.append(slice(None, None, -1) if rev else slice(None))
            picks.append(slice(None) if isinstance(a, range) else 0)
        out = self._source.read(tuple(region), tuple(step))
        if self._channels is None:
            out = out[tuple(flips)][tuple(picks)]
        else:
            ch = self._channels if isinstance(self._channels, int) else _as_slice(self._channels)
            out = out[tuple(flips) + (slice(None),)][tuple(picks) + (ch,)]
        return out

    def __repr__(self) -> str:
        return (f"LazyReconstruction(shape={self.shape}, dtype={self.dtype}, mode={self.mode!r}, "
                f"pyramid_level={self.pyramid_level})")


# ----- stacks -------------------------------------------------------------------

class LazyStack(_LazyArray):
    """Lazy images of the same shape and dtype stacked along leading axes.

    Parameters
    ----------
    images : sequence of LazyReconstruction (or LazyStack)
        In row-major order of ``lead_shape``.
    lead_shape : tuple of int, optional
        Shape of the leading axes (default ``(len(images),)``).
    """

    def __init__(self, images: Sequence[_LazyArray], lead_shape: tuple[int, ...] | None = None):
        images = list(images)
        lead_shape = (len(images),) if lead_shape is None else tuple(int(n) for n in lead_shape)
        if not images or math.prod(lead_shape) != len(images):
            raise ValueError(f"{len(images)} images do not fill leading axes of shape {lead_shape}")
        if len({(im.shape, np.dtype(im.dtype)) for im in images}) != 1:
            raise ValueError("stacked lazy images must all have the same shape and dtype")
        self._images, self._lead = images, lead_shape
        self.dtype = np.dtype(images[0].dtype)
        self.shape = lead_shape + tuple(images[0].shape)

    @property
    def images(self) -> list:
        """The stacked images, row-major over the leading axes."""
        return list(self._images)

    def _select(self, items: list):
        lead_items, rest = items[: len(self._lead)], items[len(self._lead):]
        picked = [_take_axis(range(n), k) for n, k in zip(self._lead, lead_items)]
        kept = tuple(len(p) for p in picked if isinstance(p, range))
        index_lists = [p if isinstance(p, range) else [p] for p in picked]
        flat = [int(np.ravel_multi_index(ix, self._lead)) for ix in _product(index_lists)]
        chosen = [self._images[i]._select(list(rest)) for i in flat]
        if not kept:
            return chosen[0]
        if not chosen:
            return np.zeros(kept + tuple(self._images[0]._select(list(rest)).shape), dtype=self.dtype)
        return LazyStack(chosen, kept)

    def _materialize(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        flat = out.reshape((-1,) + self.shape[len(self._lead):])
        for i, image in enumerate(self._images):
            flat[i] = np.asarray(image) if isinstance(image, _LazyArray) else image
        return out

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self.dtype}, images={len(self._images)})"


def _product(lists: list) -> list[tuple]:
    out: list[tuple] = [()]
    for options in lists:
        out = [prefix + (int(v),) for prefix in out for v in options]
    return out


# ----- pyramids -------------------------------------------------------------------

def pyramid_depth(shape: tuple[int, ...], level_max: int, coarsest_values: int = COARSEST_VALUES) -> int:
    """Number of pyramid levels: down to the first with at most ``coarsest_values`` cells (or level 0)."""
    k = 0
    while k < level_max and math.prod(level_shape(shape, level_max, level_max - k)) > coarsest_values:
        k += 1
    return k + 1


def apr_pyramid(apr, mode: str = "constant", values=None, *, n_levels: int | None = None,
                cache: TileCache | None = None) -> list[LazyReconstruction]:
    """Multiscale lazy reconstruction of an APR, finest first (see the module docstring).

    Parameters
    ----------
    apr : APR
    mode : {"constant", "smooth", "level"}
    values : array_like, optional
        Per-particle values to show instead of the APR's own (e.g. a feature map).
    n_levels : int, optional
        Number of levels; by default down to the first with at most 4 Mi cells.
    cache : TileCache, optional
        Shared by the levels (a new 64 MiB one if None).

    Returns
    -------
    list of LazyReconstruction
        Level ``k`` has cells of ``2**k`` pixels.
    """
    s = apr.structure
    n = pyramid_depth(s.shape, s.level_max) if n_levels is None else int(n_levels)
    if not 1 <= n <= s.level_max + 1:
        raise ValueError(f"n_levels must be in 1..{s.level_max + 1}, got {n_levels}")
    cache = cache or TileCache()
    vals = None if mode == "level" else (apr.values if values is None else values)
    return [LazyReconstruction(s, vals, mode, k, cache) for k in range(n)]


def stacked_pyramid(aprs, lead_shape: tuple[int, ...] = (), mode: str = "constant", *,
                    n_levels: int | None = None, cache: TileCache | None = None) -> list:
    """Pyramids of APRs of one image shape stacked along leading axes (a time series, an E sweep).

    Parameters
    ----------
    aprs : sequence of APR
        Row-major over ``lead_shape``; one APR when ``lead_shape`` is ``()``.
    lead_shape : tuple of int
    mode, n_levels, cache
        As for :func:`apr_pyramid` (one cache for all).

    Returns
    -------
    list
        Level ``k``: a :class:`LazyStack` of the APRs' level ``k`` (the APR's own level for ``()``).
    """
    aprs = list(aprs)
    lead_shape = tuple(int(n) for n in lead_shape)
    if len(aprs) != math.prod(lead_shape):
        raise ValueError(f"{len(aprs)} APRs do not fill leading axes of shape {lead_shape}")
    if len({(a.shape, a.n_channels) for a in aprs}) != 1:
        raise ValueError("stacked APRs must have the same image shape and number of channels")
    s = aprs[0].structure
    n = pyramid_depth(s.shape, s.level_max) if n_levels is None else int(n_levels)
    cache = cache or TileCache()
    pyramids = [apr_pyramid(a, mode, n_levels=n, cache=cache) for a in aprs]
    if not lead_shape:
        return pyramids[0]
    return [LazyStack([p[k] for p in pyramids], lead_shape) for k in range(n)]
