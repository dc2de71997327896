"""Dock widget "Train": train an APRNet in the background with a live loss/accuracy (or IoU) plot.

Two tasks: classify (synthetic shapes or a folder of class folders) and
segment from layers (an Image layer and a Labels layer drawn on it; the
form is :class:`~napari_aprnet._widgets.train_segment.SegmentForm`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, PushButton, SpinBox
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QMessageBox

from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    find_widget,
    form,
    notify,
    open_widget,
    register_widget,
    row,
    task_widgets,
    text,
    unwrap_viewer,
)
from napari_aprnet._widgets._plot import LinePlot
from napari_aprnet._widgets._step_time import StepTimeEstimate
from napari_aprnet._widgets.train_segment import ANNOTATION_RULE, SEGMENT_DEFAULTS, SegmentForm

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget", "model_choices", "train_job"]

DATASETS = ("synthetic shapes", "folder")
TASKS = ("classify shapes / folder", "segment from layers")
#: Widget defaults: learn visibly within minutes on 2 cores (see benchmarks/RESULTS.md, "GUI defaults").
DEFAULTS = {"network": "APR_B", "size": 128, "batch": 36, "steps": 600}
LEARNING_NOTE = ("Chance is 83 % error (six classes); the error shown should fall well below it as the run "
                 "goes (APR_B at 256 px reaches ~4 % after 1000-1500 steps). Below 128 px the ripples of "
                 "the fuzzy shapes vanish and fuzzy vs regular cannot be told apart.")


def eta_text(elapsed: float, done: int, left: int) -> str:
    """``", about N min left"`` from the time of the steps done so far ('' before any)."""
    if done <= 0 or left <= 0 or elapsed <= 0:
        return ""
    sec = elapsed / done * left
    return f", about {sec / 60:.0f} min left" if sec >= 90 else f", about {sec:.0f} s left"


def model_choices(segment: bool = False) -> list[str]:
    """Network names offered (base names and variants): classifiers, or with ``segment`` the U-Nets."""
    from napari_aprnet.models import MODEL_NAMES, UNET_NAMES

    if segment:
        return [v for name in UNET_NAMES for v in (name, f"{name}-same" if name.startswith("APR") else None) if v]
    out = []
    for name in MODEL_NAMES:
        out.append(name)
        out += [f"{name}-{v}" for v in (("same", "close") if name.startswith("APR") else ("expanded",))]
    return out


def train_job(config, out: Path, resume: bool = False, ended=None, nproc: int = 1, annotations=None, *, cancel):
    """Generator run in a worker: the events of :func:`napari_aprnet.train.train` (``ended`` set at the end).

    With ``nproc`` > 1 the run uses that many local processes (the events are rank 0's);
    ``annotations``: the images and labels of a segmentation run from layers.
    """
    from napari_aprnet.training import train

    try:
        what = "resuming the stopped run" if resume else "preparing data and network"
        yield Progress(0, 0, what + (f" in {nproc} processes..." if nproc > 1 else "..."))
        last = None
        for event in train(config, out, resume=resume, stop=cancel, nproc=nproc, annotations=annotations):
            last = event
            yield event
        return last
    finally:
        if ended is not None:
            ended.set()


class _CloseGuard(QObject):
    """Event filter on the main window: what closing does while training runs.

    A close by the user (the window's close button: a spontaneous event)
    asks first. A close from code (``viewer.close()``, a script, a test)
    never shows a dialog: it stops the run, which saves a checkpoint. In
    both cases the close waits for the worker without processing Qt events.
    """

    def __init__(self, widget: TrainWidget):
        super().__init__()
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt name)
        try:
            running = event.type() == QEvent.Close and self.widget.task.running
        except RuntimeError:  # the widget is already gone
            return False
        if running:
            if event.spontaneous() and not self.widget.confirm_close():
                event.ignore()
                return True
            self.widget.stop(wait=True)
        return False


def _set_quietly(widget, attr: str, value) -> None:
    """Set a magicgui widget's attribute unless Qt already deleted it (napari tears docks down first)."""
    try:
        setattr(widget, attr, value)
    except RuntimeError:
        pass


class TrainWidget(Container):
    """Train a classifier (synthetic shapes, a folder dataset or an annotation export), or a segmentation
    network from an Image layer and a Labels layer drawn on it.

    The run folder receives ``checkpoint.pt`` (and ``best.pt`` for fixed
    datasets) and ``log.csv``. Several processes share each batch (data
    parallel, same result as one; the plot shows rank 0's events, with the
    loss of the whole batch). Pause halts between steps; Stop saves a
    checkpoint and ends the run (Resume continues it). Closing the napari
    window during training asks first and then stops cleanly; closing it from
    code (``viewer.close()``) stops the run without asking.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.task_choice = ComboBox(label="task", choices=list(TASKS), value=TASKS[0],
                                    tooltip="classify whole images, or segment objects drawn in a Labels layer")
        self.segment_form = SegmentForm(self.viewer)
        self.segment_form.visible = False
        self.dataset = ComboBox(label="dataset", choices=list(DATASETS), value=DATASETS[0],
                                tooltip="synthetic shapes (6 classes, generated on the fly) or a folder "
                                        "with one sub-folder per class (e.g. an Annotate export)")
        self.folder = FileEdit(label="dataset folder", mode="d", visible=False)
        # choices recomputed on every reset (napari resets them when layers change): the task's networks
        self.network = ComboBox(label="network", choices=lambda *_: model_choices(self.segmenting),
                                value=DEFAULTS["network"],
                                tooltip="thesis networks: APR_* run on particles, Pix_* on pixels")
        self.steps = SpinBox(label="steps", value=DEFAULTS["steps"], min=1, max=10_000_000,
                             tooltip="synthetic shapes: number of batches (fresh images every batch)")
        self.epochs = SpinBox(label="epochs", value=5, min=1, max=100_000, visible=False,
                              tooltip="folder datasets: passes over the training images")
        self.size = SpinBox(label="image size", value=DEFAULTS["size"], min=16, max=1024, step=16,
                            tooltip="network input side; images are resized to it (shapes below 128 px "
                                    "lose the ripples that tell fuzzy from regular shapes)")
        self.batch = SpinBox(label="batch size", value=DEFAULTS["batch"], min=1, max=1024)
        self.processes = SpinBox(label="processes", value=1, min=1, max=max(1, os.cpu_count() or 1),
                                 tooltip="training processes on this machine (data parallel): each converts "
                                         "and trains on its share of the batch; same result as one process")
        self.expected = text("")
        self.lr = FloatSpinBox(label="learning rate", value=5e-4, min=1e-6, max=1.0, step=1e-4,
                               tooltip="Adam learning rate (thesis: 5e-4)")
        self.lr.native.setDecimals(6)
        self.rel_error = FloatSpinBox(label="E (relative error)", value=0.1, min=1e-3, max=10.0, step=0.01,
                                      tooltip="APR relative error threshold used to convert training images")
        self.out_dir = FileEdit(label="run folder", mode="d",
                                tooltip="new or empty folder for checkpoints and log (default: a new folder "
                                        "under ~/aprnet-runs)")
        self.start_button, self.pause_button = PushButton(text="Start"), PushButton(text="Pause")
        self.resume_button = PushButton(text="Resume stopped run", visible=False,
                                        tooltip="continue the stopped run in its folder from its checkpoint")
        self.pause_button.enabled = False
        self.progress, self.status, self.stop_button = task_widgets("training")
        self.stop_button.text = "Stop"
        self.task = BackgroundTask("Training", self.progress, self.status, self.stop_button, quit_on_cancel=False)
        self.task.cancel_text = "stopping... (the current step ends and a checkpoint is saved)"
        self._ended = None  # threading.Event set when the worker's generator ends
        self.plot = LinePlot(title="training loss and accuracy", xlabel="step")
        self.result = text("")
        self.classify_button = PushButton(text="Open checkpoint in Classify")
        self.classify_button.enabled = False
        self.extend([form(self.task_choice), self.segment_form,
                     form(self.dataset, self.folder, self.network, self.steps, self.epochs, self.size, self.batch,
                          self.processes, self.lr, self.rel_error, self.out_dir), self.expected,
                     row(self.start_button, self.pause_button, self.stop_button), self.resume_button,
                     self.progress, self.status,
                     self.result, self.classify_button])
        self.native.layout().insertWidget(self.native.layout().count() - 2, self.plot)
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "accuracy": []}
        self.checkpoint: Path | None = None
        self.run_dir: Path | None = None
        self.stopped = False
        self._first = None
        self._metric = "accuracy"  # the task's score shown: accuracy, or IoU for segmentation
        self.dataset.changed.connect(self._dataset_changed)
        self.task_choice.changed.connect(self._task_changed)
        self.start_button.changed.connect(lambda *_: self.start())
        self.resume_button.changed.connect(lambda *_: self.resume())
        self.estimate = StepTimeEstimate(self._timing_config, self._show_expected)
        for w in (self.task_choice, self.dataset, self.steps, self.epochs, self.size, self.batch, self.network,
                  self.rel_error):
            w.changed.connect(self._show_expected)
        self._show_expected()
        self.pause_button.changed.connect(lambda *_: self.toggle_pause())
        self.classify_button.changed.connect(lambda *_: self.open_in_classify())
        self._guard = _CloseGuard(self)
        qt_window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        if qt_window is not None:
            qt_window.installEventFilter(self._guard)
        self.native.destroyed.connect(self._stop_silently)
        register_widget(napari_viewer, "Train", self)

    # ------------------------------------------------------------ config
    @property
    def segmenting(self) -> bool:
        """True in "segment from layers" mode."""
        return self.task_choice.value == TASKS[1]

    def _dataset_changed(self, *_: Any) -> None:
        folder = self.dataset.value == "folder" and not self.segmenting
        self.folder.visible, self.epochs.visible, self.steps.visible = folder, folder, not folder
        self.dataset.visible = self.size.visible = not self.segmenting

    def _task_changed(self, *_: Any) -> None:
        seg = self.segmenting
        self.segment_form.visible = seg
        self.network.reset_choices()
        self.network.value = SEGMENT_DEFAULTS["network"] if seg else DEFAULTS["network"]
        defaults = SEGMENT_DEFAULTS if seg else DEFAULTS
        self.steps.value, self.batch.value = defaults["steps"], defaults["batch"]
        self.lr.value = SEGMENT_DEFAULTS["lr"] if seg else 5e-4
        self.plot.title = "training loss and IoU" if seg else "training loss and accuracy"
        self.classify_button.text = f"Open checkpoint in {'Segment' if seg else 'Classify'}"
        self._dataset_changed()

    def _show_expected(self, *_: Any) -> None:
        if self.segmenting:
            self.expected.value = (f"{self.steps.value} steps of {self.batch.value} random crops of the annotated "
                                   f"area. {ANNOTATION_RULE}")
            return
        if self.dataset.value == "folder":
            self.expected.value = (f"{self.epochs.value} epoch(s) over the folder's images, "
                                   f"batches of {self.batch.value}")
            return
        steps = int(self.steps.value)
        made = self._timing_config()
        eta = self.estimate.text(steps, made[1] if made else None)
        self.expected.value = f"{steps} steps of {self.batch.value} fresh images{': ' + eta if eta else ''}. " \
                              f"{LEARNING_NOTE}"

    def _timing_config(self):
        """The config and key timed for the expected time (synthetic shapes, not while training), or None."""
        if self.segmenting or self.dataset.value == "folder" or self.task.running:
            return None
        try:
            config = self.config()
        except (ValueError, TypeError):
            return None
        return config, (config.model, config.size, config.batch_size, config.rel_error)

    def offer_folder(self, folder: str | Path) -> None:
        """Select ``folder`` as the dataset (used by Annotate's export)."""
        self.dataset.value = "folder"
        self.folder.value = Path(folder)

    def config(self):
        """The :class:`TrainConfig` described by the widget (validated)."""
        from napari_aprnet.training import TrainConfig

        if self.segmenting:
            kw = {"steps": int(self.steps.value), "rel_error": float(self.rel_error.value),
                  **self.segment_form.config_fields(self.network.value, int(self.steps.value))}
            return TrainConfig(lr=float(self.lr.value), batch_size=int(self.batch.value),
                               checkpoint_every=max(1, int(self.steps.value) // 4), **kw).validate()
        if self.dataset.value == "folder":
            folder = Path(self.folder.value)
            if str(self.folder.value).strip() in ("", "."):
                raise ValueError("dataset \"folder\" needs a dataset folder: pick a folder with one sub-folder "
                                 "of images per class (e.g. an Annotate export), or choose synthetic shapes")
            if not folder.is_dir():
                raise ValueError(f"dataset folder {str(folder)!r} does not exist; pick a folder with one "
                                 "sub-folder of images per class")
            kw = {"data": str(folder), "epochs": int(self.epochs.value)}
        else:
            kw = {"data": "shapes", "steps": int(self.steps.value)}
        return TrainConfig(model=self.network.value, lr=float(self.lr.value), rel_error=float(self.rel_error.value),
                           size=int(self.size.value), batch_size=int(self.batch.value),
                           checkpoint_every=max(1, int(self.steps.value) // 4), **kw).validate()

    def _run_dir(self) -> Path:
        chosen = Path(self.out_dir.value)
        if str(self.out_dir.value) not in ("", ".") and (not chosen.exists() or not any(chosen.iterdir())):
            return chosen
        if str(self.out_dir.value) not in ("", "."):
            raise ValueError(f"run folder {str(chosen)!r} is not empty; choose a new folder "
                             "(or leave the field empty for a fresh one)")
        return Path.home() / "aprnet-runs" / time.strftime("run-%Y%m%d-%H%M%S")

    # ----------------------------------------------------------- control
    def start(self):
        """Start training in the background; return the worker or None."""
        if self.task.running:
            notify("training is already running", "warning")
            return None
        try:
            config = self.config()
            annotations = self._annotations(config)
            out = self._run_dir()
        except (ValueError, TypeError, OSError) as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        self.run_dir, self.checkpoint = out, None
        self.history = {"step": [], "loss": [], "accuracy": []}
        self.plot.clear()
        self.result.value = f"run folder: {out}" + (f"\n{self._validation_note(config, annotations)}"
                                                    if annotations is not None else "")
        return self._launch(config, out, resume=False, annotations=annotations)

    def _annotations(self, config):
        """The drawn annotations of a segmentation run (None for classification); ValueError says what to do."""
        if not self.segmenting:
            return None
        annotations = self.segment_form.annotations()
        annotations.splits(config.image_shape, 1, config.seed, config.val_fraction)  # the crop fits the images
        return annotations

    @staticmethod
    def _validation_note(config, annotations) -> str:
        splits = annotations.splits(config.image_shape, 1, config.seed, config.val_fraction)
        where = ("a held-out part of the annotations" if splits.held_out else
                 "the training area (draw a larger area, or on more planes, to hold a part out)")
        return f"{annotations.n_objects} objects drawn; validation on {where}"

    def resume(self):
        """Continue the stopped run in its folder (up to the steps/epochs in the form); return the worker or None."""
        if self.task.running or self.run_dir is None or not (self.run_dir / "checkpoint.pt").is_file():
            notify("nothing to resume: start a run and stop it first")
            return None
        try:
            config = self.config()
            annotations = self._annotations(config)
        except (ValueError, TypeError, OSError) as exc:
            notify(str(exc))
            return None
        self.result.value = f"resuming the run in {self.run_dir}"
        return self._launch(config, self.run_dir, resume=True, annotations=annotations)

    def _launch(self, config, out: Path, resume: bool, annotations=None):
        import threading

        self.estimate.cancel()  # a timing of the expected time would only slow the run down
        self.classify_button.enabled = False
        self.start_button.enabled = False
        self.resume_button.visible = False
        self.stopped = False
        self.pause_button.enabled, self.pause_button.text = True, "Pause"
        self._ended = threading.Event()
        self._first = None  # (step, time) of this launch's first step, for the time left
        self._metric = "IoU" if config.task == "segment" else "accuracy"
        worker = self.task.start(train_job, config, out, resume, self._ended, int(self.processes.value), annotations,
                                 on_yield=self._event, on_finish=self._finished)
        self._show_expected()  # no "estimating..." left on screen while the run shows its own pace
        return worker

    def toggle_pause(self) -> None:
        """Pause (between steps) or resume the run."""
        worker = self.task.worker
        if worker is None:
            return
        pausing = self.pause_button.text == "Pause"
        if pausing:
            worker.pause()
        else:
            worker.resume()
        self.pause_button.text = "Resume" if pausing else "Pause"
        self.status.value = ("paused after the current step (Resume continues, Stop ends the run)" if pausing
                             else "resumed")

    def stop(self, wait: bool = False, timeout: float = 60.0) -> None:
        """Stop the run (a checkpoint is saved); with ``wait``, block until the worker ended."""
        worker = self.task.worker
        if worker is None:
            return
        self.task.cancel_event.set()  # first: the widgets below may already be deleted when napari closes
        try:
            self.task.cancel()
        except RuntimeError:
            if getattr(worker, "is_paused", False):
                worker.resume()
        _set_quietly(self.pause_button, "enabled", False)
        if wait and self._ended is not None:  # no Qt event processing here (may run inside a close event)
            self._ended.wait(timeout)

    def _stop_silently(self, *_: Any) -> None:
        self.estimate.cancel()
        if self.task.worker is not None:
            self.task.cancel_event.set()

    def confirm_close(self) -> bool:
        """Ask whether to stop training and close napari."""
        answer = QMessageBox.question(self.native, "Training is running",
                                      "A training run is in progress. Stop it (a checkpoint is saved) "
                                      "and close napari?", QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    # ------------------------------------------------------------ events
    def _event(self, ev) -> None:
        if ev.phase == "train" and ev.loss is not None:
            self._train_point(ev)
        elif ev.phase in ("val", "test", "test_modified"):
            self.result.value = f"{ev.phase}: loss {ev.loss:.3f}, {self._metric} {ev.accuracy:.3f}"
            if ev.phase == "val":
                self.history.setdefault("val_step", []).append(ev.step)
                self.history.setdefault("val_accuracy", []).append(ev.accuracy)
                self._plot_history()
        elif ev.phase in ("done", "stopped"):
            self.stopped = ev.phase == "stopped"
            self.checkpoint = Path(ev.checkpoint) if ev.checkpoint else None
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in ev.metrics.items()
                                if isinstance(v, (int, float)))
            val = self.history.get("val_accuracy")
            last_val = f"\nlast validation {self._metric}: {val[-1]:.3f}" if val else ""
            self.result.value = (f"{'finished' if ev.phase == 'done' else 'stopped'} at step {ev.step}; "
                                 f"checkpoint: {self.checkpoint}" + (f"\n{metrics}" if metrics else "") + last_val)

    def _train_point(self, ev) -> None:
        if self._first is None:
            self._first = (ev.step, time.monotonic())
        self.history["step"].append(ev.step)
        self.history["loss"].append(ev.loss)
        self.history["accuracy"].append(ev.accuracy if ev.accuracy is not None else float("nan"))
        self._plot_history()
        self.progress.max = max(int(ev.total_steps), 1)
        self.progress.value = min(int(ev.step), int(ev.total_steps))
        if self.task.cancel_event.is_set():
            return  # keep "stopping..." on screen
        left = eta_text(time.monotonic() - self._first[1], ev.step - self._first[0], ev.total_steps - ev.step)
        self.status.value = (f"step {ev.step}/{ev.total_steps}  loss {ev.loss:.3f}  "
                             f"{self._metric} {ev.accuracy:.2f}  {ev.elapsed:.0f} s{left}")

    def _plot_history(self) -> None:
        from napari_aprnet._widgets._plot import running_mean

        h, steps = self.history, self.history["step"]
        window = max(5, min(50, len(steps) // 10))
        self.plot.set_series("loss", steps, h["loss"], "#ff8a65", "left", alpha=0.3, label="_loss per batch")
        self.plot.set_series("loss (mean)", steps, running_mean(h["loss"], window), "#ff8a65", "left",
                             label=f"loss (mean of {window})")
        self.plot.set_series("accuracy (mean)", steps, running_mean(h["accuracy"], window), "#81c784", "right",
                             label=f"{self._metric} (mean of {window})")
        if h.get("val_step"):
            self.plot.set_series("validation", h["val_step"], h["val_accuracy"], "#fff176", "right", style="o",
                                 label=f"validation {self._metric}")

    def _finished(self) -> None:
        self.start_button.enabled = True
        self.pause_button.enabled, self.pause_button.text = False, "Pause"
        self.resume_button.visible = bool(self.stopped and self.run_dir is not None
                                          and (self.run_dir / "checkpoint.pt").is_file())
        if self.checkpoint is not None and self.checkpoint.exists():
            self.classify_button.enabled = True
            user = find_widget(self.viewer, self._user_widget)
            if user is not None:
                user.offer_checkpoint(self.checkpoint, **self._offer_kwargs())
            self.status.value = f"checkpoint saved: {self.checkpoint}"
            if self._metric == "IoU":
                self.segment_form.offer_start(self.checkpoint)
                self.status.value += ("\nSegment with it, correct the result in its Labels layer, pick that "
                                      "layer and Start again: the run continues from this checkpoint")

    @property
    def _user_widget(self) -> str:
        """The widget that uses the checkpoints of the current task."""
        return "Segment" if self._metric == "IoU" else "Classify"

    def _offer_kwargs(self) -> dict:
        return {"layer": self.segment_form.image.value} if self._metric == "IoU" else {}

    def open_in_classify(self) -> None:
        """Open the Classify (or, for segmentation, Segment) widget with the last checkpoint loaded."""
        if self.checkpoint is None:
            notify("no checkpoint yet: train first")
            return
        open_widget(self.viewer, self._user_widget).offer_checkpoint(self.checkpoint, load=True,
                                                                     **self._offer_kwargs())
