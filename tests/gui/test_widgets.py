"""napari widgets (Convert to APR, Tune E, Annotate): run under Xvfb with pytest-qt.

Each test drives the widget like a user (select a layer, set values, click)
and waits for the background worker with ``qtbot.waitUntil``; results are
compared with the APR computed directly, or with the CLI's output.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import assert_level_colours

from napari_aprnet.apr import APR
from napari_aprnet.samples import fluorescence_blobs

PLUGIN = "napari-aprnet"
WAIT = 60_000  # ms; generous for a loaded 2-core machine (no timing assertions)


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    if hasattr(widget, "params"):  # these tests compare with the library's defaults (GUI default: auto on)
        widget.params.fields["auto_parameters"].value = False
    return widget


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.task.running, timeout=WAIT)


def blobs2d():
    return fluorescence_blobs((60, 70), 8, seed=4)


# ------------------------------------------------------------------ convert
def test_convert_adds_layers_matching_direct_apr(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    image = blobs2d()
    layer = viewer.add_image(image, name="blobs", scale=(1.0, 1.0))
    w = open_widget(viewer, "Convert to APR")
    w.image.value = layer
    w.params.rel_error.value = 0.2
    w.show_cells.value = True
    assert w.convert() is not None
    wait_idle(qtbot, w)
    assert not notes
    direct = APR.from_image(image, 0.2)
    recon, levels = viewer.layers["blobs reconstruction"], viewer.layers["blobs level map"]
    assert recon.data.shape == image.shape and levels.data.shape == image.shape
    np.testing.assert_array_equal(recon.data, direct.reconstruct())
    np.testing.assert_array_equal(levels.data, direct.reconstruct(mode="level"))
    assert_level_colours(levels, direct.level_max)
    meta = recon.metadata["aprnet"]
    assert meta["n_particles"] == direct.n_particles
    assert meta["parameters"]["rel_error"] == 0.2
    assert meta["computational_ratio"] == pytest.approx(image.size / direct.n_particles)
    mean, mx = direct.reconstruction_error(image)
    assert meta["mean_error"] == pytest.approx(mean) and meta["max_error"] == pytest.approx(mx)
    assert f"{direct.n_particles:,}" in w.results.value
    cells = viewer.layers["blobs particle cells"]
    assert len(cells.data) == direct.n_particles
    for level in np.unique(direct.levels):  # legend lists every level present
        assert f"(level {level})" in w.legend.value
    # changing E re-converts small images automatically and updates the layers in place
    n_layers = len(viewer.layers)
    w.params.rel_error.value = 0.05
    qtbot.waitUntil(lambda: viewer.layers["blobs reconstruction"].metadata["aprnet"]["parameters"]["rel_error"]
                    == 0.05, timeout=WAIT)
    wait_idle(qtbot, w)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["blobs level map"].metadata["aprnet"]["n_particles"] == \
        APR.from_image(image, 0.05).n_particles


def test_convert_numbers_match_cli(make_napari_viewer, qtbot, tmp_path, capsys):
    from napari_aprnet.cli import main
    from napari_aprnet.io import write_image

    image = blobs2d()
    path = tmp_path / "blobs.tif"
    write_image(path, image)
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="blobs")
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.params.rel_error.value = 0.15
    w.convert(layer)
    wait_idle(qtbot, w)
    out_apr = tmp_path / "cli.apr"
    capsys.readouterr()
    assert main(["convert", str(path), "-o", str(out_apr), "--rel-error", "0.15"]) == 0
    cli = APR.load(out_apr)
    meta = viewer.layers["blobs reconstruction"].metadata["aprnet"]
    assert meta["n_particles"] == cli.n_particles
    np.testing.assert_array_equal(viewer.layers["blobs level map"].data, cli.reconstruct(mode="level"))


def test_convert_rgb_and_3d(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    vol = fluorescence_blobs((12, 30, 34), 5, seed=1)
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.convert(viewer.add_image(rgb, name="rgb", rgb=True))
    wait_idle(qtbot, w)
    assert viewer.layers["rgb reconstruction"].rgb
    assert viewer.layers["rgb reconstruction"].data.shape == rgb.shape
    assert viewer.layers["rgb level map"].data.shape == rgb.shape[:2]
    w.convert(viewer.add_image(vol, name="vol"))
    wait_idle(qtbot, w)
    direct = APR.from_image(vol, 0.1)
    np.testing.assert_array_equal(viewer.layers["vol level map"].data, direct.reconstruct(mode="level"))
    assert not notes


@pytest.mark.parametrize("case", ["no layer", "labels", "tiny", "points"])
def test_convert_bad_input_notifies_and_changes_nothing(make_napari_viewer, notes, case):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Convert to APR")
    layer = {"no layer": lambda: None,
             "labels": lambda: viewer.add_labels(np.zeros((20, 20), dtype=np.uint8), name="lab"),
             "tiny": lambda: viewer.add_image(np.zeros((3, 20, 1), dtype=np.float32), name="t"),
             "points": lambda: viewer.add_points(np.zeros((3, 2)), name="pts")}[case]()
    before = [ly.name for ly in viewer.layers]
    assert w.convert(layer) is None
    assert [ly.name for ly in viewer.layers] == before
    assert len(notes) == 1 and notes[0][1] == "error"
    expected = {"no layer": "no image layer selected", "labels": "is a Labels layer",
                "tiny": "spatial side must be >= 2", "points": "is a Points layer"}[case]
    assert expected in notes[0][0]
    assert expected in w.status.value


def test_convert_cancel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(fluorescence_blobs((24, 256, 256), 60, seed=2), name="big")
    w = open_widget(viewer, "Convert to APR")
    w.convert(layer)
    w.task.cancel()
    wait_idle(qtbot, w)
    assert "big reconstruction" not in viewer.layers
    assert w.result is None


def test_save_and_reader_round_trip(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image = blobs2d()
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.convert(viewer.add_image(image, name="blobs"))
    wait_idle(qtbot, w)
    path = tmp_path / "saved.apr"
    w.save(path)
    wait_idle(qtbot, w)
    assert w.result.apr.equals(APR.load(path))
    layers = viewer.open(str(path), plugin=PLUGIN)
    names = [ly.name for ly in layers]
    assert names == ["saved reconstruction", "saved level map"]
    np.testing.assert_array_equal(layers[0].data, w.result.reconstruction)
    assert layers[1].metadata["aprnet"]["parameters"] == w.result.apr.parameters.to_dict()


def test_convert_and_tune_add_lazy_layers_not_whole_reconstructions(make_napari_viewer, qtbot, notes):
    from napari_aprnet.lazy import LazyReconstruction, LazyStack

    viewer = make_napari_viewer()
    vol = fluorescence_blobs((20, 512, 512), 30, seed=6)  # 5 Mi voxels: a two-level pyramid
    layer = viewer.add_image(vol, name="vol")
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.convert(layer)
    wait_idle(qtbot, w)
    recon, levels = viewer.layers["vol reconstruction"], viewer.layers["vol level map"]
    assert recon.multiscale and levels.multiscale
    assert [d.shape for d in recon.data] == [(20, 512, 512), (10, 256, 256)]
    assert all(isinstance(d, LazyReconstruction) for d in list(recon.data) + list(levels.data))
    direct = APR.from_image(vol, 0.1)
    np.testing.assert_array_equal(recon.data[0][7], direct.reconstruct(region=((7, 8),))[0])
    assert recon.metadata["aprnet"]["mean_error"] == pytest.approx(direct.reconstruction_error(vol)[0])
    tune = open_widget(viewer, "Tune E")
    tune.run(layer, "0.1, 0.3")
    wait_idle(qtbot, tune)
    stack = viewer.layers["vol E sweep"]
    assert stack.data.shape == (2, 20, 512, 512) and isinstance(stack.data[0], LazyStack)
    assert all(p.reconstruction is None and p.level_map is None for p in tune.points)  # no image per E kept
    np.testing.assert_array_equal(stack.data[0][1, 3], APR.from_image(vol, 0.3).reconstruct(region=((3, 4),))[0])
    assert not notes


# ------------------------------------------------------------------- tune E
def test_tune_sweep_stacks_along_e_axis(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    image = blobs2d()
    layer = viewer.add_image(image, name="blobs")
    w = open_widget(viewer, "Tune E")
    w.image.value = layer
    assert w.run(values="0.05, 0.2, 0.6") is not None
    wait_idle(qtbot, w)
    assert not notes
    stack = viewer.layers["blobs E sweep"]
    levels = viewer.layers["blobs E sweep levels"]
    assert stack.data.shape == (3,) + image.shape and levels.data.shape == (3,) + image.shape
    assert tuple(stack.axis_labels) == ("E", "y", "x")
    assert viewer.dims.axis_labels[0] == "E"
    assert viewer.dims.nsteps[0] == 3  # one slider position per E
    for i, e in enumerate([0.05, 0.2, 0.6]):
        direct = APR.from_image(image, e)
        np.testing.assert_array_equal(levels.data[i], direct.reconstruct(mode="level"))
        assert w.points[i].n_particles == direct.n_particles
    assert_level_colours(levels, direct.level_max)
    assert list(w.plot.series["CR"].xs) == [0.05, 0.2, 0.6]
    assert w.plot.marker == 0.05 and "E = 0.05" in w.current.value  # the slider's E once the sweep is shown
    viewer.dims.set_current_step(0, 1)
    assert w.plot.marker == 0.2 and "E = 0.2" in w.current.value
    w.use_current()
    convert = w.viewer.window._dock_widgets  # the convert widget is docked now
    assert any("Convert to APR" in name for name in convert)
    from napari_aprnet._widgets._common import find_widget

    cw = find_widget(viewer, "Convert to APR")
    assert cw.params.rel_error.value == pytest.approx(0.2)
    wait_idle(qtbot, cw)
    assert viewer.layers["blobs reconstruction"].metadata["aprnet"]["parameters"]["rel_error"] == 0.2


def test_tune_bad_values(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Tune E")
    w.image.value = viewer.add_image(blobs2d(), name="b")
    assert w.run(values="0.1, -2") is None
    assert "positive" in notes[-1][0]
    assert [ly.name for ly in viewer.layers] == ["b"]


# ----------------------------------------------------------------- annotate
@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(folder / f"im{i}.npy", rng.random((24, 24)).astype(np.float32))
    return folder


def test_annotate_labels_survive_reopen(make_napari_viewer, qtbot, image_folder, tmp_path, notes):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Annotate")
    w.classes.value = "round, square"
    assert w.open(image_folder)
    assert w.current_name == "im0.npy"
    np.testing.assert_array_equal(viewer.layers["annotation image"].data, np.load(image_folder / "im0.npy"))
    w.class_buttons[1].changed.emit(True)  # click "2: square"
    assert w.current_name == "im1.npy"  # moved on to the next unlabelled image
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_1)  # the "1" key on the canvas
    assert w.annotations.label_of("im1.npy") == "round"
    w.assign_number(7)  # no class 7: a warning, nothing saved
    assert notes[-1][1] == "warning"
    viewer.window.remove_dock_widget("all")
    w2 = open_widget(viewer, "Annotate")
    assert w2.open(image_folder)
    assert w2.annotations.labels == {"im0.npy": "square", "im1.npy": "round"}
    assert w2.current_name == "im2.npy"  # first unlabelled
    assert "square" in w2.classes.value
    out = tmp_path / "dataset"
    w2.export(out)
    wait_idle(qtbot, w2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["round/im1.npy",
                                                                               "square/im0.npy"]


def test_annotate_bad_folder(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Annotate")
    w.classes.value = "a, b"
    assert not w.open(tmp_path / "missing")
    assert "cannot open" in notes[-1][0]
    (tmp_path / "empty").mkdir()
    assert not w.open(tmp_path / "empty")
    assert "no images" in notes[-1][0]
    assert len(viewer.layers) == 0


# --------------------------------------------------------------- screenshot
def test_canvas_screenshot_of_converted_sample_not_blank(make_napari_viewer, qtbot):
    from napari_aprnet._sample_data import blobs_3d_sample

    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = blobs_3d_sample()[0]
    layer = viewer.add_image(data[12], **kwargs)
    w = open_widget(viewer, "Convert to APR")
    w.convert(layer)
    wait_idle(qtbot, w)
    layer.visible = False
    viewer.layers["blobs 3D level map"].visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 5  # not a uniform (e.g. black) canvas
    assert (rgb.max(axis=2) > 40).mean() > 0.05  # a good part of the canvas is lit


def test_run_script_converts_sample_and_writes_screenshot(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "run_napari.py"
    out = subprocess.run([sys.executable, str(script), "--sample", "photo", "--screenshot-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "converted 'camera'" in out.stdout
    import imageio.v3 as iio

    shot = iio.imread(tmp_path / "run_napari.png")
    assert shot.shape[0] > 500 and shot[..., :3].std() > 10
