"""napari widget Segment: pytest-qt under Xvfb, with a tiny segmentation network trained once per module."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet._widgets._common import open_widget

WAIT = 120_000


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    from napari_aprnet.training import TrainConfig, run_training

    config = TrainConfig(model="APR_UNet", task="segment", data="nuclei2d", image_shape=[32, 32], steps=3,
                         batch_size=2, width=4, depth=2, n_test=2, seed=0, bn_batches=1)
    return run_training(config, tmp_path_factory.mktemp("seg") / "run").checkpoint


@pytest.fixture
def nuclei():
    from napari_aprnet.data.nuclei import NucleiDataset

    return [NucleiDataset(2, 5, (32, 32))[i][0] for i in range(2)]


def _run(qtbot, w, worker):
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)


def test_segment_adds_labels_and_probability_equal_to_the_segmenter(make_napari_viewer, qtbot, seg_checkpoint,
                                                                    nuclei):
    from napari_aprnet.training.segment import Segmenter

    viewer = make_napari_viewer()
    layer = viewer.add_image(nuclei[0], name="nuclei", scale=(0.5, 0.5))
    w = open_widget(viewer, "Segment")
    assert w.layer.value is layer  # preselected
    w.checkpoint.value = seg_checkpoint
    _run(qtbot, w, w.segment())  # loads the checkpoint first, then segments
    qtbot.waitUntil(lambda: "nuclei instances" in viewer.layers, timeout=WAIT)
    qtbot.waitUntil(lambda: not w.task.running, timeout=WAIT)
    expected = Segmenter.load(seg_checkpoint).segment(nuclei[0])
    labels = viewer.layers["nuclei instances"]
    np.testing.assert_array_equal(labels.data, expected.labels)
    np.testing.assert_allclose(viewer.layers["nuclei foreground probability"].data, expected.foreground, atol=1e-6)
    assert tuple(labels.scale) == (0.5, 0.5) and type(labels).__name__ == "Labels"

    _run(qtbot, w, w.segment())  # unedited: segmenting again replaces the layer
    assert [ly.name for ly in viewer.layers if "instances" in ly.name] == ["nuclei instances"]
    corrected = labels.data.copy()
    corrected[:4, :4] = 7
    labels.data = corrected  # the user corrects the result for the next training round
    _run(qtbot, w, w.segment())
    qtbot.waitUntil(lambda: "nuclei instances [2]" in viewer.layers, timeout=WAIT)
    np.testing.assert_array_equal(viewer.layers["nuclei instances"].data, corrected)  # the correction is kept
    np.testing.assert_array_equal(viewer.layers["nuclei instances [2]"].data, expected.labels)


def test_segment_stack_plane_by_plane_and_refusals(make_napari_viewer, qtbot, seg_checkpoint, nuclei, notes,
                                                   tmp_path):
    from napari_aprnet.training.segment import Segmenter

    viewer = make_napari_viewer()
    w = open_widget(viewer, "Segment")
    w.checkpoint.value = tmp_path / "missing.pt"
    assert w.segment() is None and "checkpoint" in notes[-1][0]  # nothing loaded, no file in the field
    w.checkpoint.value = seg_checkpoint
    _run(qtbot, w, w.load())
    stack = np.stack(nuclei)
    layer = viewer.add_image(stack, name="stack", axis_labels=("t", "y", "x"))
    _run(qtbot, w, w.segment(layer))
    seg = Segmenter.load(seg_checkpoint)
    for i in range(2):
        np.testing.assert_array_equal(viewer.layers["stack instances"].data[i], seg.segment(nuclei[i]).labels)
    drawn = viewer.add_labels(np.zeros((32, 32), dtype=np.int32), name="drawn")
    assert w.segment(drawn) is None and "Labels layer" in w.status.value


def test_bundled_model_segments_the_nuclei_sample_out_of_the_box(make_napari_viewer, qtbot):
    """Open the nuclei sample, press Segment: the preselected bundled model finds the true nuclei."""
    from napari_aprnet._widgets._common import PLUGIN
    from napari_aprnet.training.seg_metrics import SegmentationCounts

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    w = open_widget(viewer, "Segment")
    assert w.checkpoint.value.name == "nuclei2d_apr_unet.pt" and w.layer.value is viewer.layers["nuclei"]
    _run(qtbot, w, w.segment())  # loads the bundled network, then segments
    qtbot.waitUntil(lambda: "nuclei instances" in viewer.layers and not w.task.running, timeout=WAIT)
    found, truth = viewer.layers["nuclei instances"].data, viewer.layers["nuclei true instances"].data
    counts = SegmentationCounts().add(found, truth, instances=found)
    assert counts.iou >= 0.9 and counts.f1 >= 0.9, (counts.iou, counts.f1)
