"""Dock widget "Segment": run a trained segmentation network on an image layer, add Labels and probabilities."""
from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, SpinBox

from napari_aprnet._layer_data import METADATA_KEY
from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    bundled_model_file,
    form,
    image_from_layer,
    input_image_choices,
    load_checkpoint_in_background,
    notify,
    preselect_layer,
    refresh_choices_on_layer_change,
    register_widget,
    task_widgets,
    text,
    unwrap_viewer,
)
from napari_aprnet._widgets.convert import update_or_add

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget", "segment_job"]


def _reporting(call: Callable[[Callable[[int, int], None]], Any], cancel: threading.Event, what: str):
    """Run ``call(progress)`` in a thread and yield its ``progress(done, total)`` reports as Progress.

    Returns (``yield from``) the call's result; re-raises its exception.
    """
    reports: queue.Queue = queue.Queue()
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = call(lambda done, total: reports.put((done, total)))
        except BaseException as exc:  # handed to the job's thread below
            box["error"] = exc
        finally:
            reports.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while True:
        item = reports.get()
        if item is None:
            break
        yield Progress(item[0], item[1], f"{what}: tile {item[0]}/{item[1]}")
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def segment_job(segmenter, data: np.ndarray, tile: int | None, *, cancel: threading.Event):
    """Generator run in a worker: segment ``data`` (one image, or a stack of images along leading axes).

    Returns ``(labels int32, foreground float32)`` of ``data``'s spatial shape
    (stacks: instances numbered per image).
    """
    data = np.asarray(data)
    nd = segmenter.ndim
    lead = data.shape[: data.ndim - nd - (1 if segmenter.spec.channels == 3 else 0)]
    images = data.reshape((-1,) + data.shape[len(lead):])
    labels, fg = [], []
    for i, image in enumerate(images):
        what = f"segmenting image {i + 1}/{len(images)}" if len(images) > 1 else "segmenting"
        yield Progress(0, 1, what + "...")
        result = yield from _reporting(
            lambda progress, im=image: segmenter.segment(im, tile=tile, progress=progress, stop=cancel),
            cancel, what)
        labels.append(result.labels.astype(np.int32))
        fg.append(result.foreground.astype(np.float32))
    shape = lead + labels[0].shape
    return np.stack(labels).reshape(shape), np.stack(fg).reshape(shape)


def _digest(labels: np.ndarray) -> str:
    """Content digest of a label image (to tell whether the user has edited a layer we wrote)."""
    return hashlib.blake2b(np.ascontiguousarray(labels).view(np.uint8), digest_size=16).hexdigest()


def _unedited_name(viewer: napari.Viewer, name: str) -> str:
    """``name`` if no layer has it or ours is unedited; else the first free ``"name [k]"``.

    A Labels layer the user has corrected (for the next training round) is
    never overwritten by segmenting again.
    """
    k = 1
    candidate = name
    while candidate in viewer.layers:
        layer = viewer.layers[candidate]
        written = layer.metadata.get(METADATA_KEY, {}).get("written")
        if written is not None and layer._type_string == "labels" and _digest(np.asarray(layer.data)) == written:
            return candidate
        k += 1
        candidate = f"{name} [{k}]"
    return candidate


class SegmentWidget(Container):
    """Segment an image layer with a segmentation checkpoint (``aprnet train --task segment`` or Train).

    Adds ``"<image> instances"`` (a Labels layer: connected components of the
    predicted foreground, touching objects split where a three-class network
    predicts boundaries) and ``"<image> foreground probability"``. Images
    along leading axes (time, channels, planes) are segmented one by one; "tile" segments
    big images region by region with a halo of context, so memory follows the
    tile, not the image. A 2D network segments a 3D layer plane by plane.
    The bundled 2D nuclei model (``bundled:nuclei2d``) is preselected.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.segmenter = None
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt",
                                   tooltip="best.pt or checkpoint.pt of a segmentation run "
                                           "(aprnet train --task segment); preselected: the bundled 2D "
                                           "nuclei model")
        bundled = bundled_model_file("nuclei2d")
        if bundled is not None:
            self.checkpoint.value = bundled
        self.load_button = PushButton(text="Load checkpoint")
        self.info = text("no network loaded" if bundled is None else
                         "bundled 2D nuclei model (APR_UNet; background, interior, boundary): loaded on first use")
        self.layer = ComboBox(label="image layer", choices=input_image_choices(self.viewer))
        self.tile = SpinBox(label="tile (px, 0: whole image)", value=0, min=0, max=65536, step=64,
                            tooltip="segment big images region by region (each tile with 32 px of context)")
        self.segment_button = PushButton(text="Segment")
        self.progress, self.status, self.cancel_button = task_widgets("segmentation")
        self.task = BackgroundTask("Segmentation", self.progress, self.status, self.cancel_button)
        self.extend([form(self.checkpoint), self.load_button, self.info, form(self.layer, self.tile),
                     self.segment_button, self.cancel_button, self.progress, self.status])
        self._segment_after_load = False
        self.load_button.changed.connect(lambda *_: self.load())
        self.segment_button.changed.connect(lambda *_: self.segment())
        refresh_choices_on_layer_change(self.viewer, self.layer)
        register_widget(napari_viewer, "Segment", self)

    # -------------------------------------------------------------- load
    def offer_checkpoint(self, path: str | Path, load: bool = False, layer=None) -> None:
        """Put ``path`` in the checkpoint field (used by Train); the next Segment uses it. Pick ``layer``."""
        self.checkpoint.value = Path(path)
        self.segmenter = None
        self.info.value = f"checkpoint from Train: {Path(path).name} (loaded when you segment)"
        if layer is not None:
            preselect_layer(self.viewer, self.layer, layer)
        if load:
            self.load()

    def load(self, path: str | Path | None = None):
        """Load a segmentation checkpoint in the background; return the worker or None."""
        def load(p):
            from napari_aprnet.training.segment import Segmenter

            return Segmenter.load(p)

        return load_checkpoint_in_background(self.task, self.checkpoint, path, load, self._loaded,
                                             self._segment_pending, kind="segmentation training")

    def _loaded(self, segmenter) -> None:
        self.segmenter = segmenter
        spec = segmenter.spec
        e = f", E = {spec.rel_error:g}" if segmenter.mode == "apr" else ""
        self.info.value = (f"{type(segmenter.model).__name__}: {segmenter.ndim}D {segmenter.mode} input{e}\n"
                           f"classes: {', '.join(segmenter.class_names)}")
        self.status.value = "network loaded"

    def _segment_pending(self) -> None:
        pending, self._segment_after_load = self._segment_after_load, False
        if pending and self.segmenter is not None:
            self.segment()

    # ----------------------------------------------------------- segment
    def _images(self, layer) -> np.ndarray:
        """The layer's data as images for the loaded network (raises ValueError with what to do).

        A 2D network takes every plane of a 3D or larger layer in turn; a 3D network every volume.
        """
        nd = self.segmenter.ndim
        if layer.ndim - (1 if getattr(layer, "rgb", False) else 0) < nd:
            raise ValueError(f"layer {layer.name!r} is {layer.ndim}D but the network segments {nd}D images; "
                             "load a 2D network")
        return image_from_layer(layer, nd)[0]

    def segment(self, layer=None):
        """Segment ``layer`` (default: the picked layer) in the background; return the worker or None.

        Without a loaded network, the checkpoint in the field is loaded first.
        """
        if self.segmenter is None:
            if not Path(self.checkpoint.value).is_file():
                notify("load a segmentation checkpoint first (a .pt file written by `aprnet train --task segment`)")
                return None
            self._segment_after_load = True
            return self.load()
        layer = self.layer.value if layer is None else layer
        try:
            if layer is None:
                raise ValueError("no image layer selected: pick the image to segment")
            data = self._images(layer)
        except ValueError as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        if self.task.running:
            notify("wait for the running task to finish", "warning")
            return None
        self._source = layer
        tile = int(self.tile.value) or None
        return self.task.start(segment_job, self.segmenter, data, tile, on_return=self._add_layers)

    def _add_layers(self, result) -> None:
        labels, foreground = result
        layer = self._source
        nd = labels.ndim
        common = {"scale": tuple(layer.scale)[-nd:], "translate": tuple(layer.translate)[-nd:],
                  "axis_labels": tuple(layer.axis_labels)[-nd:]}
        meta = {METADATA_KEY: {"role": "segmentation", "source_layer": layer.name,
                               "checkpoint": str(self.checkpoint.value)}}
        update_or_add(self.viewer, foreground,
                      {"name": f"{layer.name} foreground probability", "colormap": "magma",
                       "contrast_limits": (0.0, 1.0), "blending": "additive", "visible": False, "metadata": meta,
                       **common}, "image")
        name = _unedited_name(self.viewer, f"{layer.name} instances")
        labels_meta = {METADATA_KEY: {**meta[METADATA_KEY], "written": _digest(labels)}}
        update_or_add(self.viewer, labels, {"name": name, "opacity": 0.5, "metadata": labels_meta, **common},
                      "labels")
        n = int(labels.max()) if labels.size else 0
        self.status.value = f"{n} objects (largest label) in {name}; probability layer added (hidden)"
