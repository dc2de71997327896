"""LibAPR's own files (random-access and linear layouts) against the reconstructions LibAPR stored beside them.

The files come from LibAPR's public git repository, read with ``git cat-file``
from a local clone named by ``APRNET_LIBAPR_REPO`` (default: this project's
mirror); without it the tests are skipped. None of LibAPR's files are copied
into this repository. Commits are given in full, so the files are fixed.
"""
from __future__ import annotations

import io
import os
import subprocess

import h5py
import numpy as np
import pytest

from napari_aprnet import APR
from napari_aprnet.io.libapr import read_libapr
from napari_aprnet.structure import level_shape

REPO = os.environ.get("APRNET_LIBAPR_REPO", "/work/.mirror/AdaptiveParticles+LibAPR/repo")
BENCH = "d926bb5f37ccf7c9a8e9a691c58a74191b7c478f"  # 2019-06-11, written by LibAPR of 2018-09 (githash 14e180df)
HEAD = "202fed95a798e58b142f59e0372ee69c0cd405ae"
SPHERE = "test/files/Apr/sphere_120/sphere"
# (commit, file, its reference) of each random-access layout variant LibAPR wrote, the reference stored with it
RANDOM_REFERENCED = {
    "2018-06-rows-ends": ("fafb7cf40d7e149542a814f41fac22fd0f4943e0", f"{SPHERE}_apr.h5", SPHERE),
    "2018-06-rows-starts": ("f858b3721daff64823aebad9491108a8ce12b14f", f"{SPHERE}_apr.h5", SPHERE),
    "2018-03-per-gap-int16": ("ddd38b643e374e6395aee3a3ef9e334514a9dfd7", f"{SPHERE}_apr.h5", SPHERE),
    "2018-01-per-gap-uint16": ("a76738fc6acdc1e2ce55309b6983c0810412128c", f"{SPHERE}_apr.h5", SPHERE),
    "2018-01-per-gap-uint64": ("5b6a5110979b05f46e135f1f46eac5bfe692dbce", f"{SPHERE}_apr.h5", SPHERE),
}
LINEAR_REFERENCED = {name: (HEAD, f"test/files/Apr/{name}.apr", f"test/files/Apr/{ref}") for name, ref in [
    ("sphere_2D/sphere_2D", "sphere_2D/sphere_2D"), ("sphere_1D/sphere_1D", "sphere_1D/sphere_1D"),
    ("sphere_120/sphere", "sphere_120/sphere"), ("sphere_diff_dims/sphere", "sphere_diff_dims/sphere")]}
BENCHMARK_FILES = [f"benchmarks/files/cr_{n}.apr" for n in (1, 3, 5, 10, 15, 20, 30, 54, 124, 1000)]


def _blob(commit: str, path: str, tmp_path=None):
    if not os.path.isdir(REPO):
        pytest.skip(f"LibAPR's repository is not at {REPO} (set APRNET_LIBAPR_REPO to a clone)")
    out = subprocess.run(["git", "-C", REPO, "cat-file", "blob", f"{commit}:{path}"], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"{commit[:8]}:{path} is not in {REPO}: {out.stderr.decode().strip()}")
    if tmp_path is None:
        return out.stdout
    target = tmp_path / os.path.basename(path)
    target.write_bytes(out.stdout)
    return target


def _tif(commit: str, path: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(_blob(commit, path)))


def _attr(path, name: str) -> int:
    with h5py.File(path) as h5:
        group = h5["ParticleRepr/t"] if "level_max" in h5["ParticleRepr/t"].attrs else h5["ParticleRepr"]
        return int(np.asarray(group.attrs[name]).reshape(-1)[0]) & 0xFFFFFFFF


def _dense(structure, per_cell: np.ndarray):
    """How many cells cover each pixel, and ``per_cell`` painted over the cells (plain numpy, level by level)."""
    s = structure
    dims3 = (1,) * (3 - s.ndim) + s.shape
    c3 = np.concatenate([np.zeros((s.n_particles, 3 - s.ndim), np.int64), s.coords], axis=1)
    cover, paint = np.zeros(dims3, np.int32), np.zeros(dims3, per_cell.dtype)
    for lv in np.unique(s.levels):
        sel, step = s.levels == lv, 1 << (s.level_max - int(lv))
        count = np.zeros(level_shape(dims3, s.level_max, int(lv)), np.int32)
        value = np.zeros(count.shape, per_cell.dtype)
        np.add.at(count, tuple(c3[sel].T), 1)
        value[tuple(c3[sel].T)] = per_cell[sel]
        crop = tuple(slice(0, n) for n in dims3)
        cover += count.repeat(step, 0).repeat(step, 1).repeat(step, 2)[crop]
        paint += value.repeat(step, 0).repeat(step, 1).repeat(step, 2)[crop]
    return cover.reshape(s.shape), paint.reshape(s.shape)


@pytest.mark.parametrize("path", BENCHMARK_FILES + ["random:" + k for k in RANDOM_REFERENCED])
def test_libapr_random_access_files_are_valid(tmp_path, path):
    commit, path = RANDOM_REFERENCED[path[7:]][:2] if path.startswith("random:") else (BENCH, path)
    file = _blob(commit, path, tmp_path)
    contents = read_libapr(file)
    s = contents.structure
    assert contents.attributes["layout"] == "random-access"
    assert s.n_particles == _attr(file, "total_number_particles")
    assert _attr(file, "level_min") <= s.levels.min() and s.levels.max() <= _attr(file, "level_max")
    cover, levels = _dense(s, s.levels)
    assert cover.min() == cover.max() == 1  # every pixel covered by exactly one particle cell
    np.testing.assert_array_equal(APR(s, contents.particles["particle_intensities"]).reconstruct(mode="level"),
                                  levels)


@pytest.mark.parametrize("name", sorted(RANDOM_REFERENCED) + sorted(LINEAR_REFERENCED))
def test_libapr_files_match_libapr_reconstructions(tmp_path, name):
    commit, path, reference = {**RANDOM_REFERENCED, **LINEAR_REFERENCED}[name]
    contents = read_libapr(_blob(commit, path, tmp_path))
    apr = APR(contents.structure, contents.particles["particle_intensities"], contents.parameters)
    pc, level = _tif(commit, reference + "_pc.tif"), _tif(commit, reference + "_level.tif")
    assert pc.shape == level.shape == apr.shape
    np.testing.assert_array_equal(apr.reconstruct(), pc.astype(np.float32))
    np.testing.assert_array_equal(apr.reconstruct(mode="level"), level)
    assert _dense(apr.structure, apr.values)[1].tobytes() == pc.astype(np.float32).tobytes()
