"""LibAPR / pyapr .apr files: fixtures written by pyapr 1.0.7, round trips, damaged files, the reader."""
from __future__ import annotations

import glob
import os
import shutil

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for editing the fixtures)
import numpy as np
import pytest
from conftest import random_structure, random_values

from napari_aprnet import APR, APRFileError, _reader
from napari_aprnet.io import detect_format
from napari_aprnet.io.libapr import read_libapr, save_libapr
from napari_aprnet.params import APRParameters

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "libapr")
FILES = sorted(glob.glob(os.path.join(FIXTURES, "*.apr")))


def test_fixtures_are_present():
    names = {os.path.basename(f) for f in FILES}
    assert {"blobs2d_u16.apr", "blobs3d_u16.apr", "blobs3d_f32.apr", "blobs3d_tree_two_sets.apr"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_fixture_matches_pyapr_reconstruction(path):
    contents = read_libapr(path)
    ref = np.load(path[:-4] + ".npz")
    assert detect_format(path) == "libapr"
    assert contents.structure.shape == ref["image"].shape
    for name, values in contents.particles.items():
        apr = APR(contents.structure, values, contents.parameters)
        np.testing.assert_array_equal(apr.reconstruct(), ref[f"recon_{name}"].reshape(apr.shape))
    assert contents.parameters.rel_error == pytest.approx(0.1)
    assert contents.parameters.sigma_th == 20.0 and contents.parameters.grad_th == 2.0


def test_dtypes_tree_and_two_sets():
    c = read_libapr(os.path.join(FIXTURES, "blobs3d_tree_two_sets.apr"))
    assert list(c.particles) == ["particles", "sqrt_intensity"]
    assert c.attributes["particle_dtypes"] == {"particles": "uint16", "sqrt_intensity": "float32"}
    assert c.attributes["tree_particle_sets"] == ["particles"]
    np.testing.assert_allclose(c.particles["sqrt_intensity"], np.sqrt(c.particles["particles"]), rtol=1e-6)
    assert read_libapr(os.path.join(FIXTURES, "blobs3d_f32.apr")).attributes["particle_dtypes"] == \
        {"particles": "float32"}


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_libapr_round_trip_keeps_the_file(tmp_path, path):
    apr = APR.load(path)
    out = tmp_path / "again.apr"
    apr.save(out, format="libapr")
    assert APR.load(out).equals(apr)
    with h5py.File(path) as a, h5py.File(out) as b:  # the same linear access and tree as pyapr's
        for name in ("y_vec", "xz_end_vec", "Tree/y_vec", "Tree/xz_end_vec"):
            np.testing.assert_array_equal(a["ParticleRepr/t/" + name][()], b["ParticleRepr/t/" + name][()])


@pytest.mark.parametrize("shape", [(37, 53), (11, 19, 23), (1, 9), (5, 1, 7)])
def test_ours_to_libapr_to_ours_is_exact(tmp_path, shape):
    s = random_structure(shape, seed=7)
    apr = APR(s, random_values(s, seed=2), APRParameters(rel_error=0.25, dx=2.0, lambda_=1.5))
    apr.save(tmp_path / "x.apr", format="libapr")
    back = APR.load(tmp_path / "x.apr")
    assert back.equals(apr)
    with h5py.File(tmp_path / "x.apr") as h5:  # LibAPR's dy is along numpy's last axis
        assert h5["ParticleRepr/t"].attrs["dy"][0] == 2.0 and h5["ParticleRepr/t"].attrs["dx"][0] == 1.0


def test_save_libapr_refuses_what_it_cannot_hold(tmp_path):
    s = random_structure((9, 11), seed=1)
    with pytest.raises(ValueError, match="channels"):
        save_libapr(APR(s, random_values(s, 2, seed=1)), tmp_path / "a.apr")
    v = random_values(s, seed=1)
    v[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        save_libapr(APR(s, v), tmp_path / "a.apr")
    with pytest.raises(ValueError, match="format"):
        APR(s, random_values(s, seed=1)).save(tmp_path / "a.apr", format="tiff")
    assert not (tmp_path / "a.apr").exists()


def _replace(group, name, data):
    del group[name]
    group[name] = data


def _damaged(tmp_path, edit):
    path = tmp_path / "bad.apr"
    shutil.copy(os.path.join(FIXTURES, "blobs3d_u16.apr"), path)
    with h5py.File(path, "r+") as h5:
        edit(h5["ParticleRepr/t"])
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.attrs.create("x_num", [41], dtype=np.uint64), "xz_end_vec has shape"),
    (lambda g: g.attrs.create("total_number_particles", [10], dtype=np.uint64), "y_vec has shape"),
    (lambda g: g.attrs.create("level_max", [9], dtype=np.uint64), "do not fit"),
    (lambda g: g.__delitem__("particles"), "no particle dataset"),
    (lambda g: _replace(g, "particles", np.full(g["y_vec"].shape, np.inf, np.float32)), "NaN or Inf"),
    (lambda g: _replace(g, "y_vec", np.full(g["y_vec"].shape, 60000, np.uint16)), "y coordinate"),
    (lambda g: _replace(g, "y_vec", np.zeros(g["y_vec"].shape, np.uint16)), "inconsistent"),
    (lambda g: _replace(g, "xz_end_vec", np.zeros(g["xz_end_vec"].shape, np.uint64)), "cumulative"),
    (lambda g: g.__setitem__("ext", h5py.ExternalLink("other.h5", "/x")), "link to other data"),
    (lambda g: (g.__delitem__("particles"), g.create_dataset("particles", g["y_vec"].shape, np.float32,
                                                             external=[("other.raw", 0, h5py.h5f.UNLIMITED)])),
     "other files"),
])
def test_damaged_files_are_refused(tmp_path, edit, message):
    path = _damaged(tmp_path, edit)
    with pytest.raises(APRFileError, match=message):
        read_libapr(path)


def test_missing_layout_and_channels_are_explained(tmp_path):
    path = _damaged(tmp_path, lambda g: (g.__delitem__("y_vec"), g.create_dataset("map_level", data=[1])))
    with pytest.raises(APRFileError, match="total_number_non_empty_rows' of /ParticleRepr/t is missing"):
        read_libapr(path)
    path = _damaged(tmp_path, lambda g: g.__delitem__("y_vec"))
    with pytest.raises(APRFileError, match="neither y_vec / xz_end_vec"):
        read_libapr(path)
    with pytest.raises(APRFileError, match="channel 'c2' not found"):
        read_libapr(os.path.join(FIXTURES, "blobs3d_u16.apr"), channel="c2")


def test_reader_makes_one_layer_per_particle_set():
    path = os.path.join(FIXTURES, "blobs3d_tree_two_sets.apr")
    layers = _reader.get_reader(path)(path)
    assert [lt for _, _, lt in layers] == ["image", "image", "image"]
    assert layers[1][1]["name"] == "blobs3d_tree_two_sets level map"
    metas = [kw["metadata"]["aprnet"] for _, kw, _ in layers]
    assert {m["source_format"] for m in metas} == {"libapr"}
    assert [m["particle_set"] for m in metas] == ["particles", "particles", "sqrt_intensity"]
    assert layers[2][1]["name"] == "blobs3d_tree_two_sets sqrt_intensity reconstruction"
    assert APR.load(path, particles="sqrt_intensity").values.dtype == np.float32
    with pytest.raises(APRFileError, match="no particle set"):
        APR.load(path, particles="nope")


def test_pyapr_reads_ours_and_we_read_pyapr(tmp_path):
    pyapr = pytest.importorskip("pyapr")
    img = np.load(os.path.join(FIXTURES, "blobs3d_u16.npz"))["image"]
    ours = APR.from_image(img, rel_error=0.1, sigma_th=20.0, grad_th=2.0)
    ours.save(tmp_path / "ours.apr", format="libapr")
    apr, parts = pyapr.io.read(str(tmp_path / "ours.apr"))
    rec = np.asarray(pyapr.reconstruction.reconstruct_constant(apr, parts)).reshape(img.shape)
    np.testing.assert_array_equal(rec, ours.reconstruct())
    pp = pyapr.APRParameters()
    pp.auto_parameters, pp.sigma_th, pp.grad_th = False, 20.0, 2.0
    apr, parts = pyapr.converter.get_apr(img, params=pp)
    pyapr.io.write(str(tmp_path / "theirs.apr"), apr, parts)
    rec = np.asarray(pyapr.reconstruction.reconstruct_constant(apr, parts)).reshape(img.shape)
    np.testing.assert_array_equal(APR.load(tmp_path / "theirs.apr").reconstruct(), rec)
