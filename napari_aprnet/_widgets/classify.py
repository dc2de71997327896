"""Dock widget "Classify": run a trained network on image layers, show probabilities and feature maps."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Select

from napari_aprnet._layer_data import METADATA_KEY, level_map_display
from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    bundled_model_file,
    form,
    input_image_choices,
    load_checkpoint_in_background,
    notify,
    refresh_choices_on_layer_change,
    register_widget,
    task_widgets,
    text,
    unwrap_viewer,
)
from napari_aprnet._widgets._plot import BarPlot
from napari_aprnet._widgets.convert import update_or_add

if TYPE_CHECKING:
    import napari

__all__ = ["ClassifyWidget", "FeatureResult", "feature_job", "images_for_classifier"]

#: Smallest image side classified: smaller images carry no shape to recognise once resized.
MIN_SIDE = 8


def images_for_classifier(layer, classifier) -> list[np.ndarray]:
    """2D images of an image layer for ``classifier`` (a stack gives one image per plane).

    Raises
    ------
    ValueError
        No layer, not an Image layer, or dimensions/channels the network cannot take.
    """
    from napari.layers import Image

    if layer is None:
        raise ValueError("no image layer selected: pick one or more image layers to classify")
    if not isinstance(layer, Image):
        raise ValueError(f"layer {layer.name!r} is a {type(layer).__name__} layer; classify needs Image layers")
    if layer.multiscale:
        raise ValueError(f"layer {layer.name!r} is multiscale; classify a single-scale image")
    data = np.asarray(layer.data)
    rgb, spatial = bool(layer.rgb), layer.ndim
    want = "RGB" if classifier.channels == 3 else "grey"
    have = "RGB" if rgb else "grey"
    if have != want:
        raise ValueError(f"layer {layer.name!r} is a {have} image but the network was trained on {want} images "
                         f"({classifier.channels} channel(s)); load a checkpoint trained on {have} images")
    plane = tuple(data.shape[-3:-1] if rgb else data.shape[-2:])
    if min(plane) < MIN_SIDE:
        raise ValueError(f"layer {layer.name!r} is {'x'.join(map(str, plane))} "
                         f"pixels: too small to classify (each side needs >= {MIN_SIDE} pixels; the network "
                         f"takes {classifier.input_size}x{classifier.input_size} images)")
    if spatial == 2:
        return [data]
    if spatial == 3:
        return list(data)  # a stack of 2D images
    raise ValueError(f"layer {layer.name!r} has {spatial} dimensions (shape {data.shape}); the network "
                     f"classifies 2D images or stacks of 2D images")


@dataclass
class FeatureResult:
    """Feature maps of one image at one network layer, ready to display."""

    features: np.ndarray  # (C, h, w)
    level_map: np.ndarray | None  # (H', W') levels of the input APR, or None for pixel nets
    layer: str
    input_size: int
    level_max: int | None = None  # pixel level of the input APR (level colours follow cell size)
    montage: tuple | None = None  # feature_montage(features), computed in the worker


def feature_job(classifier, image: np.ndarray, layer: str, *, cancel):
    """Generator run in a worker: feature maps reconstructed to pixels, and the input APR's level map."""
    from napari_aprnet._layer_data import feature_montage
    from napari_aprnet.apr import APR

    yield Progress(0, 2, f"computing {layer} feature maps...")
    structure, features = classifier.feature_maps(image, layer)
    if structure is None:  # pixel network: (C, H, W) already
        features = np.asarray(features)
        return FeatureResult(features, None, layer, classifier.input_size, montage=feature_montage(features))
    yield Progress(1, 2, "reconstructing feature maps to pixels...")
    fmap = APR(structure, features).reconstruct()
    fmap = np.moveaxis(fmap.reshape(fmap.shape[:structure.ndim] + (-1,)), -1, 0)
    spec = classifier.spec
    input_apr = spec.to_apr(spec.prepare(image, convert_channels=False))
    return FeatureResult(fmap, input_apr.reconstruct(mode="level"), layer, classifier.input_size,
                         int(input_apr.level_max), feature_montage(fmap))


class ClassifyWidget(Container):
    """Classify image layers with a trained checkpoint.

    The bundled shapes classifier (``bundled:shapes``) is preselected and
    loaded on the first Classify, so the shapes sample can be classified
    without training.

    The probabilities of the image under the cursor's slice are drawn as
    bars (a stack is classified plane by plane). "Show feature maps" adds
    ``"<image> <layer> features"`` (channels along the first axis) and, for
    APR networks, ``"<image> network input levels"`` (the level map of the
    APR the network saw), both scaled to overlay the image.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.classifier = None
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt",
                                   tooltip="best.pt or checkpoint.pt written by Train or `aprnet train`; "
                                           "preselected: the bundled shapes classifier")
        bundled = bundled_model_file("shapes")
        if bundled is not None:
            self.checkpoint.value = bundled
        self.load_button = PushButton(text="Load checkpoint")
        self.info = text("no network loaded" if bundled is None else
                         "bundled shapes classifier (APR_B, six shapes): loaded on first use")
        self.layers = Select(label="image layers", choices=input_image_choices(self.viewer), allow_multiple=True,
                             tooltip="2D images or stacks of 2D images (ctrl-click for several)")
        self.layers.native.setMaximumHeight(90)
        self.classify_button = PushButton(text="Classify")
        self.net_layer = ComboBox(label="network layer", choices=self._net_layers,
                                  tooltip="layer whose output is shown as feature maps")
        self.features_button = PushButton(text="Show feature maps")
        self.progress, self.status, self.cancel_button = task_widgets("task")
        self.task = BackgroundTask("Classification", self.progress, self.status, self.cancel_button)
        self.table = text("")
        self.bars = BarPlot(title="class probabilities")
        self.extend([form(self.checkpoint), self.load_button, self.info, form(self.layers), self.classify_button,
                     form(self.net_layer), self.features_button, self.cancel_button, self.progress, self.status,
                     self.table])
        self.native.layout().addWidget(self.bars)
        self.probabilities: dict[str, np.ndarray] = {}
        self._shown: str | None = None
        self._classify_after_load: tuple | None = None  # (layers,) to classify once the network is loaded
        self.load_button.changed.connect(lambda *_: self.load())
        self.classify_button.changed.connect(lambda *_: self.classify())
        self.features_button.changed.connect(lambda *_: self.show_features())
        self.viewer.dims.events.current_step.connect(self._show_current)
        refresh_choices_on_layer_change(self.viewer, self.layers)
        register_widget(napari_viewer, "Classify", self)


    def _net_layers(self, *_: Any) -> list[str]:
        return [] if self.classifier is None else list(self.classifier.layer_names())


    # -------------------------------------------------------------- load
    def offer_checkpoint(self, path: str | Path, load: bool = False) -> None:
        """Put ``path`` in the checkpoint field (and load it)."""
        self.checkpoint.value = Path(path)
        if load:
            self.load()

    def load(self, path: str | Path | None = None):
        """Load a checkpoint in the background; return the worker or None."""
        def load(p):
            from napari_aprnet.training.predict import Classifier

            return Classifier.load(p)

        return load_checkpoint_in_background(self.task, self.checkpoint, path, load, self._loaded,
                                             self._classify_pending)

    def _classify_pending(self) -> None:
        """After a load started by Classify: classify what was asked (the load task has ended)."""
        pending, self._classify_after_load = self._classify_after_load, None
        if pending is not None and self.classifier is not None:
            self.classify(*pending)

    def _loaded(self, classifier) -> None:
        self.classifier = classifier
        self.probabilities.clear()
        self.net_layer.reset_choices()
        spec = classifier.spec
        e = f", E = {spec.rel_error:g}" if classifier.mode == "apr" else ""
        self.info.value = (f"{classifier.model.config.get('name', type(classifier.model).__name__)}: "
                           f"{classifier.mode} input, {classifier.input_size}x{classifier.input_size} "
                           f"{'RGB' if classifier.channels == 3 else 'grey'}{e}\n"
                           f"classes: {', '.join(classifier.class_names)}")
        self.status.value = "network loaded"

    # ---------------------------------------------------------- classify
    def _selected(self) -> list:
        chosen = list(self.layers.value or [])
        if not chosen:
            active = self.viewer.layers.selection.active
            chosen = [active] if active is not None else [None]
        return chosen

    def classify(self, layers: list | None = None):
        """Classify ``layers`` (default: the selection) in the background; return the worker or None.

        Without a loaded network, the checkpoint in the field is loaded first
        (the returned worker is then the loading one).
        """
        if self.classifier is None:
            if not Path(self.checkpoint.value).is_file():
                notify("load a checkpoint first (a .pt file written by Train, or the bundled shapes classifier)")
                return None
            worker = self.load()
            if worker is not None:
                self._classify_after_load = (layers,)
                self.status.value = "loading the network, then classifying..."
            return worker
        layers = self._selected() if layers is None else list(layers)
        try:
            batches = {layer.name if layer is not None else None: images_for_classifier(layer, self.classifier)
                       for layer in layers}
        except ValueError as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        if self.task.running:
            notify("wait for the running task to finish", "warning")
            return None
        classifier = self.classifier
        size = classifier.input_size
        other = sorted({"x".join(map(str, im.shape[:2])) for images in batches.values() for im in images
                        if tuple(im.shape[:2]) != (size, size)})
        if other:
            notify(f"images of {', '.join(other)} pixels are resized to the network's {size}x{size} input "
                   "(bilinear, as in training)", "info")

        def job(*, cancel):
            out = {}
            for i, (name, images) in enumerate(batches.items()):
                yield Progress(i, len(batches), f"classifying {name} ({len(images)} image(s))...")
                out[name] = classifier.predict_proba(images)
                if cancel.is_set():
                    return None
            yield Progress(len(batches), len(batches), "classified")
            return out

        return self.task.start(job, on_return=self._classified)

    def _classified(self, result: dict[str, np.ndarray] | None) -> None:
        if result is None:
            return
        self.probabilities.update(result)
        names = self.classifier.class_names
        lines = []
        for name, proba in result.items():
            best = proba.argmax(1)
            if len(proba) == 1:
                lines.append(f"{name}: {names[best[0]]} ({100 * proba[0, best[0]]:.1f}%)")
            else:
                counts = np.bincount(best, minlength=len(names))
                lines.append(f"{name}: {len(proba)} images: " +
                             ", ".join(f"{names[k]} {c}" for k, c in enumerate(counts) if c))
        self.table.value = "\n".join(lines)
        self._shown = next(iter(result))
        self._show_current()

    def current_probabilities(self) -> np.ndarray | None:
        """Probabilities of the image on screen (the plane under the slider for stacks)."""
        name = self._shown
        if name not in self.probabilities:
            return None
        proba = self.probabilities[name]
        index = 0
        if len(proba) > 1 and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            axis = self.viewer.dims.ndim - layer.ndim
            index = int(np.clip(self.viewer.dims.current_step[axis], 0, len(proba) - 1))
        return proba[index]

    def _show_current(self, *_: Any) -> None:
        proba = self.current_probabilities()
        if proba is not None:
            self.bars.title = f"class probabilities: {self._shown}"
            self.bars.set_bars(self.classifier.class_names, proba)

    # ------------------------------------------------------ feature maps
    def show_features(self, layer=None, net_layer: str | None = None):
        """Add the feature maps of ``net_layer`` for the image on screen; return the worker or None."""
        if self.classifier is None:
            notify("load a checkpoint first (a .pt file written by Train)")
            return None
        layer = self._selected()[0] if layer is None else layer
        net_layer = self.net_layer.value if net_layer is None else net_layer
        try:
            images = images_for_classifier(layer, self.classifier)
        except ValueError as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        index = 0
        if len(images) > 1:
            axis = self.viewer.dims.ndim - layer.ndim
            index = int(np.clip(self.viewer.dims.current_step[axis], 0, len(images) - 1))
        if self.task.running:
            notify("wait for the running task to finish", "warning")
            return None
        self._feature_source = (layer, images[index].shape[:2], index)
        return self.task.start(feature_job, self.classifier, images[index], net_layer, on_return=self._add_features)

    def _add_features(self, result: FeatureResult) -> None:
        """Feature maps as a labelled montage right of the image, the input's level map below it."""
        from napari_aprnet._layer_data import feature_montage

        layer, (h, w), index = self._feature_source
        self.feature_result = result
        # a stack gets its plane axis back (length 1, at the plane the maps come from), with its own name
        stacked = layer.ndim == 3
        lead_scale = (float(layer.scale[-3]),) if stacked else ()
        lead_shift = (float(layer.translate[-3] + index * layer.scale[-3]),) if stacked else ()
        lead_shape = (1,) if stacked else ()
        lead_label = (str(layer.axis_labels[-3]),) if stacked else ()
        px = np.asarray(layer.scale[-2:], dtype=float)
        origin = np.asarray(layer.translate[-2:], dtype=float)
        c, fh, fw = result.features.shape
        montage, corners = result.montage if result.montage is not None else feature_montage(result.features)
        scale = px * np.array([h / fh, w / fw])  # the maps' own resolution, in the image's units
        shift = origin + np.array([0.0, w * px[1] * 1.05])  # right of the image
        name = f"{layer.name} {result.layer} features"
        meta = {METADATA_KEY: {"role": "features", "network_layer": result.layer, "source_layer": layer.name,
                               "channels": int(c), "tile_shape": (int(fh), int(fw))}}
        update_or_add(self.viewer, montage.reshape(lead_shape + montage.shape),
                      {"name": name, "colormap": "viridis", "contrast_limits": (0.0, 1.0),
                       "scale": (*lead_scale, *scale), "translate": (*lead_shift, *shift),
                       "axis_labels": lead_label + ("y", "x"), "metadata": meta}, "image")
        labels_name = f"{name} channels"
        if labels_name in self.viewer.layers:
            self.viewer.layers.remove(labels_name)
        pts = np.column_stack([np.full(c, 0.0)] * len(lead_shape) + [corners[:, 0], corners[:, 1]])
        self.viewer.add_points(pts, name=labels_name, size=0.01, face_color="transparent", border_width=0,
                               features={"label": [f"ch {k}" for k in range(c)]},
                               text={"string": "{label}", "color": "white", "size": 7, "anchor": "upper_left"},
                               scale=(*lead_scale, *scale), translate=(*lead_shift, *shift),
                               metadata={METADATA_KEY: {"role": "feature_labels", "source_layer": layer.name}})
        if result.level_map is not None:
            levels = result.level_map.astype(np.uint8)
            lscale = px * np.array([h / levels.shape[0], w / levels.shape[1]])
            lshift = origin + np.array([h * px[0] * 1.05, 0.0])  # below the image, not over it
            update_or_add(self.viewer, levels.reshape(lead_shape + levels.shape),
                          {"name": f"{layer.name} network input levels", "opacity": 1.0,
                           **level_map_display(int(levels.min()), result.level_max or int(levels.max())),
                           "scale": (*lead_scale, *lscale), "translate": (*lead_shift, *lshift),
                           "axis_labels": lead_label + ("y", "x"),
                           "metadata": {METADATA_KEY: {"role": "input_levels", "source_layer": layer.name}}},
                          "image")
        self.status.value = (f"{c} feature maps of {result.layer} ({fh}x{fw} each, own contrast), right of the "
                             "image; the network's input level map below it")
