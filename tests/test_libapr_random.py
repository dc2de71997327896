"""LibAPR's older random-access layout: files rewritten from linear ones read back to the same APR; damaged files.

The writer below is test code: it turns a linear-layout LibAPR file (pyapr's
fixtures, or ours) into the random-access layout as LibAPR 2018-2019 wrote it
(see the docstring of ``napari_aprnet.io._libapr_random``).
"""
from __future__ import annotations

import glob
import os
import re

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for editing the fixtures)
import numpy as np
import pytest
from conftest import random_structure, random_values

from napari_aprnet import APR, APRFileError
from napari_aprnet.io.libapr import read_libapr
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import level_shape

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "libapr")
FILES = sorted(glob.glob(os.path.join(FIXTURES, "*.apr")))
VARIANTS = ("old-order", "lzxy-order", "per-gap-2018")


def _map_of(structure, per_gap: bool):
    """The random-access map of a structure: stored rows, runs, and each stored row's child-row count."""
    s = structure
    c3 = np.concatenate([np.zeros((s.n_particles, 3 - s.ndim), np.int64), s.coords.astype(np.int64)], axis=1)
    lv, (z, x, y) = s.levels.astype(np.int64), c3.T
    parent = (lv == s.level_max) & (not per_gap)
    keep = ~parent | ((z % 2 == 0) & (x % 2 == 0))  # a stored level_max row stands for its child rows
    klv, kz, kx, ky = lv[keep], np.where(parent, z // 2, z)[keep], np.where(parent, x // 2, x)[keep], y[keep]
    new_row = np.r_[True, (klv[1:] != klv[:-1]) | (kz[1:] != kz[:-1]) | (kx[1:] != kx[:-1])]
    run_start = np.flatnonzero(new_row | np.r_[True, ky[1:] != ky[:-1] + 1])
    run_end = np.r_[run_start[1:], len(ky)] - 1
    row_start = np.flatnonzero(new_row)
    run_row = np.searchsorted(row_start, run_start, side="right") - 1
    dz, dx, _ = level_shape((1,) * (3 - s.ndim) + s.shape, s.level_max, s.level_max)
    rz, rx = kz[row_start], kx[row_start]
    children = np.where(parent[keep][row_start], (1 + (2 * rz + 1 < dz)) * (1 + (2 * rx + 1 < dx)), 1)
    rows = {"map_level": klv[row_start], "map_z": kz[row_start], "map_x": kx[row_start],
            "map_number_gaps": np.bincount(run_row, minlength=len(row_start))}
    runs = {"map_y_begin": ky[run_start], "map_y_end": ky[run_end]}
    run_sizes = run_end - run_start + 1
    return rows, runs, run_sizes, run_row, children


def to_random_access(path, variant: str = "old-order") -> None:
    """Rewrite the linear-layout LibAPR file ``path`` in place in the random-access layout ``variant``."""
    contents = read_libapr(path)
    s = contents.structure
    per_gap = variant == "per-gap-2018"
    rows, runs, run_sizes, run_row, children = _map_of(s, per_gap)
    row_counts = np.bincount(run_row, weights=run_sizes, minlength=len(children)).astype(np.int64) * children
    index = np.cumsum(run_sizes) - run_sizes if per_gap else np.cumsum(row_counts)  # run starts / row ends
    order = None
    if variant == "old-order":  # level_max particles grouped by stored row, child rows one after another
        c3 = np.concatenate([np.zeros((s.n_particles, 3 - s.ndim), np.int64), s.coords], axis=1)
        top = s.levels == s.level_max
        order = np.lexsort((c3[:, 2], c3[:, 1], c3[:, 0], np.where(top, c3[:, 1] // 2, c3[:, 1]),
                            np.where(top, c3[:, 0] // 2, c3[:, 0]), s.levels))
    with h5py.File(path, "r+") as h5:
        g = h5["ParticleRepr/t"]
        for name in ("y_vec", "xz_end_vec", "Tree"):
            del g[name]
        for name, data in (rows | runs).items():
            g.create_dataset(name, data=data.astype(np.uint8 if name == "map_level" else np.int16))
        g["map_global_index"] = (np.diff(index, prepend=0) % 65536).astype(np.uint16).view(np.int16)
        meta = g.parent if per_gap else g  # files of early 2018 keep the attributes on /ParticleRepr
        if per_gap:
            g["particle_cell_type"] = np.zeros(len(children), np.uint8)
            for name, value in list(g.attrs.items()):
                meta.attrs[name] = value
                del g.attrs[name]
        meta.attrs.create("total_number_gaps", [len(run_sizes)], dtype=np.uint64)
        meta.attrs.create("total_number_non_empty_rows", [len(children)], dtype=np.uint64)
        if variant != "lzxy-order":
            del meta.attrs["lzxy_order"]
        for name in contents.particles if order is not None else ():
            data = g[name][()][order]
            del g[name]
            g[name] = data


def _copy(tmp_path, source, variant):
    path = tmp_path / f"{variant}.apr"
    path.write_bytes(open(source, "rb").read())
    to_random_access(path, variant)
    return path


def _assert_same(random_path, linear_path):
    a, b = read_libapr(random_path), read_libapr(linear_path)
    assert a.attributes["layout"] == "random-access" and b.attributes["layout"] == "linear"
    sa, sb = a.structure, b.structure
    assert (sa.shape, sa.level_max, sa.level_min) == (sb.shape, sb.level_max, sb.level_min)
    np.testing.assert_array_equal(sa.levels, sb.levels)
    np.testing.assert_array_equal(sa.coords, sb.coords)
    assert list(a.particles) == list(b.particles) and a.attributes["particle_dtypes"] == b.attributes["particle_dtypes"]
    for name in a.particles:
        np.testing.assert_array_equal(a.particles[name], b.particles[name])
    assert a.parameters == b.parameters and a.attributes["libapr_parameters"] == b.attributes["libapr_parameters"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", FILES, ids=os.path.basename)
def test_random_access_reads_as_the_linear_file(tmp_path, source, variant):
    path = _copy(tmp_path, source, variant)
    _assert_same(path, source)
    with h5py.File(path) as h5:  # the rewrite did move level_max values (3D) and dropped the linear access
        assert "y_vec" not in h5["ParticleRepr/t"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (11, 19, 23), (5, 1, 7)])
def test_odd_sizes_clip_the_child_rows(tmp_path, shape, variant):
    s = random_structure(shape, seed=3, p_split=0.6)
    linear = tmp_path / "linear.apr"
    APR(s, random_values(s, seed=4), APRParameters(rel_error=0.2, dx=0.5)).save(linear, format="libapr")
    path = _copy(tmp_path, linear, variant)
    _assert_same(path, linear)


def test_old_order_values_are_moved(tmp_path):
    source = os.path.join(FIXTURES, "blobs3d_u16.apr")
    path = _copy(tmp_path, source, "old-order")
    with h5py.File(path) as a, h5py.File(source) as b:
        stored, linear = a["ParticleRepr/t/particles"][()], b["ParticleRepr/t/particles"][()]
    assert not np.array_equal(stored, linear)  # the file's order differs, the read values do not
    np.testing.assert_array_equal(read_libapr(path).particles["particles"], linear.astype(np.float32))


def _edit(tmp_path, edit, variant="old-order"):
    path = _copy(tmp_path, os.path.join(FIXTURES, "blobs3d_u16.apr"), variant)
    with h5py.File(path, "r+") as h5:
        edit(h5["ParticleRepr/t"])
    return path


def _set(group, name, change):
    data = change(group[name][()].copy())
    del group[name]
    group[name] = data


def _swap_first_rows(a):
    a[[0, 1]] = a[[1, 0]]
    return a


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.attrs.create("total_number_gaps", [g["map_y_end"].shape[0] + 1], dtype=np.uint64),
     "map_y_begin has shape"),
    (lambda g: g.attrs.create("total_number_non_empty_rows", [2**31], dtype=np.uint64), "non-empty rows"),
    (lambda g: g.attrs.create("total_number_particles", [2**31], dtype=np.uint64), "total_number_particles is"),
    (lambda g: g.attrs.create("total_number_particles", g.attrs["total_number_particles"] - 1, dtype=np.uint64),
     "describes"),
    (lambda g: g.__delitem__("map_z"), "'map_z' is missing"),
    (lambda g: _set(g, "map_level", lambda a: a + 9), "levels outside"),
    (lambda g: _set(g, "map_x", lambda a: a + 500), "do not fit"),
    (lambda g: _set(g, "map_number_gaps", lambda a: a * 0), "do not fit"),
    (lambda g: _set(g, "map_x", _swap_first_rows), "not in \\(level, z, x\\) order"),
    (lambda g: _set(g, "map_y_end", lambda a: a * 0 - 1), "runs"),
    (lambda g: _set(g, "map_y_begin", lambda a: g["map_y_end"][()] + 1), "runs"),
    (lambda g: _set(g, "map_global_index", lambda a: a + 1), "map_global_index disagrees"),
    (lambda g: _set(g, "map_global_index", lambda a: a[:-1]), "map_global_index has shape"),
    (lambda g: g.attrs.create("compress_type", [1], dtype=np.int32), "lossy compression"),
    (lambda g: g.__delitem__("map_level"), "holds neither"),
])
def test_damaged_random_access_files_are_refused(tmp_path, edit, message):
    with pytest.raises(APRFileError, match=message):
        read_libapr(_edit(tmp_path, edit))


def test_truncated_random_access_file_is_refused(tmp_path):
    path = _copy(tmp_path, os.path.join(FIXTURES, "blobs3d_u16.apr"), "old-order")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(APRFileError, match=re.escape(str(path))):
        read_libapr(path)
