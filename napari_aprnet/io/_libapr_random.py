"""LibAPR's older random-access layout: its gap map decoded into our particle cells.

Facts of the layout (LibAPR 2018-2019, ``RandomAccess`` / ``APRWriter``,
checked against the files LibAPR wrote with it)::

    map_level, map_z, map_x, map_number_gaps   (rows,)  the non-empty rows, by level, z, x
    map_y_begin, map_y_end                     (gaps,)  the runs of particle cells of each row, by y
    map_global_index                           (rows,)  delta-coded cumulative particle count at each
                                                        row's end (at its start in files of late June
                                                        2018), cast to 16 bits: only the low 16 bits
                                                        of each step survive, so it is only a check

``rows`` and ``gaps`` are the attributes ``total_number_non_empty_rows`` and
``total_number_gaps``; the 16-bit datasets hold unsigned values. The rows of
``level_max`` are kept on the grid of ``level_max - 1``: one stored row
stands for its two (2D) or four (3D) child rows at full resolution (those
inside the image), each with the same runs, ``y`` counted at ``level_max``.

Particle order: levels below ``level_max`` are in (level, z, x, y) order. At
``level_max``, files with the ``lzxy_order`` attribute (written from June 2019)
are in (z, x, y) order too; older files keep each stored row's child rows
together, in (z, x) order, one after another.

Files written before June 2018 (``particle_cell_type`` beside the map) keep
every level's rows at full resolution and store ``map_global_index`` per run
(the index of its first particle, delta-coded, or whole as uint64 in the
first ones); they are read too. Everything is checked (ranges, order, counts
against the attributes, the global index) before cells are made, and the
dataset sizes against the attributes before anything is read.
"""
from __future__ import annotations

import numpy as np

from napari_aprnet.io.apr_h5 import APRFileError, _dataset_obj
from napari_aprnet.structure import level_shape

_ROW_SETS = ("map_level", "map_z", "map_x", "map_number_gaps")
_GAP_SETS = ("map_y_begin", "map_y_end")
#: Every dataset of the map (none of them particle values).
MAP_DATASETS = frozenset(_ROW_SETS + _GAP_SETS + ("map_global_index", "particle_cell_type"))


def _read_map(group, n_rows: int, n_gaps: int, per_gap: bool, path: str) -> dict[str, np.ndarray]:
    """The map's datasets as int64, their shapes and types checked before anything is read."""
    sizes = dict.fromkeys(_ROW_SETS, n_rows) | dict.fromkeys(_GAP_SETS, n_gaps)
    sizes["map_global_index"] = n_gaps if per_gap else n_rows
    found = {}
    for name, size in sizes.items():
        ds = _dataset_obj(group, name, path)
        if ds.shape != (size,) or ds.dtype.kind not in "iu" or ds.dtype.itemsize > 8:
            raise APRFileError(f"{path}: {name} has shape {ds.shape} and type {ds.dtype}, expected ({size},) "
                               f"integers for {n_rows} non-empty rows and {n_gaps} gaps (the attributes "
                               f"total_number_non_empty_rows / total_number_gaps); the file is damaged")
        found[name] = ds
    out = {}
    for name, ds in found.items():
        arr = ds[()]
        if name != "map_global_index" and arr.dtype.kind == "i" and arr.dtype.itemsize <= 2:
            arr = arr.view(arr.dtype.str.replace("i", "u"))  # LibAPR wrote unsigned values as int16
        out[name] = arr.astype(np.int64)
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    ends = np.cumsum(counts)
    return np.repeat(starts - (ends - counts), counts) + np.arange(int(ends[-1]) if len(ends) else 0)


class _Grids:
    """Cells per axis of each level, and of the grid the map stores each level's rows on."""

    def __init__(self, dims3, level_max: int, per_gap: bool):
        shapes = np.array([level_shape(dims3, level_max, lv) for lv in range(level_max + 1)], np.int64)
        self.z, self.x, self.y = shapes.T
        self.row_z, self.row_x = self.z.copy(), self.x.copy()
        self.parent_rows = not per_gap and level_max > 0
        if self.parent_rows:
            self.row_z[level_max], self.row_x[level_max] = self.z[level_max - 1], self.x[level_max - 1]


def _check_rows(m: dict, g: _Grids, level_min: int, level_max: int, n_gaps: int, path: str) -> None:
    lv, z, x, ng = m["map_level"], m["map_z"], m["map_x"], m["map_number_gaps"]
    if lv.size and (lv.min() < level_min or lv.max() > level_max):
        raise APRFileError(f"{path}: map_level holds levels outside {level_min}..{level_max}; the file is damaged")
    if np.any(z >= g.row_z[lv]) or np.any(x >= g.row_x[lv]) or np.any(ng < 1) or ng.sum() != n_gaps:
        raise APRFileError(f"{path}: the rows of the random-access map (map_z, map_x, map_number_gaps) do not "
                           f"fit the image or the {n_gaps} gaps; the file is damaged")
    row_offsets = np.concatenate([[0], np.cumsum(g.row_z * g.row_x)])
    if np.any(np.diff(row_offsets[lv] + z * g.row_x[lv] + x) <= 0):
        raise APRFileError(f"{path}: the rows of the random-access map are not in (level, z, x) order; "
                           f"the file is damaged")


def _check_gaps(m: dict, g: _Grids, gap_row: np.ndarray, path: str) -> np.ndarray:
    """Check the runs of each row; return their lengths."""
    yb, ye = m["map_y_begin"], m["map_y_end"]
    overlap = (gap_row[1:] == gap_row[:-1]) & (yb[1:] <= ye[:-1])
    if np.any(ye < yb) or np.any(ye >= g.y[m["map_level"][gap_row]]) or np.any(overlap):
        raise APRFileError(f"{path}: map_y_begin / map_y_end hold runs that are empty, overlap or lie beyond "
                           f"their level's y size; the file is damaged")
    return ye - yb + 1


def _child_rows(m: dict, g: _Grids, level_max: int):
    """Rows at full resolution in file order: (source row, level, z, x) of each."""
    lv, z, x = m["map_level"], m["map_z"], m["map_x"]
    parent = (lv == level_max) & g.parent_rows
    dz, dx = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    cz = np.where(parent[:, None], 2 * z[:, None] + dz, z[:, None])
    cx = np.where(parent[:, None], 2 * x[:, None] + dx, x[:, None])
    keep = np.where(parent[:, None], (cz < g.z[lv][:, None]) & (cx < g.x[lv][:, None]), dz + dx == 0)
    src = np.broadcast_to(np.arange(len(lv))[:, None], keep.shape)
    return src[keep], lv[src[keep]], cz[keep], cx[keep]


def _check_global_index(stored: np.ndarray, sizes: np.ndarray, path: str) -> None:
    """``stored`` must code the cumulative ``sizes``: ends or starts, delta-coded in 16 bits or whole."""
    ends = np.cumsum(sizes)
    for expected in (ends, ends - sizes):
        if np.array_equal(stored, expected) or not np.any((stored - np.diff(expected, prepend=0)) % 65536):
            return
    raise APRFileError(f"{path}: map_global_index disagrees with the particle counts of the runs; the file "
                       f"is damaged (or written by a LibAPR version whose layout napari-aprnet does not know)")


def random_access_cells(group, dims3, level_min: int, level_max: int, counts: tuple[int, int, int],
                        per_gap: bool, lzxy_order: bool, path: str):
    """Decode the random-access map of ``group`` into particle cells.

    Parameters
    ----------
    group : h5py.Group
        The channel group holding the ``map_*`` datasets.
    dims3 : tuple of int
        Image size ``(z_num, x_num, y_num)``.
    counts : (int, int, int)
        ``total_number_particles``, ``total_number_non_empty_rows`` and
        ``total_number_gaps``, already checked against the image size.
    per_gap : bool
        The pre-June-2018 variant (rows at full resolution, one global index per run).
    lzxy_order : bool
        The particle values are in (level, z, x, y) order at every level.

    Returns
    -------
    levels : ndarray of uint8
    coords3 : ndarray of int32, shape (n, 3)
        ``(z, x, y)`` of each cell, in (level, z, x, y) order.
    value_order : ndarray of int64 or None
        Index of each cell's value in the file's particle order (None: the same order).
    """
    n_total, n_rows, n_gaps = counts
    m = _read_map(group, n_rows, n_gaps, per_gap, path)
    g = _Grids(dims3, level_max, per_gap)
    _check_rows(m, g, level_min, level_max, n_gaps, path)
    gap_row = np.repeat(np.arange(n_rows), m["map_number_gaps"])
    sizes = _check_gaps(m, g, gap_row, path)
    row_sizes = np.bincount(gap_row, weights=sizes, minlength=n_rows).astype(np.int64)
    src, lv, z, x = _child_rows(m, g, level_max)
    if int(row_sizes[src].sum()) != n_total:
        raise APRFileError(f"{path}: the random-access map describes {int(row_sizes[src].sum())} particles, the "
                           f"attribute total_number_particles says {n_total}; the file is damaged")
    _check_global_index(m["map_global_index"], sizes if per_gap else
                        np.bincount(src, weights=row_sizes[src], minlength=n_rows).astype(np.int64), path)
    return _cells_of_rows(m, sizes, row_sizes, (src, lv, z, x), lzxy_order)


def _cells_of_rows(m: dict, sizes: np.ndarray, row_sizes: np.ndarray, rows_in_file, lzxy_order: bool):
    """Cells of the full-resolution rows (given in file order) in our order, and where their values are."""
    src, lv, z, x = rows_in_file
    counts_in_file = row_sizes[src]
    rows = np.lexsort((x, z, lv))  # only the rows of level_max can move
    src, lv, z, x = src[rows], lv[rows], z[rows], x[rows]
    gap_start = np.cumsum(m["map_number_gaps"]) - m["map_number_gaps"]
    gaps = _ranges(gap_start[src], m["map_number_gaps"][src])
    owner = np.repeat(np.arange(len(src)), row_sizes[src])
    coords3 = np.empty((len(owner), 3), np.int32)
    coords3[:, 0], coords3[:, 1] = z[owner], x[owner]
    coords3[:, 2] = _ranges(m["map_y_begin"][gaps], sizes[gaps])
    levels = lv[owner].astype(np.uint8)
    if lzxy_order or np.array_equal(rows, np.arange(len(rows))):
        return levels, coords3, None
    return levels, coords3, _ranges((np.cumsum(counts_in_file) - counts_in_file)[rows], counts_in_file[rows])
