"""The APR of a coarser grid level: its particles down to that level plus the tree nodes of the level.

Used for the smooth images of the coarser pyramid levels
(:mod:`napari_aprnet.lazy`): a tree node carries the tree mean of the
particles inside it, the mean of its children inside the image, each child
counting once, recursively (LibAPR's tree mean).
"""
from __future__ import annotations

import numpy as np

from napari_aprnet.structure import APRStructure, level_shape

__all__ = ["level_apr"]


def level_apr(structure: APRStructure, values: np.ndarray, level: int) -> tuple[APRStructure, np.ndarray]:
    """The APR of grid level ``level``: particles of levels ``<= level`` plus the tree nodes of that level.

    Tree nodes carry the tree mean of their particles (the mean of the
    children inside the image, each counting once, recursively). The result
    is a structure whose pixel grid is the level's grid (``level_max = level``).
    """
    off = structure.level_offsets
    values = np.asarray(values, dtype=np.float32)
    if level >= structure.level_max:
        return structure, values
    flat = values.reshape(len(values), -1)
    coords = structure.coords[off[structure.level_max]: off[structure.level_max + 1]].astype(np.int64)
    vals = flat[off[structure.level_max]: off[structure.level_max + 1]].astype(np.float64)
    for lv in range(structure.level_max - 1, level - 1, -1):  # nodes of level lv from the cells of lv + 1
        grid = level_shape(structure.shape, structure.level_max, lv)
        keys, inverse = np.unique(np.ravel_multi_index(tuple((coords >> 1).T), grid), return_inverse=True)
        counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
        sums = np.stack([np.bincount(inverse, weights=vals[:, c], minlength=len(keys))
                         for c in range(vals.shape[1])], axis=1)
        node_coords = np.stack(np.unravel_index(keys, grid), axis=1)
        node_vals = sums / counts[:, None]
        if lv > level:
            here = slice(off[lv], off[lv + 1])
            coords = np.concatenate([node_coords, structure.coords[here].astype(np.int64)])
            vals = np.concatenate([node_vals, flat[here].astype(np.float64)])
    keep = slice(0, off[level + 1])
    order = _sort_order(structure, node_coords, level)
    derived = APRStructure(
        level_shape(structure.shape, structure.level_max, level), level,
        np.concatenate([structure.levels[keep], np.full(len(node_coords), level, np.uint8)])[order],
        np.concatenate([structure.coords[keep], node_coords.astype(np.int32)])[order],
        min(structure.level_min, level))
    out = np.concatenate([flat[keep], node_vals.astype(np.float32)])[order]
    return derived, out.reshape(-1) if values.ndim == 1 else out


def _sort_order(structure: APRStructure, node_coords: np.ndarray, level: int) -> np.ndarray:
    """Permutation putting [particles of levels <= level | nodes of level] in structure order."""
    off = structure.level_offsets
    n_coarse = int(off[level])
    grid = level_shape(structure.shape, structure.level_max, level)
    parts = structure.coords[off[level]: off[level + 1]].astype(np.int64)
    keys = np.concatenate([np.ravel_multi_index(tuple(parts.T), grid),
                           np.ravel_multi_index(tuple(node_coords.T), grid)])
    tail = n_coarse + np.argsort(keys, kind="stable")
    return np.concatenate([np.arange(n_coarse), tail])
