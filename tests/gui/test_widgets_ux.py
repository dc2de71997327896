"""What a microscopist meets in the plugin (issue 13): errors once, closing, stop/resume, defaults,
preselection, docking, level colours, small refusals. Run under Xvfb with pytest-qt."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import shown_colour

from napari_aprnet.samples import fluorescence_blobs

PLUGIN = "napari-aprnet"
WAIT = 120_000


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def test_background_error_shown_once_and_not_reraised(make_napari_viewer, qtbot, notes):
    from magicgui.widgets import Label, ProgressBar

    from napari_aprnet._widgets._common import BackgroundTask

    make_napari_viewer()
    task = BackgroundTask("Job", ProgressBar(), Label())

    def job(*, cancel):
        yield 1
        raise ValueError("the input is bad")

    worker = task.start(job)
    assert worker._ignore_errors if hasattr(worker, "_ignore_errors") else True
    qtbot.waitUntil(lambda: not task.running, timeout=WAIT)  # pytest-qt fails on a re-raise in a slot
    assert notes == [("Job failed: the input is bad", "error")]
    assert task.status.value == "Job failed: the input is bad"


def test_auto_thresholds_on_by_default_and_run_script_agrees(make_napari_viewer):
    import importlib.util
    from pathlib import Path

    viewer = make_napari_viewer()
    for name in ("Convert to APR", "Tune E"):
        w = open_widget(viewer, name)
        box = w.params.fields["auto_parameters"]
        assert box.value is True and "Li" in box.tooltip
    spec = importlib.util.spec_from_file_location("run_napari", Path(__file__).parents[2] / "scripts" / "run_napari.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.parse_args([]).manual_thresholds is False  # the run command converts with auto thresholds too


def test_pickers_preselect_the_active_and_new_image_layers(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((32, 32)), name="first")
    convert, tune, classify = (open_widget(viewer, n) for n in ("Convert to APR", "Tune E", "Classify"))
    assert convert.image.value is first and tune.image.value is first
    assert list(classify.layers.value) == [first]
    second = viewer.add_image(np.ones((32, 32)), name="second")
    assert convert.image.value is second and tune.image.value is second
    assert list(classify.layers.value) == [second]


def test_widgets_are_tabbed_in_scroll_areas(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    from napari_aprnet._widgets._common import _dock_of

    viewer = make_napari_viewer()
    a, b = open_widget(viewer, "Convert to APR"), open_widget(viewer, "Train")
    qtbot.wait(50)
    dock_a, dock_b = _dock_of(a.native), _dock_of(b.native)
    assert isinstance(dock_a.widget(), QScrollArea) and isinstance(dock_b.widget(), QScrollArea)
    assert dock_b in viewer.window._qt_window.tabifiedDockWidgets(dock_a)


def test_level_colours_follow_cell_size_and_map_sits_beside(make_napari_viewer, qtbot, notes):
    from napari_aprnet._layer_data import LEVEL_COLORS, level_color

    assert level_color(9, 9) == level_color(11, 11) == LEVEL_COLORS[0]  # 1-pixel cells, any image size
    assert level_color(7, 9) == level_color(9, 11) == LEVEL_COLORS[2]  # 4-pixel cells
    viewer = make_napari_viewer()
    layer = viewer.add_image(fluorescence_blobs((60, 70), 8, seed=4), name="blobs")
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.convert()
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    levels = viewer.layers["blobs level map"]
    assert levels.translate[-1] > 70 and levels.opacity == 1.0  # beside, not over
    present = np.unique(levels.data)
    assert w.legend.value.count("pixel cells") == len(present)  # only the levels present
    assert "1x1-pixel cells" in w.legend.value
    w.level_display.value = "over the image"
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)  # results are shown in event-loop turns
    assert viewer.layers["blobs level map"].translate[-1] == 0 and layer.translate[-1] == 0


def _legend_entries(legend: str) -> list[tuple[int, int, str]]:
    """``(level, cell side, colour)`` of each line of Convert's legend."""
    return [(int(level), int(side), colour) for colour, side, level in
            re.findall(r"color:(#[0-9a-fA-F]{6}).*?(\d+)x\d+-pixel cells \(level (\d+)\)", legend)]


def test_level_map_is_an_image_drawn_in_the_legend_colours(make_napari_viewer, qtbot):
    from napari.layers import Image
    from napari.utils.colormaps.standardize_color import transform_color
    from scipy import ndimage

    viewer = make_napari_viewer(show=True)
    viewer.add_image(fluorescence_blobs((60, 70), 8, seed=4), name="blobs")
    w = open_widget(viewer, "Convert to APR")
    w.auto_update.value = False
    w.convert()
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    levels = viewer.layers["blobs level map"]
    assert isinstance(levels, Image) and (levels.interpolation2d, levels.interpolation3d) == ("nearest",) * 2
    entries = _legend_entries(w.legend.value)
    assert sorted(level for level, _, _ in entries) == np.unique(levels.data).tolist()
    level_max = levels.metadata["aprnet"]["level_max"]
    for level, side, colour in entries:  # the layer's colour of each level is the legend's for its cell size
        assert side == 2 ** (level_max - level)
        np.testing.assert_allclose(shown_colour(levels, level), transform_color(colour)[0][:3], atol=1e-6)
    for other in viewer.layers:
        other.visible = other is levels
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    to_canvas = viewer.window._qt_viewer.canvas.layer_to_visual[levels].node.get_transform("visual", "canvas")
    data = np.asarray(levels.data)
    for level, _, colour in entries:  # the canvas draws the middle of each level's cells in its legend colour
        inside = ndimage.binary_erosion(data == level, np.ones((3, 3)))  # away from cell borders
        ys, xs = np.nonzero(inside)
        assert len(ys), f"no interior pixel of level {level}"
        x, y = to_canvas.map(np.column_stack([xs + 0.5, ys + 0.5]))[:, :2].T
        drawn = shot[np.round(y).astype(int), np.round(x).astype(int)]
        np.testing.assert_allclose(drawn, np.broadcast_to(np.round(transform_color(colour)[0][:3] * 255),
                                                          drawn.shape), atol=2)


def test_train_defaults_and_expected_steps_and_folder_refusal(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Train")
    assert (w.network.value, w.size.value, w.batch.value) == ("APR_B", 128, 36)
    assert f"{w.steps.value} steps" in w.expected.value
    w.dataset.value = "folder"
    assert w.start() is None
    assert "needs a dataset folder" in notes[-1][0] and not w.task.running


def test_train_expected_time_is_timed_here_before_start(make_napari_viewer, qtbot, notes):
    from napari_aprnet._widgets._step_time import duration_text

    viewer = make_napari_viewer()
    w = open_widget(viewer, "Train")
    w.network.value = "APR_A"
    w.steps.value, w.size.value, w.batch.value = 50, 32, 4
    assert "estimating the time" in w.expected.value  # honest while nothing is measured
    # a child process imports torch and times 3 steps: seconds on an idle machine, minutes on a loaded one
    qtbot.waitUntil(lambda: "per step" in w.expected.value, timeout=5 * WAIT)
    key = ("APR_A", 32, 4, w.rel_error.value)
    per = w.estimate.seconds[key]
    assert per > 0 and f"{per:.2f} s per step" in w.expected.value
    assert duration_text(50 * per) in w.expected.value
    w.steps.value = 5000  # same setting: no new timing, the time scales with the steps
    assert duration_text(5000 * per) in w.expected.value and not w.estimate.running
    w.size.value = 48  # another setting is timed anew
    assert "estimating the time" in w.expected.value
    assert duration_text(1000) == "about 17 min" and duration_text(30) == "about 30 s"
    w.estimate.cancel()  # what Start and closing the widget do
    assert not w.estimate.running
    w.task.worker = object()  # while a run runs, no timing and no "estimating" on screen
    w._show_expected()
    assert "estimating" not in w.expected.value and not w.estimate.running
    w.task.worker = None
    assert not notes


def _start_endless_run(viewer, qtbot, run_dir, steps_done: int):
    """Start a small, practically endless APR_A run in the Train widget; return it after ``steps_done`` steps."""
    w = open_widget(viewer, "Train")
    w.network.value = "APR_A"
    w.steps.value, w.size.value, w.batch.value = 100_000, 32, 4
    w.out_dir.value = run_dir
    w.start()
    qtbot.waitUntil(lambda: len(w.history["step"]) >= steps_done, timeout=WAIT)
    return w


def test_programmatic_close_stops_training_without_dialog(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    def no_dialog(*a, **k):
        raise AssertionError("a dialog was shown")

    monkeypatch.setattr(QMessageBox, "question", no_dialog)
    viewer = make_napari_viewer()
    w = _start_endless_run(viewer, qtbot, tmp_path / "run", steps_done=1)
    ended = w._ended
    viewer.close()  # waits (up to 60 s) for the step in flight, the batch-norm recalibration and the save
    assert ended.wait(WAIT / 1000)
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_stop_shows_stopping_then_resume_continues(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    w = _start_endless_run(viewer, qtbot, tmp_path / "run", steps_done=2)
    w.stop_button.changed.emit(True)
    assert w.status.value.startswith("stopping")
    qtbot.wait(200)
    assert w.status.value.startswith("stopping") or not w.task.running
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    assert not w.resume_button.native.isHidden() and "stopped at step" in w.result.value
    stopped_at = w.history["step"][-1]
    w.steps.value = stopped_at + 2
    assert w.resume() is not None
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    assert w.history["step"][-1] == stopped_at + 2 and "finished" in w.result.value
    assert not notes


def test_classify_refuses_tiny_image(make_napari_viewer, qtbot, notes):
    from napari_aprnet._widgets.classify import images_for_classifier

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.ones((1, 1)), name="dot")

    class Fake:
        channels, input_size = 1, 64

    with pytest.raises(ValueError, match="too small to classify"):
        images_for_classifier(layer, Fake())


def test_pyapr_file_opens_in_napari(make_napari_viewer):
    """File -> Open of a pyapr-written .apr: one layer per particle set plus the level map."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "fixtures" / "libapr" / "blobs3d_tree_two_sets.apr"
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) >= 3  # two particle sets and a level map
    meta = [lyr.metadata.get("aprnet", {}) for lyr in layers]
    assert {m.get("source_format") for m in meta} == {"libapr"}


def test_annotate_number_key_labels_even_with_the_image_layer_selected(make_napari_viewer, tmp_path):
    import imageio.v3 as iio

    for i in range(2):
        iio.imwrite(tmp_path / f"im{i}.png", (np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8))
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Annotate")
    w.classes.value = "a, b"
    assert w.open(tmp_path)
    layer = viewer.layers["annotation image"]
    viewer.layers.selection.active = layer
    first = w.annotations.images[w.index]
    keys = viewer.window._qt_viewer._key_map_handler  # what a key press on the canvas goes through
    keys.press_key("2")
    keys.release_key("2")
    assert w.annotations.label_of(first) == "b"  # napari's own "2" would switch the layer to transform mode
    assert str(layer.mode) in ("pan_zoom", "Mode.PAN_ZOOM")


def test_plots_use_matplotlib_round_ticks_and_non_negative_error_axis(qtbot):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

    from napari_aprnet._widgets._plot import BarPlot, LinePlot, running_mean

    plot = LinePlot(title="t", xlabel="E", log_x=True)
    qtbot.addWidget(plot)
    assert isinstance(plot, FigureCanvasQTAgg)
    plot.set_series("mean |error|", [0.02, 0.1, 0.5], [0.001, 0.004, 0.02], axis="right")
    plot.set_series("CR", [0.02, 0.1, 0.5], [1.1, 2.3, 4.55])
    assert plot._timer.isActive() and "CR" not in plot._lines  # redraw requested, not run yet
    plot.flush()  # runs it now (Tune E, before adding its layers)
    assert not plot._timer.isActive()
    np.testing.assert_allclose(plot._lines["CR"].get_xdata(), [0.02, 0.1, 0.5])
    left, right = plot.figure.axes[:2]
    assert left.get_ylim()[0] == 0 and right.get_ylim()[0] == 0  # never negative
    ticks = [t for t in left.get_yticks() if 0 <= t <= left.get_ylim()[1]]
    assert all(abs(t * 2 - round(t * 2)) < 1e-9 for t in ticks)  # 0, 0.5, 1, ... or 0, 1, 2, ...
    np.testing.assert_allclose(running_mean([1, 3, 5, 7], 2), [1, 2, 4, 6])
    bars = BarPlot("p")
    qtbot.addWidget(bars)
    bars.set_bars(["a", "b"], [0.2, 0.8])
    bars.redraw()


def test_stack_of_2d_images_is_converted_image_by_image(make_napari_viewer, qtbot, notes):
    from napari_aprnet.apr import APR
    from napari_aprnet.params import APRParameters

    viewer = make_napari_viewer()
    stack = np.stack([fluorescence_blobs((40, 48), 5, seed=s) for s in range(3)])
    layer = viewer.add_image(stack, name="stack", axis_labels=("class", "y", "x"))
    w = open_widget(viewer, "Convert to APR")
    assert w.image.value is layer and w.spatial.value.startswith("2D")  # preset from the "class" axis
    w.auto_update.value = False
    w.params.rel_error.value = 0.2
    w.convert()
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    assert not notes
    recon = viewer.layers["stack reconstruction"]
    assert recon.data.shape == stack.shape and tuple(recon.axis_labels) == ("class", "y", "x")
    params = w.params.parameters(spacing=(1.0, 1.0))
    for i in range(3):  # each plane equals its own 2D conversion
        direct = APR.from_image(stack[i], 0.2, params=params)
        np.testing.assert_array_equal(recon.data[i], direct.reconstruct())
    assert "3 images converted one by one" in w.results.value
    assert isinstance(params, APRParameters)
