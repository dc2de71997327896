"""napari widgets Classify and Train (and Annotate with a model): pytest-qt under Xvfb.

A tiny network is trained once per module (a few steps, narrow, 32-pixel
input) so that every test has a real checkpoint to load.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_level_colours

from napari_aprnet.samples import shapes_gallery

PLUGIN = "napari-aprnet"
WAIT = 120_000


def _train(out, **kw):
    from napari_aprnet.train import TrainConfig, train

    config = TrainConfig(**{"model": "APR_A", "data": "shapes", "steps": 2, "batch_size": 4, "size": 32,
                            "width": 0.25, **kw}).validate()
    last = None
    for last in train(config, out):
        pass
    return last.checkpoint


@pytest.fixture(scope="module")
def grey_checkpoint(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("grey") / "run")


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory):
    from napari_aprnet.io import write_image

    root = tmp_path_factory.mktemp("rgbdata")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(4):
            write_image(root / cls / f"{i}.png", (rng.random((20, 20, 3)) * 255).astype(np.uint8))
    return _train(tmp_path_factory.mktemp("rgb") / "run", model="Pix_C", data=str(root), steps=None, epochs=1,
                  size=16)


@pytest.fixture
def notes(monkeypatch):
    from napari_aprnet._widgets import _common, classify, train

    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(_common, "notify", lambda message, level="error": shown.append((message, level)))
    for module in (classify, train):
        monkeypatch.setattr(module, "notify", _common.notify)
    return shown


def open_widget(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.task.running, timeout=WAIT)


# ------------------------------------------------------------------ classify
def test_classify_probabilities_and_feature_maps(make_napari_viewer, qtbot, grey_checkpoint, notes):
    from napari_aprnet.apr import APR
    from napari_aprnet.classify import Classifier

    viewer = make_napari_viewer()
    images, _ = shapes_gallery(64)
    stack = viewer.add_image(images, name="shapes")
    single = viewer.add_image(images[2], name="one")
    w = open_widget(viewer, "Classify")
    w.load(grey_checkpoint)
    wait_idle(qtbot, w)
    ref = Classifier.load(grey_checkpoint)
    assert w.net_layer.choices == tuple(ref.layer_names())
    w.layers.value = [stack, single]
    w.classify()
    wait_idle(qtbot, w)
    assert ref.input_size != 64
    assert [level for _, level in notes] == ["info"] and "resized" in notes[0][0]  # 64 px images, smaller net
    np.testing.assert_allclose(w.probabilities["shapes"], ref.predict_proba(images), rtol=1e-6)
    np.testing.assert_allclose(w.probabilities["one"].sum(axis=1), 1.0, rtol=1e-9)
    viewer.dims.set_current_step(0, 4)  # the bars follow the slice of the stack
    np.testing.assert_allclose(w.bars.values, w.probabilities["shapes"][4])
    assert w.bars.values.sum() == pytest.approx(1.0)
    assert list(w.bars.labels) == list(ref.class_names)

    w.show_features(single, "conv2")
    wait_idle(qtbot, w)
    structure, feats = ref.feature_maps(images[2], "conv2")
    expected = np.moveaxis(APR(structure, feats).reconstruct(), -1, 0)
    np.testing.assert_allclose(w.feature_result.features, expected, rtol=1e-5, atol=1e-6)
    # a labelled montage of the channels, each with its own contrast, beside the image at the maps' resolution
    from napari_aprnet._layer_data import feature_montage

    fl = viewer.layers["one conv2 features"]
    montage, corners = feature_montage(expected)
    np.testing.assert_allclose(fl.data, montage, atol=1e-5)
    y, x = corners[1]
    tile = fl.data[y:y + structure.shape[0], x:x + structure.shape[1]]
    assert tile.min() >= 0 and tile.max() <= 1
    np.testing.assert_allclose(np.asarray(fl.scale) * structure.shape, (64, 64))  # one tile = the image's extent
    assert fl.translate[-1] >= 64  # beside the image, not over it
    assert len(viewer.layers["one conv2 features channels"].data) == feats.shape[1]
    levels = viewer.layers["one network input levels"]
    assert levels.translate[-2] >= 64 and levels.opacity == 1.0  # below the image
    spec = ref.spec
    seen = spec.to_apr(spec.prepare(images[2]))
    np.testing.assert_array_equal(levels.data, seen.reconstruct(mode="level"))
    assert levels.data.shape == (32, 32)
    assert_level_colours(levels, seen.level_max)


@pytest.mark.parametrize("case", ["no checkpoint", "labels layer", "4d", "rgb into grey net", "grey into rgb net",
                                  "missing file"])
def test_classify_bad_input(make_napari_viewer, qtbot, grey_checkpoint, rgb_checkpoint, notes, case):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Classify")
    if case == "missing file":
        assert w.load("/nonexistent/model.pt") is None
        assert "not found" in notes[-1][0] and w.classifier is None
        return
    if case == "no checkpoint":
        w.checkpoint.value = ""  # the bundled model is preselected: clear it
    else:
        w.load(rgb_checkpoint if case == "grey into rgb net" else grey_checkpoint)
        wait_idle(qtbot, w)
    layer = {"no checkpoint": lambda: viewer.add_image(np.zeros((32, 32)), name="im"),
             "labels layer": lambda: viewer.add_labels(np.zeros((32, 32), dtype=np.uint8), name="lab"),
             "4d": lambda: viewer.add_image(np.zeros((2, 2, 32, 32)), name="im"),
             "rgb into grey net": lambda: viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="im"),
             "grey into rgb net": lambda: viewer.add_image(np.zeros((32, 32)), name="im")}[case]()
    before = [ly.name for ly in viewer.layers]
    assert w.classify([layer]) is None
    assert w.show_features(layer, "conv1") is None
    assert [ly.name for ly in viewer.layers] == before
    assert not w.probabilities
    expected = {"no checkpoint": "load a checkpoint first", "labels layer": "is a Labels layer",
                "4d": "has 4 dimensions", "rgb into grey net": "trained on grey images",
                "grey into rgb net": "trained on RGB images"}[case]
    assert expected in notes[-1][0]


def test_bundled_model_classifies_the_shapes_sample_out_of_the_box(make_napari_viewer, qtbot):
    """Open the shapes sample, press Classify: the preselected bundled model names every shape right."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "shapes")
    w = open_widget(viewer, "Classify")
    assert w.checkpoint.value.name == "shapes_apr_b.pt"
    assert w.classify() is not None  # loads the bundled network, then classifies
    qtbot.waitUntil(lambda: "shapes" in w.probabilities, timeout=WAIT)
    names = viewer.layers["shapes"].metadata["class_names"]
    assert [w.classifier.class_names[k] for k in w.probabilities["shapes"].argmax(1)] == list(names)
    for name in names:
        assert f"{name} 1" in w.table.value  # one image of each class
    annotate = open_widget(viewer, "Annotate")
    assert annotate.checkpoint.value == w.checkpoint.value


# --------------------------------------------------------------------- train
def test_train_runs_offers_checkpoint_and_stops_cleanly(make_napari_viewer, qtbot, tmp_path, notes):
    from qtpy.QtCore import QThreadPool
    from qtpy.QtGui import QCloseEvent

    from napari_aprnet.classify import Classifier

    viewer = make_napari_viewer()
    classify = open_widget(viewer, "Classify")
    w = open_widget(viewer, "Train")
    w.network.value = "APR_A"
    w.steps.value, w.size.value, w.batch.value = 3, 32, 4
    w.out_dir.value = tmp_path / "run1"
    assert w.start() is not None
    wait_idle(qtbot, w)
    assert not notes
    assert w.history["step"] == [1, 2, 3] and len(w.plot.series["loss"].ys) == 3
    assert w.checkpoint == tmp_path / "run1" / "checkpoint.pt" and w.checkpoint.exists()
    assert classify.checkpoint.value == w.checkpoint  # offered to Classify
    assert Classifier.load(w.checkpoint).input_size == 32

    # a long run: pause, stop while paused, no worker thread left behind
    w.steps.value = 100_000
    w.out_dir.value = tmp_path / "run2"
    worker = w.start()
    qtbot.waitUntil(lambda: len(w.history["step"]) >= 2, timeout=WAIT)
    w.toggle_pause()
    qtbot.waitUntil(lambda: worker.is_paused, timeout=WAIT)
    n = len(w.history["step"])
    qtbot.wait(300)
    assert len(w.history["step"]) <= n + 1  # at most the step in flight lands
    # closing the window by hand asks first: "No" keeps training, "Yes" stops it cleanly (here: while paused)
    class UserClose(QCloseEvent):
        def spontaneous(self):
            return True

    w.confirm_close = lambda: False
    assert w._guard.eventFilter(viewer.window._qt_window, UserClose()) is True
    assert w.task.running
    w.confirm_close = lambda: True
    assert w._guard.eventFilter(viewer.window._qt_window, UserClose()) is False
    assert w._ended.is_set()  # the worker's generator ended before the window closes
    wait_idle(qtbot, w)
    assert not worker.is_running
    assert "stopped at step" in w.result.value
    assert (tmp_path / "run2" / "checkpoint.pt").exists()
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=WAIT)

    # the Stop button also ends a paused run
    w.out_dir.value = tmp_path / "run3"
    worker = w.start()
    qtbot.waitUntil(lambda: len(w.history["step"]) >= 1, timeout=WAIT)
    w.pause_button.changed.emit(True)
    qtbot.waitUntil(lambda: worker.is_paused, timeout=WAIT)
    w.stop_button.changed.emit(True)
    wait_idle(qtbot, w)
    assert "stopped at step" in w.result.value and (tmp_path / "run3" / "checkpoint.pt").exists()


def test_train_with_two_processes(make_napari_viewer, qtbot, tmp_path, notes):
    """Two local processes: the same live plot (rank 0's events); pause holds them; Stop ends a paused run."""
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Train")
    w.network.value = "APR_A"
    w.steps.value, w.size.value, w.batch.value, w.processes.value = 100_000, 32, 4, 2
    w.out_dir.value = tmp_path / "run"
    worker = w.start()
    qtbot.waitUntil(lambda: len(w.history["step"]) >= 2, timeout=WAIT)
    assert w.history["step"][:2] == [1, 2] and len(w.plot.series["loss"].ys) >= 2
    w.pause_button.changed.emit(True)
    qtbot.waitUntil(lambda: worker.is_paused, timeout=WAIT)
    n = len(w.history["step"])
    qtbot.wait(500)
    assert len(w.history["step"]) <= n + 1
    w.stop_button.changed.emit(True)
    wait_idle(qtbot, w)
    assert not notes
    assert "stopped at step" in w.result.value and (tmp_path / "run" / "checkpoint.pt").exists()
    assert w.checkpoint == tmp_path / "run" / "checkpoint.pt"


def test_train_bad_input(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Train")
    w.dataset.value = "folder"
    w.folder.value = tmp_path / "missing"
    assert w.start() is None
    assert "does not exist" in notes[-1][0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    w.dataset.value = "synthetic shapes"
    w.out_dir.value = tmp_path / "full"
    assert w.start() is None
    assert "not empty" in notes[-1][0]
    assert not w.task.running


# ------------------------------------------------------------------ annotate
def test_annotate_shows_model_prediction(make_napari_viewer, qtbot, tmp_path, grey_checkpoint):
    from napari_aprnet.classify import Classifier

    images, names = shapes_gallery(48, seed=1)
    for i, im in enumerate(images[:3]):
        np.save(tmp_path / f"s{i}.npy", im)
    viewer = make_napari_viewer()
    w = open_widget(viewer, "Annotate")
    w.classes.value = ", ".join(names)
    assert w.open(tmp_path)
    w.load_model(grey_checkpoint)
    ref = Classifier.load(grey_checkpoint)
    for i in range(2):
        qtbot.waitUntil(lambda: w.prediction.value not in ("", "model: ..."), timeout=WAIT)
        wait_idle(qtbot, w)
        proba = ref.predict_proba([images[i]])[0]
        assert w.prediction.value == f"model: {ref.class_names[proba.argmax()]} ({100 * proba.max():.0f}%)"
        w.assign_number(i + 1)  # label and move on: the next image gets its own prediction
    assert w.annotations.labels == {"s0.npy": names[0], "s1.npy": names[1]}
