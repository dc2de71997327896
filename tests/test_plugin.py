"""npe2 manifest, reader, writer and sample data (no viewer needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_aprnet
from napari_aprnet import _reader, _sample_data, _writer
from napari_aprnet.apr import APR
from napari_aprnet.samples import fluorescence_blobs

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MANIFEST = Path(napari_aprnet.__file__).parent / "napari.yaml"
WIDGETS = {"Convert to APR", "Tune E", "Classify", "Segment", "Train", "Annotate"}


def test_the_packaged_manifest_is_the_only_one():
    assert PACKAGE_MANIFEST.is_file()
    assert not (ROOT / "napari.yaml").exists()


def test_manifest_validates_and_imports():
    npe2 = pytest.importorskip("npe2")
    mf = npe2.PluginManifest.from_file(PACKAGE_MANIFEST)
    mf.validate_imports()  # every python_name resolves
    assert mf.name == "napari-aprnet"


def test_contributions_listed_by_plugin_manager():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager()
    pm.discover(include_npe1=False)
    assert "napari-aprnet" in pm  # found through the napari.manifest entry point
    mf = pm.get_manifest("napari-aprnet")
    assert {w.display_name for w in mf.contributions.widgets} == WIDGETS
    readers = [r for r in pm.iter_compatible_readers(["x.apr"]) if r.plugin_name == "napari-aprnet"]
    assert len(readers) == 1
    writers = [w for w in pm.iter_compatible_writers(["image"]) if w.plugin_name == "napari-aprnet"]
    assert [w.filename_extensions for w in writers] == [[".apr"]]
    samples = dict(pm.iter_sample_data())["napari-aprnet"]
    assert {s.key for s in samples} == {"shapes", "blobs_3d", "photo", "nuclei"}
    menus = mf.contributions.menus
    assert {m.command for m in menus["napari/layers/transform"]} == {"napari-aprnet.convert_widget",
                                                                     "napari-aprnet.tune_widget"}
    from napari._app_model.constants._menus import is_menu_contributable

    assert all(is_menu_contributable(menu) for menu in menus)


def test_reader_rejects_other_files():
    assert _reader.get_reader("image.tif") is None
    assert _reader.get_reader(["a.apr", "b.png"]) is None
    assert _reader.get_reader("a.APR") is _reader.read_apr


def test_writer_reader_round_trip(tmp_path):
    from napari_aprnet.params import APRParameters

    image = fluorescence_blobs((40, 52), 6, seed=5)
    params = APRParameters(rel_error=0.3, lambda_=1.5)
    meta = {"metadata": {"aprnet": {"parameters": params.to_dict()}}, "rgb": False}
    written = _writer.write_apr(str(tmp_path / "out"), image, meta)
    assert written == [str(tmp_path / "out.apr")]
    direct = APR.from_image(image, params=params)
    assert APR.load(written[0]).equals(direct)
    layers = _reader.get_reader(written[0])(written[0])
    (recon, rk, rt), (levels, lk, lt) = layers
    assert (rt, lt) == ("image", "image") and lk["name"] == "out level map"
    np.testing.assert_array_equal(recon, direct.reconstruct())
    np.testing.assert_array_equal(levels, direct.reconstruct(mode="level"))
    assert lk["metadata"]["aprnet"]["parameters"]["lambda_"] == 1.5
    assert rk["metadata"]["aprnet"]["n_particles"] == direct.n_particles
    assert lk["contrast_limits"] == (direct.level_min - 0.5, direct.level_max + 0.5)
    # a layer made by the plugin is saved as its APR, without re-conversion
    again = _writer.write_apr(str(tmp_path / "again.apr"), recon, {"metadata": rk["metadata"]})
    assert APR.load(again[0]).equals(direct)


def test_level_map_display_gives_each_level_its_cell_size_colour():
    from napari_aprnet._layer_data import level_color, level_map_display

    for level_min, level_max in [(2, 11), (5, 5), (0, 14)]:
        kw = level_map_display(level_min, level_max)
        cmap, (lo, hi) = kw["colormap"], kw["contrast_limits"]
        assert cmap["interpolation"] == "zero" and kw["interpolation2d"] == kw["interpolation3d"] == "nearest"
        assert len(cmap["controls"]) == len(cmap["colors"]) + 1 and cmap["controls"][::len(cmap["colors"])] == [0, 1]
        for level in range(level_min, level_max + 1):  # the bin napari's "zero" colormap picks for the level
            t = (level - lo) / (hi - lo)
            k = int(np.searchsorted(cmap["controls"], t, side="right")) - 1
            assert cmap["colors"][k] == level_color(level, level_max)
            assert min(abs(t - c) for c in cmap["controls"]) >= 0.5 / len(cmap["colors"]) - 1e-12  # bin middle
    with pytest.raises(ValueError, match="invalid level range"):
        level_map_display(6, 5)


def test_writer_rejects_4d(tmp_path):
    with pytest.raises(ValueError, match="2D or 3D"):
        _writer.write_apr(str(tmp_path / "x.apr"), np.zeros((2, 2, 8, 8)), {})
    assert not list(tmp_path.iterdir())


def test_sample_data():
    (shapes, kw, kind), = _sample_data.shapes_sample()
    assert shapes.shape == (6, 256, 256) and kind == "image" and len(kw["metadata"]["class_names"]) == 6
    (blobs, _, _), = _sample_data.blobs_3d_sample()
    assert blobs.shape == (32, 128, 128) and blobs.dtype == np.uint16
    np.testing.assert_array_equal(blobs, _sample_data.blobs_3d_sample()[0][0])  # seeded
    (photo, _, _), = _sample_data.natural_photo_sample()
    assert photo.shape == (512, 512)
    (nuclei, _, kind), (truth, kw, truth_kind) = _sample_data.nuclei_sample()
    assert nuclei.shape == truth.shape == (512, 512) and (kind, truth_kind) == ("image", "labels")
    assert truth.max() >= 50 and not kw["visible"]


def test_reader_writer_samples_do_not_import_the_gui():
    import subprocess
    import sys

    code = ("import sys, napari_aprnet._reader, napari_aprnet._writer, napari_aprnet._sample_data, "
            "napari_aprnet.sweep, napari_aprnet.annotations, napari_aprnet.samples, napari_aprnet._layer_data; "
            "print(sorted(m for m in ('napari', 'qtpy', 'magicgui', 'PyQt5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reader_gives_lazy_multiscale_layers_for_a_big_file(tmp_path):
    from napari_aprnet._layer_data import LAZY_PIXELS
    from napari_aprnet.lazy import LazyReconstruction
    from napari_aprnet.samples import lattice_blobs_apr

    apr = lattice_blobs_apr((256, 1024, 1024), period=256, radius=4.0, coarse_cell=32)
    assert apr.structure.n_pixels > LAZY_PIXELS
    path = str(tmp_path / "big.apr")
    apr.save(path)
    (recon, rk, rt), (levels, lk, lt) = _reader.read_apr(path)
    assert (rt, lt) == ("image", "image") and rk["multiscale"] and lk["multiscale"]
    assert [r.shape for r in recon] == [(256, 1024, 1024), (128, 512, 512), (64, 256, 256)]
    assert all(isinstance(r, LazyReconstruction) for r in recon + levels)
    assert [lv.dtype for lv in levels] == [np.uint8] * 3 and rk["metadata"]["aprnet"]["lazy"]
    assert rk["contrast_limits"] == (float(apr.values.min()), float(apr.values.max()))
    np.testing.assert_array_equal(recon[0][100, 500:520], apr.reconstruct(region=((100, 101), (500, 520)))[0])
    finest = apr.reconstruct(mode="level", region=((40, 44),)).reshape(4, 256, 4, 256, 4).max(axis=(0, 2, 4))
    np.testing.assert_array_equal(levels[2][10], finest)  # pyramid level 2: 4x4x4-pixel cells
