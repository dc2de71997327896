"""The Train widget's "segment from layers" form: an Image layer and the Labels layer drawn on it.

The human-in-the-loop loop: draw a few objects in a Labels layer, train,
segment with the result (the Segment widget receives the checkpoint),
correct the segmentation, and train again starting from the last
checkpoint ("continue from checkpoint", ticked after every run).
How unlabelled pixels count is explained in
:mod:`napari_aprnet.data.annotated` (and the tooltips below).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox

from napari_aprnet._widgets._common import (
    default_spatial,
    form,
    image_from_layer,
    input_image_choices,
    refresh_choices_on_layer_change,
)

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentForm", "SEGMENT_DEFAULTS", "ANNOTATION_RULE"]

#: Widget defaults of segmentation from layers: a small U-Net (on the nuclei drawn in one corner of a synthetic image
#: it reached a training IoU of 0.9 within 30 steps; scripts/make_screenshots.py --only train_segment).
SEGMENT_DEFAULTS = {"network": "APR_UNet", "crop": 64, "batch": 8, "steps": 150, "lr": 3e-3, "width": 8, "depth": 2,
                    "bn_batches": 8}
ANNOTATION_RULE = ("The annotated area is the box around everything drawn (at least one crop): inside it every "
                   "unlabelled pixel is trained as background, outside it nothing is used. So draw every object "
                   "in the area you work on. Then segment, correct the result and train again from the checkpoint.")
_FROM_CHECKPOINT = ("model", "width", "depth", "boundary", "rel_error", "apr_params", "level_channel")


def _labels_choices(viewer: napari.Viewer):
    def choices(*_: Any) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Labels)]

    return choices


class SegmentForm(Container):
    """The fields of segmentation training from layers, and the annotations and config they describe."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = viewer
        self.image = ComboBox(label="image layer", choices=input_image_choices(viewer),
                              tooltip="the image the objects are drawn on")
        self.labels = ComboBox(label="labels layer", choices=_labels_choices(viewer),
                               tooltip="the objects drawn on the image (or a corrected segmentation). "
                                       + ANNOTATION_RULE)
        self.dims = ComboBox(label="images are", choices=["2D", "3D"], value="2D",
                             tooltip="2D: each plane of a stack is an image (only planes with labels are used); "
                                     "3D: the layer is one volume (draw objects through all their planes)")
        self.crop = SpinBox(label="crop size", value=SEGMENT_DEFAULTS["crop"], min=16, max=1024, step=16,
                            tooltip="side of the training crops, taken inside the annotated area and flipped / "
                                    "rotated at random; an annotated area smaller than a crop is grown to it")
        self.boundary = CheckBox(text="separate touching objects (boundary class)", value=False,
                                 tooltip="learn background, interior and boundary, so touching objects are "
                                         "split; needs every object drawn with its own label")
        self.continue_from = CheckBox(text="continue from checkpoint", value=False,
                                      tooltip="start from the weights of this checkpoint (e.g. the last run, "
                                              "after correcting labels) instead of from scratch; the network "
                                              "settings are taken from it")
        self.start_checkpoint = FileEdit(label="start checkpoint", mode="r", filter="*.pt")
        self.extend([form(self.image, self.labels, self.dims, self.crop), self.boundary, self.continue_from,
                     form(self.start_checkpoint)])
        self.image.changed.connect(self._image_changed)
        refresh_choices_on_layer_change(viewer, self.image)
        refresh_choices_on_layer_change(viewer, self.labels)
        self._image_changed()

    def _image_changed(self, *_: Any) -> None:
        layer = self.image.value
        if layer is not None:
            self.dims.value = "3D" if layer.ndim - int(bool(layer.rgb)) >= 3 and default_spatial(layer) == 3 else "2D"

    @property
    def ndim(self) -> int:
        return 3 if self.dims.value == "3D" else 2

    def annotations(self):
        """The :class:`~napari_aprnet.data.AnnotatedImages` of the picked layers (ValueError: what to do)."""
        import numpy as np

        from napari_aprnet.data import AnnotatedImages

        image_layer, labels_layer = self.image.value, self.labels.value
        if labels_layer is None:
            raise ValueError("no Labels layer: add one (Layers > New Labels layer), draw a few objects on the "
                             "image and pick it as the labels layer")
        image, _ = image_from_layer(image_layer, self.ndim)
        return AnnotatedImages(np.asarray(image), np.asarray(labels_layer.data), self.ndim,
                               rgb=bool(image_layer.rgb))

    def start_settings(self) -> dict:
        """With "continue from checkpoint": the network settings of the start checkpoint (else {})."""
        if not self.continue_from.value:
            return {}
        from napari_aprnet.training import TrainConfig
        from napari_aprnet.training.checkpoint import load_checkpoint

        path = Path(self.start_checkpoint.value)
        if not path.is_file():
            raise ValueError(f"start checkpoint {str(path)!r} not found: pick the best.pt or checkpoint.pt of a "
                             "segmentation run, or untick 'continue from checkpoint'")
        stored = TrainConfig.from_dict(load_checkpoint(path)["train"]["config"])
        if stored.task != "segment":
            raise ValueError(f"{path} holds a network trained to {stored.task}, not to segment; pick a "
                             "segmentation checkpoint")
        return {"init_from": str(path), **{k: getattr(stored, k) for k in _FROM_CHECKPOINT}}

    def config_fields(self, network: str, steps: int) -> dict:
        """The :class:`TrainConfig` fields of this form (a run of ``steps`` steps of fresh crops)."""
        return {"task": "segment", "data": "annotations", "model": network, "boundary": bool(self.boundary.value),
                "image_shape": [int(self.crop.value)] * self.ndim, "eval_every": max(10, steps // 5),
                "bn_batches": SEGMENT_DEFAULTS["bn_batches"],
                "width": SEGMENT_DEFAULTS["width"], "depth": SEGMENT_DEFAULTS["depth"], **self.start_settings()}

    def offer_start(self, checkpoint: str | Path) -> None:
        """Continue the next run from ``checkpoint`` (after a run ended)."""
        self.start_checkpoint.value = Path(checkpoint)
        self.continue_from.value = True
