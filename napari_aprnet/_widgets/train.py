"""Dock widget "Train": train an APRNet in the background with a live loss/accuracy plot."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, PushButton, SpinBox
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QMessageBox

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

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget", "model_choices", "train_job"]

DATASETS = ("synthetic shapes", "folder")


def model_choices() -> list[str]:
    """Network names offered (base names and variants)."""
    from napari_aprnet.models import MODEL_NAMES

    out = []
    for name in MODEL_NAMES:
        out.append(name)
        out += [f"{name}-{v}" for v in (("same", "close") if name.startswith("APR") else ("expanded",))]
    return out


def train_job(config, out: Path, *, cancel):
    """Generator run in a worker: the events of :func:`napari_aprnet.train.train`."""
    from napari_aprnet.training import train

    yield Progress(0, 0, "preparing data and network...")
    last = None
    for event in train(config, out, stop=cancel):
        last = event
        yield event
    return last


class _CloseGuard(QObject):
    """Event filter on the main window: asks before closing while training runs."""

    def __init__(self, widget: TrainWidget):
        super().__init__()
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Close and self.widget.task.running:
            if not self.widget.confirm_close():
                event.ignore()
                return True
            self.widget.stop(wait=True)
        return False


class TrainWidget(Container):
    """Train a classifier (synthetic shapes, a folder dataset or an annotation export).

    The run folder receives ``checkpoint.pt`` (and ``best.pt`` for fixed
    datasets) and ``log.csv``. Pause halts between steps; Stop saves a
    checkpoint and ends the run. Closing napari during training asks first
    and then stops cleanly.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.dataset = ComboBox(label="dataset", choices=list(DATASETS), value=DATASETS[0],
                                tooltip="synthetic shapes (6 classes, generated on the fly) or a folder "
                                        "with one sub-folder per class (e.g. an Annotate export)")
        self.folder = FileEdit(label="dataset folder", mode="d", visible=False)
        self.network = ComboBox(label="network", choices=model_choices(), value="APR_A",
                                tooltip="thesis networks: APR_* run on particles, Pix_* on pixels")
        self.steps = SpinBox(label="steps", value=200, min=1, max=10_000_000,
                             tooltip="synthetic shapes: number of batches (fresh images every batch)")
        self.epochs = SpinBox(label="epochs", value=5, min=1, max=100_000, visible=False,
                              tooltip="folder datasets: passes over the training images")
        self.size = SpinBox(label="image size", value=64, min=16, max=1024, step=16,
                            tooltip="network input side; images are resized to it")
        self.batch = SpinBox(label="batch size", value=16, min=1, max=1024)
        self.lr = FloatSpinBox(label="learning rate", value=5e-4, min=1e-6, max=1.0, step=1e-4,
                               tooltip="Adam learning rate (thesis: 5e-4)")
        self.lr.native.setDecimals(6)
        self.rel_error = FloatSpinBox(label="E (relative error)", value=0.1, min=1e-3, max=10.0, step=0.01,
                                      tooltip="APR relative error threshold used to convert training images")
        self.out_dir = FileEdit(label="run folder", mode="d",
                                tooltip="new or empty folder for checkpoints and log (default: a new folder "
                                        "under ~/aprnet-runs)")
        self.start_button, self.pause_button = PushButton(text="Start"), PushButton(text="Pause")
        self.pause_button.enabled = False
        self.progress, self.status, self.stop_button = task_widgets("training")
        self.stop_button.text = "Stop"
        self.task = BackgroundTask("Training", self.progress, self.status, self.stop_button, quit_on_cancel=False)
        self.plot = LinePlot(title="training loss and accuracy", xlabel="step")
        self.result = text("")
        self.classify_button = PushButton(text="Open checkpoint in Classify")
        self.classify_button.enabled = False
        self.extend([form(self.dataset, self.folder, self.network, self.steps, self.epochs, self.size, self.batch,
                          self.lr, self.rel_error, self.out_dir),
                     row(self.start_button, self.pause_button, self.stop_button), self.progress, self.status,
                     self.result, self.classify_button])
        self.native.layout().insertWidget(self.native.layout().count() - 2, self.plot)
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "accuracy": []}
        self.checkpoint: Path | None = None
        self.run_dir: Path | None = None
        self.dataset.changed.connect(self._dataset_changed)
        self.start_button.changed.connect(lambda *_: self.start())
        self.pause_button.changed.connect(lambda *_: self.toggle_pause())
        self.classify_button.changed.connect(lambda *_: self.open_in_classify())
        self._guard = _CloseGuard(self)
        qt_window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        if qt_window is not None:
            qt_window.installEventFilter(self._guard)
        self.native.destroyed.connect(self._stop_silently)
        register_widget(napari_viewer, "Train", self)

    # ------------------------------------------------------------ config
    def _dataset_changed(self, *_: Any) -> None:
        folder = self.dataset.value == "folder"
        self.folder.visible, self.epochs.visible, self.steps.visible = folder, folder, not folder

    def offer_folder(self, folder: str | Path) -> None:
        """Select ``folder`` as the dataset (used by Annotate's export)."""
        self.dataset.value = "folder"
        self.folder.value = Path(folder)

    def config(self):
        """The :class:`TrainConfig` described by the widget (validated)."""
        from napari_aprnet.training import TrainConfig

        if self.dataset.value == "folder":
            folder = Path(self.folder.value)
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
            out = self._run_dir()
        except (ValueError, TypeError) as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        self.run_dir, self.checkpoint = out, None
        self.history = {"step": [], "loss": [], "accuracy": []}
        self.plot.clear()
        self.result.value = f"run folder: {out}"
        self.classify_button.enabled = False
        self.start_button.enabled = False
        self.pause_button.enabled, self.pause_button.text = True, "Pause"
        return self.task.start(train_job, config, out, on_yield=self._event, on_finish=self._finished)

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
        self.task.cancel()
        if wait:
            deadline = time.monotonic() + timeout
            while self.task.worker is not None and time.monotonic() < deadline:
                QApplication.processEvents()
                time.sleep(0.01)

    def _stop_silently(self, *_: Any) -> None:
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
            self.history["step"].append(ev.step)
            self.history["loss"].append(ev.loss)
            self.history["accuracy"].append(ev.accuracy if ev.accuracy is not None else float("nan"))
            self.plot.set_series("loss", self.history["step"], self.history["loss"], "#ff8a65", "left")
            self.plot.set_series("accuracy", self.history["step"], self.history["accuracy"], "#81c784", "right")
            self.progress.max = max(int(ev.total_steps), 1)
            self.progress.value = min(int(ev.step), int(ev.total_steps))
            self.status.value = (f"step {ev.step}/{ev.total_steps}  loss {ev.loss:.3f}  "
                                 f"accuracy {ev.accuracy:.2f}  {ev.elapsed:.0f} s")
        elif ev.phase in ("val", "test", "test_modified"):
            self.result.value = f"{ev.phase}: loss {ev.loss:.3f}, accuracy {ev.accuracy:.3f}"
        elif ev.phase in ("done", "stopped"):
            self.checkpoint = Path(ev.checkpoint) if ev.checkpoint else None
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in ev.metrics.items()
                                if isinstance(v, (int, float)))
            self.result.value = (f"{'finished' if ev.phase == 'done' else 'stopped'} at step {ev.step}; "
                                 f"checkpoint: {self.checkpoint}" + (f"\n{metrics}" if metrics else ""))

    def _finished(self) -> None:
        self.start_button.enabled = True
        self.pause_button.enabled, self.pause_button.text = False, "Pause"
        if self.checkpoint is not None and self.checkpoint.exists():
            self.classify_button.enabled = True
            classify = find_widget(self.viewer, "Classify")
            if classify is not None:
                classify.offer_checkpoint(self.checkpoint)
            self.status.value = f"checkpoint saved: {self.checkpoint}"

    def open_in_classify(self) -> None:
        """Open the Classify widget with the last checkpoint loaded."""
        if self.checkpoint is None:
            notify("no checkpoint yet: train first")
            return
        open_widget(self.viewer, "Classify").offer_checkpoint(self.checkpoint, load=True)
