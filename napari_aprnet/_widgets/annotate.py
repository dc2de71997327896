"""Dock widget "Annotate": label a folder of images one at a time, export a folder dataset."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, FileEdit, LineEdit, PushButton

from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    bundled_model_file,
    find_widget,
    form,
    load_checkpoint_in_background,
    notify,
    register_widget,
    row,
    task_widgets,
    text,
    unwrap_viewer,
)

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotateWidget"]

IMAGE_LAYER = "annotation image"


class AnnotateWidget(Container):
    """Assign one class per image of a folder; labels are saved at once in ``aprnet_labels.csv``.

    Number keys 1-9 (canvas focused; bound on the viewer and on the annotation
    image layer, so they win over that layer's mode keys) or the class buttons
    assign a class and move to the next unlabelled image. With a classifier
    checkpoint loaded, its prediction is shown beside the label.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.folder = FileEdit(label="image folder", mode="d",
                               tooltip="folder of images (png, tif, jpg, npy); labels are stored there "
                                       "in aprnet_labels.csv")
        self.classes = LineEdit(label="classes", value="",
                                tooltip="comma-separated class names; classes already in the labels file "
                                        "are added")
        self.open_button = PushButton(text="Open folder")
        self.info = text("no folder open")
        self.prediction = text("")
        self.class_buttons = Container(layout="horizontal", labels=False)
        self.prev_button, self.next_button = PushButton(text="< Previous"), PushButton(text="Next >")
        self.next_free_button = PushButton(text="Next unlabelled")
        self.clear_button = PushButton(text="Clear label")
        self.checkpoint = FileEdit(label="model (optional)", mode="r", filter="*.pt",
                                   tooltip="a classifier checkpoint; its prediction is shown for each image "
                                           "(preselected: the bundled shapes classifier)")
        bundled = bundled_model_file("shapes")
        if bundled is not None:
            self.checkpoint.value = bundled
        self.load_model_button = PushButton(text="Load model")
        self.export_dir = FileEdit(label="export to", mode="d",
                                   tooltip="new folder that receives <class>/<image> copies (a folder dataset "
                                           "for Train)")
        self.export_button = PushButton(text="Export dataset")
        self.progress, self.status, self.cancel_button = task_widgets("task")
        self.task = BackgroundTask("Annotation", self.progress, self.status, self.cancel_button)
        self.extend([form(self.folder, self.classes), self.open_button, self.info, self.class_buttons,
                     row(self.prev_button, self.next_button, self.next_free_button, self.clear_button),
                     self.prediction, form(self.checkpoint), self.load_model_button, form(self.export_dir),
                     self.export_button, self.progress, self.status])
        self.annotations = None
        self.index = 0
        self.classifier = None
        self._predictions: dict[str, str] = {}
        self.open_button.changed.connect(lambda *_: self.open())
        self.prev_button.changed.connect(lambda *_: self.go(self.index - 1))
        self.next_button.changed.connect(lambda *_: self.go(self.index + 1))
        self.next_free_button.changed.connect(lambda *_: self.go_next_unlabelled())
        self.clear_button.changed.connect(lambda *_: self.assign(None))
        self.load_model_button.changed.connect(lambda *_: self.load_model())
        self.export_button.changed.connect(lambda *_: self.export())
        self._bind_keys()
        register_widget(napari_viewer, "Annotate", self)

    # ---------------------------------------------------------------- keys
    def _digit_handlers(self) -> dict[str, object]:
        """Key name -> handler assigning that class number (holds the widget weakly)."""
        import weakref

        ref = weakref.ref(self)

        def make(k):
            def handler(_target):
                widget = ref()
                if widget is not None:
                    widget.assign_number(k)
            return handler

        return {str(k): make(k) for k in range(1, 10)}

    def _bind_keys(self) -> None:
        """Bind 1-9 on the viewer (they reach it while no layer with its own digit keys is active)."""
        viewer = self.viewer
        for key, handler in self._digit_handlers().items():
            viewer.bind_key(key, handler, overwrite=True)

        def unbind(*_):
            for k in range(1, 10):
                try:
                    viewer.bind_key(str(k), None)
                except (KeyError, ValueError, TypeError):
                    pass

        self.native.destroyed.connect(unbind)

    def _bind_layer_keys(self, layer) -> None:
        """Bind 1-9 on the annotation image layer too: a layer's own bindings win over its mode keys,
        so a selected image layer labels instead of switching to transform mode."""
        for key, handler in self._digit_handlers().items():
            layer.bind_key(key, handler, overwrite=True)

    def assign_number(self, k: int) -> None:
        """Assign class number ``k`` (1-based), as the number keys do."""
        if self.annotations is None:
            return
        names = self.annotations.class_names
        if not 1 <= k <= len(names):
            notify(f"there is no class {k}; classes are " +
                   ", ".join(f"{i + 1}: {n}" for i, n in enumerate(names)), "warning")
            return
        self.assign(names[k - 1])

    # ---------------------------------------------------------------- open
    def open(self, folder: str | Path | None = None) -> bool:
        """Open ``folder`` (default: the folder field); return True on success."""
        from napari_aprnet.annotations import AnnotationSet

        folder = Path(self.folder.value if folder is None else folder)
        names = [c.strip() for c in self.classes.value.split(",") if c.strip()]
        try:
            annotations = AnnotationSet(folder, names)
        except (OSError, ValueError) as exc:
            notify(f"cannot open {folder}: {exc}")
            return False
        if not annotations.images:
            notify(f"no images (png, tif, jpg, npy) in {folder}")
            return False
        if not annotations.class_names:
            notify("type the class names first (comma-separated), then open the folder")
            return False
        self.annotations = annotations
        self.folder.value = folder
        self.classes.value = ", ".join(annotations.class_names)
        self._predictions.clear()
        self._rebuild_buttons()
        start = annotations.next_unlabelled(0)
        self.go(0 if start is None else start)
        return True

    def _rebuild_buttons(self) -> None:
        self.class_buttons.clear()
        for i, name in enumerate(self.annotations.class_names):
            b = PushButton(text=f"{i + 1}: {name}" if i < 9 else name, tooltip=f"label this image as {name!r}")
            b.changed.connect(lambda *_, n=name: self.assign(n))
            self.class_buttons.append(b)

    # ----------------------------------------------------------- navigate
    def go(self, index: int) -> None:
        """Show image ``index`` (wrapping around)."""
        if self.annotations is None:
            return
        n = len(self.annotations.images)
        self.index = index % n
        name = self.annotations.images[self.index]
        try:
            image = self.annotations.image(self.index)
        except (OSError, ValueError) as exc:
            notify(f"cannot read {name}: {exc}")
            image = None
        if image is not None:
            rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
            if IMAGE_LAYER in self.viewer.layers and self.viewer.layers[IMAGE_LAYER].rgb == rgb \
                    and self.viewer.layers[IMAGE_LAYER].data.ndim == image.ndim:
                layer = self.viewer.layers[IMAGE_LAYER]
                layer.data = image
                layer.reset_contrast_limits()
            else:
                if IMAGE_LAYER in self.viewer.layers:
                    self.viewer.layers.remove(IMAGE_LAYER)
                self._bind_layer_keys(self.viewer.add_image(image, name=IMAGE_LAYER, rgb=rgb))
            self.viewer.reset_view()
        self._update_info()
        self._predict()

    def go_next_unlabelled(self) -> None:
        """Move to the next image without a label (if any)."""
        if self.annotations is None:
            return
        i = self.annotations.next_unlabelled(self.index + 1)
        if i is None:
            notify("every image is labelled; export the dataset when ready", "info")
            return
        self.go(i)

    @property
    def current_name(self) -> str | None:
        """File name of the image on screen."""
        return None if self.annotations is None else self.annotations.images[self.index]

    def _update_info(self) -> None:
        a = self.annotations
        label = a.label_of(self.current_name)
        counts = ", ".join(f"{k}: {v}" for k, v in a.counts().items())
        self.info.value = (f"{self.index + 1} / {len(a.images)}: {self.current_name}\n"
                           f"label: {label or '(none)'}\n"
                           f"labelled {len(a.labels)} of {len(a.images)}  ({counts})")

    # ------------------------------------------------------------- assign
    def assign(self, label: str | None) -> None:
        """Label the current image (None clears), save, and go to the next unlabelled one."""
        if self.annotations is None:
            notify("open a folder of images first")
            return
        try:
            self.annotations.set_label(self.current_name, label)
        except (OSError, ValueError, KeyError) as exc:
            notify(f"could not save the label: {exc}")
            return
        if label is None:
            self._update_info()
            return
        nxt = self.annotations.next_unlabelled(self.index + 1)
        if nxt is None:
            self._update_info()
            notify("every image is labelled; export the dataset when ready", "info")
        else:
            self.go(nxt)

    # -------------------------------------------------------------- model
    def load_model(self, path: str | Path | None = None):
        """Load a classifier checkpoint in the background (then predictions are shown)."""
        def load(p):
            from napari_aprnet.training.predict import Classifier

            return Classifier.load(p)

        return load_checkpoint_in_background(self.task, self.checkpoint, path, load, self._model_loaded,
                                             self._predict)

    def _model_loaded(self, classifier) -> None:
        self.classifier = classifier
        self._predictions.clear()
        self.status.value = f"model loaded: classes {', '.join(classifier.class_names)}"

    def _predict(self) -> None:
        if self.classifier is None or self.annotations is None:
            self.prediction.value = ""
            return
        name = self.current_name
        if name in self._predictions:
            self.prediction.value = self._predictions[name]
            return
        if self.task.running:
            return
        image = self.viewer.layers[IMAGE_LAYER].data if IMAGE_LAYER in self.viewer.layers else None
        if image is None:
            return
        classifier = self.classifier

        def job(*, cancel):
            yield Progress(0, 1, f"predicting {name}...")
            proba = np.asarray(classifier.predict_proba([np.asarray(image)]))[0]
            best = int(np.argmax(proba))
            return name, f"model: {classifier.class_names[best]} ({100 * proba[best]:.0f}%)"

        def done(result):
            self._predictions[result[0]] = result[1]
            self.status.value = f"predicted {result[0]}"
            if result[0] == self.current_name:
                self.prediction.value = result[1]

        def finished():
            if self.current_name not in self._predictions and self.task.error is None:
                self._predict()  # the user moved on while predicting

        self.prediction.value = "model: ..."
        self.task.start(job, on_return=done, on_finish=finished)

    # ------------------------------------------------------------- export
    def export(self, out_dir: str | Path | None = None):
        """Export the labelled images as ``out_dir/<class>/<image>`` in the background."""
        if self.annotations is None:
            notify("open a folder of images first")
            return None
        out = Path(self.export_dir.value if out_dir is None else out_dir)
        if out.exists() and any(out.iterdir()):
            notify(f"export folder {out} is not empty; choose a new folder")
            return None
        if out.exists():
            out.rmdir()
        annotations = self.annotations

        def job(*, cancel):
            yield Progress(0, 1, f"exporting {len(annotations.labels)} images to {out}...")
            annotations.export(out)
            yield Progress(1, 1, f"exported to {out}")
            return out

        if self.task.running:
            notify("wait for the running task to finish", "warning")
            return None
        return self.task.start(job, on_return=self._exported)

    def _exported(self, out: Path) -> None:
        train = find_widget(self.viewer, "Train")
        if train is not None and hasattr(train, "offer_folder"):
            train.offer_folder(out)
        notify(f"dataset exported to {out}; train on it with the Train widget (dataset: folder)", "info")
