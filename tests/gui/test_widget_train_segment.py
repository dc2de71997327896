"""napari widget Train in "segment from layers" mode: pytest-qt under Xvfb (a few training steps)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet._widgets._common import open_widget
from napari_aprnet._widgets.train import TASKS

WAIT = 120_000


@pytest.fixture
def drawn():
    """A nuclei image and a Labels layer with its objects drawn in the upper half only (an annotated area)."""
    from napari_aprnet.data.nuclei import make_nuclei

    image, mask = make_nuclei(np.random.default_rng(5), (64, 96))
    labels = np.zeros_like(mask)
    labels[:40] = mask[:40]
    return image, labels


def _segment_mode(viewer, tmp_path, steps=4):
    w = open_widget(viewer, "Train")
    w.task_choice.value = TASKS[1]
    assert w.network.value == "APR_UNet" and "Pix_UNet" in w.network.choices and "APR_B" not in w.network.choices
    w.steps.value, w.batch.value, w.segment_form.crop.value = steps, 2, 32
    w.out_dir.value = tmp_path / "run"
    return w


def test_train_from_layers_writes_a_checkpoint_that_segment_uses(make_napari_viewer, qtbot, tmp_path, drawn):
    from napari_aprnet.training.segment import Segmenter

    viewer = make_napari_viewer()
    image = viewer.add_image(drawn[0], name="nuclei")
    viewer.add_labels(drawn[1], name="drawn")
    w = _segment_mode(viewer, tmp_path)
    assert w.segment_form.image.value is image and w.segment_form.labels.value.name == "drawn"
    assert w.dataset.native.isHidden() and not w.segment_form.native.isHidden()
    segment = open_widget(viewer, "Segment")
    assert w.start() is not None, w.status.value
    assert "objects drawn; validation on a held-out part" in w.result.value
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    assert w.checkpoint is not None and w.checkpoint.is_file(), w.result.value
    assert w.history["step"] == [1, 2, 3, 4] and all(0 <= v <= 1 for v in w.history["accuracy"])
    assert w.history.get("val_step") and "IoU" in w.result.value
    seg = Segmenter.load(w.checkpoint)
    assert seg.metadata["config"]["data"] == "annotations" and seg.ndim == 2
    # handed over: Segment segments the image with it
    assert segment.checkpoint.value == w.checkpoint and segment.layer.value is image
    assert segment.segment() is not None
    qtbot.waitUntil(lambda: "nuclei instances" in viewer.layers, timeout=WAIT)
    qtbot.waitUntil(lambda: not segment.task.running, timeout=WAIT)
    np.testing.assert_array_equal(viewer.layers["nuclei instances"].data, seg.segment(drawn[0]).labels)
    # the loop: the next run continues from this checkpoint
    assert w.segment_form.continue_from.value and w.segment_form.start_checkpoint.value == w.checkpoint
    w.out_dir.value = tmp_path / "run2"
    w.steps.value = 2
    assert w.start() is not None, w.status.value
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    assert w.checkpoint.parent == tmp_path / "run2"
    assert Segmenter.load(w.checkpoint).metadata["config"]["init_from"] == str(tmp_path / "run" / "best.pt")


def test_segment_mode_refusals(make_napari_viewer, qtbot, tmp_path, drawn, notes):
    viewer = make_napari_viewer()
    viewer.add_image(drawn[0], name="nuclei")
    w = _segment_mode(viewer, tmp_path)
    assert w.start() is None and "no Labels layer" in notes[-1][0]
    empty = viewer.add_labels(np.zeros((64, 96), np.int32), name="empty")
    w.segment_form.labels.value = empty
    assert w.start() is None and "no labels are drawn" in notes[-1][0]
    viewer.add_labels(drawn[1][:50], name="short")
    w.segment_form.labels.value = viewer.layers["short"]
    assert w.start() is None and "labels have shape" in notes[-1][0]
    w.segment_form.labels.value = viewer.layers["drawn"] if "drawn" in viewer.layers else \
        viewer.add_labels(drawn[1], name="drawn")
    w.segment_form.crop.value = 128
    assert w.start() is None and "larger than the image" in notes[-1][0]
    assert not w.task.running
