"""Regenerate screenshots/*.png: every APRNet widget in use on real data.

Usage (needs a display; headless: ``xvfb-run -a -s "-screen 0 1600x1000x24" python ...``)::

    python scripts/make_screenshots.py [--out screenshots] [--checkpoint best.pt] [--steps 60]

Writes ``convert.png`` (3D blobs sample with its level map and legend),
``tune_e.png`` (E sweep of the natural photo with the CR/error plot),
``train.png`` (training on synthetic shapes, live loss/accuracy plot),
``classify.png`` (probabilities and feature maps of a shape image) and
``annotate.png`` (labelling a folder of shape images with the model's
prediction beside the label) and ``segment.png`` (the nuclei sample
segmented by the preselected bundled nuclei model, as a new user would:
open the sample, press Segment),
``train_segment.png`` (Train in "segment from layers" mode after a run with
``--seg-steps`` (default 60) and its other defaults on the nuclei drawn in
one corner of an image) and
``train_segment_result.png`` (the Segment widget's result on the whole
image with that checkpoint). ``--only train_segment`` makes just those.
Without ``--checkpoint``, classify and annotate use the bundled shapes
classifier preselected in the widgets, as a new user would: open the shapes sample, press Classify.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PLUGIN = "napari-aprnet"
SHOTS = ["convert", "tune", "train", "classify", "annotate", "segment", "train_segment"]
SIZE = (1500, 950)


def wait(widget, timeout: float = 600.0, until=None) -> None:
    """Process Qt events until the widget's task ended (or ``until()`` is true)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if (until() if until is not None else not widget.task.running):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{type(widget).__name__} did not finish in {timeout} s")


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=f"napari-aprnet: {title}")
    viewer.window._qt_window.resize(*SIZE)
    return viewer


def dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def hide_dock(viewer, widget) -> None:
    """Hide the dock holding ``widget`` (to make room for the next one)."""
    from qtpy.QtWidgets import QDockWidget

    for d in viewer.window._qt_window.findChildren(QDockWidget):
        inner = d.widget()
        if inner is not None and (inner is widget.native or inner.isAncestorOf(widget.native)):
            d.hide()


def show_in_dock(widget, child) -> None:
    """Scroll the dock's scroll area holding ``widget`` so that ``child`` (a QWidget in it) is in view."""
    from qtpy.QtWidgets import QApplication, QScrollArea

    parent = widget.native.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        QApplication.processEvents()
        parent.ensureWidgetVisible(child, 0, 0)


def save(viewer, out: Path, name: str) -> Path:
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.window._qt_window.resize(*SIZE)
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    path = out / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")
    return path


def shot_convert(out: Path) -> None:
    viewer = new_viewer("Convert to APR")
    viewer.open_sample(PLUGIN, "blobs_3d")
    layer = viewer.layers["blobs 3D"]
    w = dock(viewer, "Convert to APR")
    w.image.value = layer  # preselected anyway; automatic thresholds are on by default
    w.convert()
    wait(w)
    layer.visible = False  # the reconstruction and, beside it, the level map
    viewer.dims.set_current_step(0, 16)
    save(viewer, out, "convert.png")
    viewer.close()


def shot_tune(out: Path) -> None:
    from napari_aprnet.samples import natural_photo

    viewer = new_viewer("Tune E")
    layer = viewer.add_image(natural_photo()[::2, ::2], name="camera")
    w = dock(viewer, "Tune E")
    w.image.value = layer
    w.values.value = "0.03:1.0:7"
    w.run()
    wait(w)
    layer.visible = False
    viewer.layers["camera E sweep levels"].opacity = 0.35
    viewer.dims.set_current_step(0, 4)
    save(viewer, out, "tune_e.png")
    viewer.close()


def shot_train(out: Path, run_dir: Path, steps: int) -> Path:
    from napari_aprnet.data.shapes import ShapeStream

    viewer = new_viewer("Train")
    w = dock(viewer, "Train")  # the widget's defaults, except the number of steps
    images, labels = ShapeStream(seed=0, size=w.size.value, batch=w.batch.value).batch(0)  # the first batch
    viewer.add_image(images, name="training batch 0", axis_labels=("image", "y", "x"))
    w.steps.value = steps
    w.out_dir.value = run_dir
    w.start()
    wait(w, until=lambda: len(w.history["step"]) >= max(2, int(steps * 0.7)))
    w.toggle_pause()  # mid-run: live plot and progress, paused for the shot
    wait(w, until=lambda: w.task.worker is not None and w.task.worker.is_paused)
    save(viewer, out, "train.png")
    w.toggle_pause()
    wait(w)
    checkpoint = w.checkpoint
    viewer.close()
    if checkpoint is None:
        raise RuntimeError("training did not write a checkpoint")
    return checkpoint


def shot_classify(out: Path, checkpoint: Path | None) -> None:
    viewer = new_viewer("Classify")
    viewer.open_sample(PLUGIN, "shapes")
    stack = viewer.layers["shapes"]
    w = dock(viewer, "Classify")
    if checkpoint is not None:
        w.load(checkpoint)
        wait(w)
    w.layers.value = [stack]
    w.classify()
    wait(w, until=lambda: "shapes" in w.probabilities)
    viewer.dims.set_current_step(0, 2)
    w.show_features(stack, w.classifier.layer_names()[0])
    wait(w)
    viewer.reset_view()  # the montage sits beside the image: show both
    save(viewer, out, "classify.png")
    viewer.close()


def shot_annotate(out: Path, checkpoint: Path | None, folder: Path) -> None:
    import numpy as np

    from napari_aprnet.io import write_image
    from napari_aprnet.samples import shapes_gallery

    images, names = shapes_gallery(seed=5)
    more, _ = shapes_gallery(seed=6)
    for i, im in enumerate(np.concatenate([images, more])):
        write_image(folder / f"shape_{i:02d}.png", (im * 255).astype(np.uint8))
    viewer = new_viewer("Annotate")
    w = dock(viewer, "Annotate")
    w.classes.value = ", ".join(names)
    w.open(folder)
    w.load_model(checkpoint)  # None: the preselected bundled model
    wait(w)
    for k in (1, 2, 3):  # the first three images are a triangle, a square and a circle
        w.assign_number(k)
        wait(w)
    wait(w, until=lambda: w.prediction.value not in ("", "model: ..."))
    save(viewer, out, "annotate.png")
    viewer.close()


def shot_segment(out: Path) -> None:
    viewer = new_viewer("Segment")
    viewer.open_sample(PLUGIN, "nuclei")
    w = dock(viewer, "Segment")  # the bundled nuclei model and the sample's image are preselected
    w.segment()
    wait(w, until=lambda: "nuclei instances" in viewer.layers and not w.task.running)
    save(viewer, out, "segment.png")
    viewer.close()


def _drawn_nuclei(size: int = 256, corner: int = 112):
    """A fresh nuclei image and what a user would draw: every nucleus touching the upper-left ``corner``."""
    import numpy as np

    from napari_aprnet.data.nuclei import make_nuclei

    image, mask = make_nuclei(np.random.default_rng(20261130), (size, size))  # a seed never used in training
    drawn = np.where(np.isin(mask, np.unique(mask[:corner, :corner])[1:]), mask, 0).astype(np.int32)
    return image, drawn


def shot_train_segment(out: Path, run_dir: Path, steps: int) -> None:
    """train_segment.png: Train in "segment from layers" mode after a run of ``steps`` on the drawn nuclei (the
    widget's other defaults);
    train_segment_result.png: the Segment widget's instances of the whole image with that checkpoint."""
    image, drawn = _drawn_nuclei()
    viewer = new_viewer("Train segmentation from layers")
    viewer.add_image(image, name="nuclei", colormap="gray")
    viewer.add_labels(drawn, name="drawn nuclei", opacity=0.6)
    w = dock(viewer, "Train")
    w.task_choice.value = "segment from layers"
    w.segment_form.labels.value = viewer.layers["drawn nuclei"]
    w.out_dir.value = run_dir
    w.steps.value = steps
    if w.start() is None:
        raise RuntimeError(f"training did not start: {w.status.value}")
    wait(w, timeout=3600)
    if w.checkpoint is None:
        raise RuntimeError(f"training did not write a checkpoint: {w.result.value}")
    show_in_dock(w, w.plot)  # the form is tall: scroll the dock to the plot
    save(viewer, out, "train_segment.png")
    w.open_in_classify()  # "Open checkpoint in Segment": loads it there
    segment = dock(viewer, "Segment")
    wait(segment)
    hide_dock(viewer, w)
    segment.segment(viewer.layers["nuclei"])
    wait(segment, until=lambda: "nuclei instances" in viewer.layers and not segment.task.running)
    viewer.layers["drawn nuclei"].visible = False
    save(viewer, out, "train_segment_result.png")
    viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "screenshots")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint for classify/annotate (default: the bundled shapes classifier)")
    parser.add_argument("--steps", type=int, default=60, help="training steps for train.png (default 60)")
    parser.add_argument("--seg-steps", type=int, default=60,
                        help="training steps for train_segment.png (default 60)")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=SHOTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")  # no toasts in the shots
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or SHOTS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "convert" in only:
            shot_convert(args.out)
        if "tune" in only:
            shot_tune(args.out)
        if "train" in only:
            shot_train(args.out, tmp / "run", args.steps)
        if "classify" in only:
            shot_classify(args.out, args.checkpoint)
        if "annotate" in only:
            (tmp / "images").mkdir()
            shot_annotate(args.out, args.checkpoint, tmp / "images")
        if "segment" in only:
            shot_segment(args.out)
        if "train_segment" in only:
            shot_train_segment(args.out, tmp / "seg_run", args.seg_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
