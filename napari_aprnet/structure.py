"""The particle-cell structure of an APR: where particles are, at which level.

This is the contract shared by the converter (``apr.py``), the network layers
(``nn/``) and the GUI. It holds no particle values.

Conventions
-----------
- ``shape`` is the pixel grid at ``level_max`` as numpy axes: ``(y, x)`` or
  ``(z, y, x)``.
- ``level_max = ceil(log2(max(shape)))`` for an image; after APR max pooling
  a structure has ``shape = ceil(shape / 2)`` and ``level_max - 1``.
- Level ``l`` has ``ceil(n / 2**(level_max - l))`` cells along an axis of
  ``n`` pixels; a cell at level ``l`` with coordinate ``c`` covers pixels
  ``[c * 2**(level_max - l), (c + 1) * 2**(level_max - l))`` clipped to the image.
- Particle order: by level (coarse to fine), then row-major at the particle's
  own level (x fastest). ``level_offsets[l]:level_offsets[l + 1]`` are the
  particles of level ``l`` (``level_offsets`` has ``level_max + 2`` entries).
- The interior tree holds every strict ancestor of a particle, levels
  ``0 .. level_max - 1``, in the same order, with its own offsets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = ["APRStructure", "level_max_for_shape", "level_shape"]


def level_max_for_shape(shape: tuple[int, ...]) -> int:
    """Return ``ceil(log2(max side))`` (0 for a single pixel)."""
    side = max(int(s) for s in shape)
    if side < 1:
        raise ValueError(f"image shape must have positive sides, got {tuple(shape)}")
    return int(side - 1).bit_length()


def level_shape(shape: tuple[int, ...], level_max: int, level: int) -> tuple[int, ...]:
    """Number of cells per axis at ``level`` for a grid of ``shape`` at ``level_max``."""
    step = 1 << (level_max - level)
    return tuple(-(-int(s) // step) for s in shape)


def _row_major_keys(coords: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    keys = np.zeros(len(coords), dtype=np.int64)
    for axis, n in enumerate(grid):
        keys = keys * int(n) + coords[:, axis].astype(np.int64)
    return keys


def _sorted_by_level_then_position(levels: np.ndarray, coords: np.ndarray,
                                   shape: tuple[int, ...], level_max: int):
    """Return (levels, coords, offsets) sorted by level then row-major position."""
    order_parts = []
    offsets = np.zeros(level_max + 2, dtype=np.int64)
    for level in range(level_max + 1):
        idx = np.flatnonzero(levels == level)
        keys = _row_major_keys(coords[idx], level_shape(shape, level_max, level))
        order_parts.append(idx[np.argsort(keys, kind="stable")])
        offsets[level + 1] = offsets[level] + len(idx)
    order = np.concatenate(order_parts) if order_parts else np.zeros(0, dtype=np.int64)
    return levels[order], coords[order], offsets


@dataclass(frozen=True, eq=False)
class APRStructure:
    """Particle cells of an APR (no values).

    Parameters
    ----------
    shape : tuple of int
        Pixel grid at ``level_max``, numpy axis order.
    level_max : int
        Finest level (pixel level of ``shape``).
    levels : ndarray of uint8, shape (Np,)
        Level of each particle, sorted as described in the module docstring.
    coords : ndarray of int32, shape (Np, ndim)
        Coordinates of each particle at its own level.
    level_min : int, optional
        Coarsest level the formation allowed (defaults to the coarsest level present).
    """

    shape: tuple[int, ...]
    level_max: int
    levels: np.ndarray
    coords: np.ndarray
    level_min: int = -1
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"an APR structure is 2D or 3D, got shape {shape}")
        object.__setattr__(self, "shape", shape)
        levels = np.ascontiguousarray(self.levels, dtype=np.uint8)
        coords = np.ascontiguousarray(self.coords, dtype=np.int32).reshape(-1, len(shape))
        if len(levels) != len(coords):
            raise ValueError(f"levels ({len(levels)}) and coords ({len(coords)}) differ in length")
        levels.setflags(write=False)
        coords.setflags(write=False)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "coords", coords)
        if self.level_min < 0:
            lmin = int(levels.min()) if len(levels) else 0
            object.__setattr__(self, "level_min", lmin)

    # ----- construction -------------------------------------------------
    @classmethod
    def from_unsorted(cls, shape, level_max: int, levels, coords, level_min: int = -1) -> "APRStructure":
        """Build a structure from particles in any order (they are sorted)."""
        shape = tuple(int(s) for s in shape)
        levels = np.asarray(levels, dtype=np.uint8)
        coords = np.asarray(coords, dtype=np.int32).reshape(-1, len(shape))
        levels, coords, _ = _sorted_by_level_then_position(levels, coords, shape, level_max)
        return cls(shape, level_max, levels, coords, level_min)

    # ----- basic properties ---------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.shape)

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return int(len(self.levels))

    @property
    def n_pixels(self) -> int:
        """Number of pixels of the grid at ``level_max``."""
        return int(np.prod(self.shape))

    @property
    def computational_ratio(self) -> float:
        """Pixels per particle (CR)."""
        return self.n_pixels / max(self.n_particles, 1)

    def level_shape(self, level: int) -> tuple[int, ...]:
        """Cells per axis at ``level``."""
        return level_shape(self.shape, self.level_max, level)

    @cached_property
    def level_offsets(self) -> np.ndarray:
        """Start of each level's particles; length ``level_max + 2``."""
        counts = np.bincount(self.levels, minlength=self.level_max + 1)[: self.level_max + 1]
        off = np.zeros(self.level_max + 2, dtype=np.int64)
        np.cumsum(counts, out=off[1:])
        off.setflags(write=False)
        return off

    # ----- interior tree --------------------------------------------------
    @cached_property
    def tree(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interior tree nodes (every strict ancestor of a particle).

        Returns
        -------
        levels : ndarray of uint8, coords : ndarray of int32 (Nt, ndim), offsets : ndarray of int64
            Sorted like the particles; ``offsets`` has ``level_max + 2`` entries.
        """
        off = self.level_offsets
        nodes_by_level: list[np.ndarray] = [np.zeros((0, self.ndim), np.int32)] * (self.level_max + 1)
        carried = np.zeros((0, self.ndim), dtype=np.int32)
        for level in range(self.level_max, 0, -1):
            here = self.coords[off[level]: off[level + 1]]
            current = np.concatenate([carried, here]) if len(carried) else here
            parents = current >> 1
            grid = self.level_shape(level - 1)
            keys = np.unique(_row_major_keys(parents, grid))
            parents = np.stack(np.unravel_index(keys, grid), axis=1).astype(np.int32) if len(keys) \
                else np.zeros((0, self.ndim), np.int32)
            nodes_by_level[level - 1] = parents
            carried = parents
        levels = np.concatenate([np.full(len(n), lv, np.uint8) for lv, n in enumerate(nodes_by_level)])
        coords = np.concatenate(nodes_by_level).astype(np.int32, copy=False)
        counts = np.array([len(n) for n in nodes_by_level], dtype=np.int64)
        offsets = np.zeros(self.level_max + 2, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        for a in (levels, coords, offsets):
            a.setflags(write=False)
        return levels, coords, offsets

    # ----- pixel footprint -----------------------------------------------
    def cell_bounds(self, index: int) -> tuple[tuple[int, int], ...]:
        """Pixel ranges ``(start, stop)`` per axis covered by particle ``index``."""
        step = 1 << (self.level_max - int(self.levels[index]))
        return tuple((int(c) * step, min((int(c) + 1) * step, n))
                     for c, n in zip(self.coords[index], self.shape))

    @cached_property
    def pixel_counts(self) -> np.ndarray:
        """Number of image pixels covered by each particle's cell (int64, ``(Np,)``), clipped to the image."""
        steps = np.left_shift(np.int64(1), (self.level_max - self.levels.astype(np.int64)))
        counts = np.ones(self.n_particles, dtype=np.int64)
        for axis, n in enumerate(self.shape):
            start = self.coords[:, axis].astype(np.int64) * steps
            counts *= np.minimum(start + steps, n) - start
        counts.setflags(write=False)
        return counts

    def particle_id_image(self) -> np.ndarray:
        """Dense image of the index of the particle covering each pixel (numpy, for tests and small images)."""
        out = np.full(self.shape, -1, dtype=np.int64)
        off = self.level_offsets
        for level in range(self.level_max + 1):
            lo, hi = off[level], off[level + 1]
            if lo == hi:
                continue
            step = 1 << (self.level_max - level)
            grid = self.level_shape(level)
            ids = np.full(grid, -1, dtype=np.int64)
            ids[tuple(self.coords[lo:hi, a] for a in range(self.ndim))] = np.arange(lo, hi)
            up = ids
            for axis in range(self.ndim):
                up = np.repeat(up, step, axis=axis)
            up = up[tuple(slice(0, n) for n in self.shape)]
            mask = up >= 0
            out[mask] = up[mask]
        return out

    def __repr__(self) -> str:
        return (f"APRStructure(shape={self.shape}, particles={self.n_particles}, "
                f"CR={self.computational_ratio:.2f}, levels={self.level_min}..{self.level_max})")


# ----- validation (pure numpy) -----

def check_cell_arrays(shape, level_max: int, levels: np.ndarray, coords: np.ndarray, what: str = "particles"):
    """The checks of :func:`validate_cells` that do not look at each cell: shape, level_max, array shapes.

    Returns
    -------
    (shape, level_max, levels, coords)
        As a tuple of int, an int and two arrays.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    level_max = int(level_max)
    if ndim not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{what}: shape must be 2D or 3D with positive sides, got {shape}")
    if not level_max_for_shape(shape) <= level_max <= 30:
        raise ValueError(f"{what}: level_max {level_max} does not fit shape {shape} "
                         f"(need {level_max_for_shape(shape)}..30)")
    levels = np.asarray(levels)
    coords = np.asarray(coords)
    if levels.ndim != 1 or coords.shape != (len(levels), ndim):
        raise ValueError(f"{what}: levels {levels.shape} and coords {coords.shape} do not match "
                         f"(expected (n,) and (n, {ndim}))")
    return shape, level_max, levels, coords


def validate_cells(shape, level_max: int, levels: np.ndarray, coords: np.ndarray,
                   what: str = "particles") -> np.ndarray:
    """Check cells are inside their level grids and sorted; return level offsets.

    Parameters
    ----------
    shape : tuple of int
        Pixel grid at ``level_max`` (2D or 3D).
    level_max : int
        Finest level; ``2 ** level_max`` must cover the longest side.
    levels : ndarray of uint8, shape (n,)
    coords : ndarray of int32, shape (n, ndim)
    what : str
        Name used in error messages.

    Returns
    -------
    ndarray of int64, shape (level_max + 2,)
        Start of each level's cells.

    Raises
    ------
    ValueError
        If a level or coordinate is out of range, or the cells are not sorted
        by level then row-major position without duplicates.
    """
    shape, level_max, levels, coords = check_cell_arrays(shape, level_max, levels, coords, what)
    if len(levels) and int(levels.max()) > level_max:
        raise ValueError(f"{what}: level {int(levels.max())} is above level_max {level_max}")
    if len(levels) > 1 and np.any(np.diff(levels.astype(np.int16)) < 0):
        raise ValueError(f"{what}: cells are not sorted by level")
    counts = np.bincount(levels, minlength=level_max + 1)[: level_max + 1]
    offsets = np.zeros(level_max + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for level in range(level_max + 1):
        lo, hi = offsets[level], offsets[level + 1]
        if lo == hi:
            continue
        c = coords[lo:hi].astype(np.int64)
        grid = level_shape(shape, level_max, level)
        if c.min() < 0 or np.any(c >= np.array(grid)):
            raise ValueError(f"{what}: a level-{level} coordinate is outside the level grid {grid}")
        keys = np.zeros(len(c), dtype=np.int64)
        for axis, n in enumerate(grid):
            keys = keys * int(n) + c[:, axis]
        if len(keys) > 1 and np.any(np.diff(keys) <= 0):
            raise ValueError(f"{what}: level-{level} cells are not in row-major order or repeat a cell")
    return offsets


def validate_structure(structure: APRStructure, *, partition: bool = True) -> None:
    """Check that a structure is usable: cells in range, sorted and (optionally) a partition.

    Parameters
    ----------
    structure : APRStructure
    partition : bool
        Also check that the cells cover every pixel exactly once.

    Raises
    ------
    ValueError
        Describing the first problem found.
    """
    offsets = validate_cells(structure.shape, structure.level_max, structure.levels, structure.coords)
    if structure.n_particles == 0:
        raise ValueError("the structure has no particles")
    if not 0 <= structure.level_min <= int(structure.levels.min()):
        raise ValueError(f"level_min {structure.level_min} is above the coarsest particle level "
                         f"{int(structure.levels.min())}")
    if not partition:
        return
    lmax = structure.level_max
    step = (np.int64(1) << (lmax - structure.levels.astype(np.int64)))[:, None]
    lo = structure.coords.astype(np.int64) * step
    hi = np.minimum(lo + step, np.asarray(structure.shape, dtype=np.int64))
    volume = int(np.prod(hi - lo, axis=1).sum())
    if volume != structure.n_pixels:
        raise ValueError(f"the particle cells cover {volume} pixels, the image has {structure.n_pixels}: "
                         "they are not a partition of the image")
    t_levels, t_coords, t_offsets = structure.tree
    for level in range(lmax + 1):
        p = structure.coords[offsets[level]:offsets[level + 1]]
        t = t_coords[t_offsets[level]:t_offsets[level + 1]]
        if len(p) and len(t):
            grid = structure.level_shape(level)
            pk = np.ravel_multi_index(tuple(p.T.astype(np.int64)), grid)
            tk = np.ravel_multi_index(tuple(t.T.astype(np.int64)), grid)
            if np.intersect1d(pk, tk).size:
                raise ValueError(f"a level-{level} particle cell contains other particle cells: "
                                 "the cells overlap")
