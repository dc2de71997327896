"""Dock widget "Convert to APR": image layer -> reconstruction + level map layers."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from qtpy.QtCore import QTimer

from napari_aprnet._layer_data import (
    METADATA_KEY,
    apr_metadata,
    beside_translate,
    lazy_layer_data,
    level_color,
    level_legend,
    particle_cells,
)
from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    default_spatial,
    form,
    image_from_layer,
    input_image_choices,
    notify,
    refresh_choices_on_layer_change,
    register_widget,
    row,
    task_widgets,
    text,
    unwrap_viewer,
    warm_up_layers,
)
from napari_aprnet._widgets._params import ParamsForm

if TYPE_CHECKING:
    import napari

__all__ = ["ConvertResult", "ConvertWidget", "convert_job", "layer_steps", "update_or_add"]

#: Images up to this many pixels are re-converted automatically when E changes.
AUTO_PIXELS = 512 * 512
#: Spatial axes choices: how many trailing axes form one image.
SPATIAL = {"2D planes (last 2 axes)": 2, "3D volumes (last 3 axes)": 3}
#: Where the level map goes: beside the reconstruction (default) or over it.
LEVEL_DISPLAYS = ("beside the image", "over the image")
#: Particle cells are drawn as points only up to this many particles.
MAX_CELL_POINTS = 20_000


@dataclass
class ConvertResult:
    """What a conversion produced (computed in the worker thread).

    For a stack (images along leading axes converted one by one) ``aprs``
    holds one APR per image (``apr`` is the first) and ``lead_shape`` the
    shape of those axes. ``layers`` are the layer data tuples to add: lazy
    reconstructions and level maps (:func:`napari_aprnet._layer_data.lazy_layer_data`),
    so no full reconstruction is held and the main thread only adds them.
    """

    apr: Any
    layers: list
    mean_error: float
    max_error: float
    psnr: float
    mode: str
    legend: str = ""
    aprs: list = field(default_factory=list)
    lead_shape: tuple = ()

    @property
    def reconstruction(self):
        """The reconstruction layer's data (lazy; ``np.asarray`` reads it)."""
        return self.layers[0][0]

    @property
    def level_map(self):
        """The level map layer's data (lazy)."""
        return self.layers[1][0]


def convert_job(image: np.ndarray, params, channel_axis: int | None, mode: str, spatial: int | None = None, *,
                cancel, layer_info: dict | None = None):
    """Generator run in a worker: convert (each image of a stack alone), measure the error, make the layer data.

    ``layer_info`` holds ``name``, ``extra`` metadata and the layer keywords
    (``scale``, ``translate``, ``axis_labels``...) of the result layers.
    """
    from napari_aprnet.apr import APR
    from napari_aprnet.blockwise import default_budget, needs_blocks
    from napari_aprnet.metrics import ErrorTally, apr_error_stats

    budget = default_budget()
    blocks = (budget is not None and channel_axis is None and len(image.shape) == 3 and spatial in (None, 3)
              and needs_blocks(image.shape, budget))  # would not fit: block by block, never read whole
    yield Progress(0, 3, f"converting the {'x'.join(map(str, image.shape))} image block by block within "
                         f"{budget / 2**30:.1f} GiB (half the free memory)..." if blocks else
                   f"reading the {'x'.join(map(str, image.shape))} image...")
    if not blocks:
        image = np.asarray(image)
    warm_up_layers()  # napari's first-layer imports here, not on the main thread
    n_lead = len(image.shape) - (1 if channel_axis is not None else 0) - (spatial or 0) if spatial else 0
    lead = image.shape[:n_lead]
    n = int(np.prod(lead)) if n_lead else 1
    aprs, tally = [], ErrorTally()
    for i, index in enumerate(np.ndindex(*lead) if n_lead else [()]):
        part = image[index] if n_lead else image
        yield Progress(i, n + 1, f"converting a {'x'.join(map(str, part.shape))} image to an APR"
                                 + (f" ({i + 1}/{n})..." if n_lead else "..."))
        apr = APR.from_image(part, params.rel_error, params=params, channel_axis=channel_axis,
                             cancel=cancel.is_set, max_memory=budget if blocks else None)
        if cancel.is_set():
            return None
        aprs.append(apr)
        yield Progress(i + 0.5, n + 1, "measuring the reconstruction error...")
        apr_error_stats(apr, part if channel_axis is None else np.moveaxis(part, channel_axis, -1), mode, tally)
    mean_err, max_err, psnr = tally.result()
    legend = legend_html(aprs)  # particle counts per level: here, not on the main thread
    info = dict(layer_info or {})
    extra = {**info.pop("extra", {}), "mean_error": mean_err, "max_error": max_err, "psnr": psnr}
    layers = _result_layers(aprs, tuple(lead), mode, info.pop("name", "image"), extra, info)
    yield Progress(n + 1, n + 1, "done")
    return ConvertResult(aprs[0], layers, mean_err, max_err, psnr, mode, legend, aprs, tuple(lead))


def _result_layers(aprs: list, lead: tuple, mode: str, name: str, extra: dict, kwargs: dict) -> list:
    """Lazy layer data of converted APRs, stacked along ``lead``, with the stack's summary in the metadata."""
    n_particles = sum(int(a.n_particles) for a in aprs)
    pixels = sum(int(np.prod(a.structure.shape)) for a in aprs)
    meta = apr_metadata(aprs[0], reconstruction_mode=mode, n_particles=n_particles,
                        computational_ratio=pixels / max(n_particles, 1), n_images=len(aprs), **extra)
    return lazy_layer_data(aprs, name, meta=meta, lead_shape=lead, mode=mode, **kwargs)


def update_or_add(viewer: napari.Viewer, data, kwargs: dict, layer_type: str):
    """Replace the data of the layer named ``kwargs["name"]`` (same type, ndim and scales), else add one."""
    name = kwargs["name"]
    multiscale = isinstance(data, list)
    first = data[0] if multiscale else data
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == layer_type and layer.data.ndim == np.ndim(first) and \
                getattr(layer, "rgb", False) == kwargs.get("rgb", False) and layer.multiscale == multiscale:
            layer.data = data
            for key in ("metadata", "colormap", "contrast_limits", "scale", "translate", "axis_labels", "opacity"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        viewer.layers.remove(name)
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def layer_steps(viewer: napari.Viewer, data, kwargs: dict, layer_type: str) -> list[Callable[[], None]]:
    """Steps that show one result layer, for ``BackgroundTask.in_turns`` (one event-loop turn each).

    An existing layer of that name is updated in one step (:func:`update_or_add`).
    A new one is added hidden in one turn (napari makes its visuals and
    controls) and shown in the next (napari slices and draws it), so the two
    costs stall the GUI separately.
    """
    if kwargs["name"] in viewer.layers:
        return [lambda: update_or_add(viewer, data, kwargs, layer_type)]
    visible = kwargs.get("visible", True)
    added = []
    return [lambda: added.append(update_or_add(viewer, data, {**kwargs, "visible": False}, layer_type)),
            lambda: setattr(added[0], "visible", visible)]


def _level_counts(aprs) -> tuple[np.ndarray, int, int]:
    aprs = aprs if isinstance(aprs, (list, tuple)) else [aprs]
    level_max = max(int(a.level_max) for a in aprs)
    counts = np.zeros(level_max + 1, dtype=np.int64)
    for a in aprs:  # same image size: same pixel level
        c = np.bincount(np.asarray(a.levels, dtype=np.int64), minlength=level_max + 1)
        counts[: len(c)] += c
    return counts, min(int(a.level_min) for a in aprs), level_max


def legend_html(aprs, level_map: np.ndarray | None = None) -> str:
    """HTML legend: one coloured square per cell size present, with its particle count (one APR or a list)."""
    counts, level_min, level_max = _level_counts(aprs)
    lines = []
    for level, color, side in level_legend(level_min, level_max, np.flatnonzero(counts)):
        lines.append(f'<span style="color:{color}; font-size:14pt">&#9632;</span> '
                     f"{side}x{side}-pixel cells (level {level}): {int(counts[level]):,} particles")
    return "<b>level map: colour = cell size</b><br>" + "<br>".join(lines)


def levels_present(aprs) -> str:
    """"levels a-b" of the levels that hold particles (not the structure's range)."""
    counts, _, level_max = _level_counts(aprs)
    present = np.flatnonzero(counts)
    if len(present) == 0:
        return "no particles"
    lo, hi = int(present.min()), int(present.max())
    return f"levels {lo}-{hi} (cells {1 << (level_max - hi)}-{1 << (level_max - lo)} px)"


class ConvertWidget(Container):
    """Convert an image layer to an APR and show it.

    Adds ``"<image> reconstruction"`` (image), ``"<image> level map"``
    (an image coloured by cell size; legend in the widget) and optionally
    ``"<image> particle cells"`` (points) for small images. The APR and its
    parameters are in the layers' metadata (``"aprnet_apr"``, ``"aprnet"``).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.image = ComboBox(label="image", choices=input_image_choices(self.viewer), nullable=True,
                              tooltip="2D or 3D image layer (RGB allowed) to convert")
        self.spatial = ComboBox(label="spatial axes", choices=list(SPATIAL), value=next(iter(SPATIAL)),
                                tooltip="which trailing axes form one image: 2D planes or 3D volumes; images "
                                        "along the other axes (time, channel, class...) are converted one by "
                                        "one and stacked along the same axes. Preset from the layer")
        self.params = ParamsForm()
        self.mode = ComboBox(label="reconstruction", choices=["constant", "smooth"], value="constant",
                             tooltip="constant: every pixel takes its particle's value; "
                                     "smooth: values blended across cell borders")
        self.level_display = ComboBox(label="level map", choices=list(LEVEL_DISPLAYS), value=LEVEL_DISPLAYS[0],
                                      tooltip="beside: the level map (opaque) right of the reconstruction, both "
                                              "readable; over: laid over the reconstruction at half opacity")
        self.show_cells = CheckBox(text=f"particle cells as points (<= {MAX_CELL_POINTS:,} particles)",
                                   value=False, tooltip="draw each particle cell as a square")
        self.auto_update = CheckBox(text="re-convert when E changes (small images)", value=True,
                                    tooltip=f"images up to {AUTO_PIXELS:,} pixels are converted again "
                                            "when a parameter changes")
        self.convert_button = PushButton(text="Convert")
        self.progress, self.status, self.cancel_button = task_widgets("conversion")
        self.task = BackgroundTask("Conversion", self.progress, self.status, self.cancel_button)
        self.results = text("")
        self.legend = text("")
        self.save_path = FileEdit(label="save as", mode="w", filter="*.apr", value="converted.apr")
        self.save_button = PushButton(text="Save APR")
        self.extend([form(self.image, self.spatial, *self.params.widgets, self.mode, self.level_display),
                     self.show_cells, self.auto_update,
                     row(self.convert_button, self.cancel_button), self.progress, self.status,
                     self.results, self.legend, form(self.save_path), self.save_button])
        self.result: ConvertResult | None = None
        self.source_name: str | None = None
        self._pending = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self._auto_convert)
        self.convert_button.changed.connect(lambda *_: self.convert())
        self.save_button.changed.connect(lambda *_: self.save())
        for w in self.params.fields.values():
            w.changed.connect(self._param_changed)
        self.mode.changed.connect(self._param_changed)
        self.level_display.changed.connect(lambda *_: self.result is not None and self._show(self.result))
        self.image.changed.connect(self._image_changed)
        refresh_choices_on_layer_change(self.viewer, self.image)
        self._image_changed()
        register_widget(napari_viewer, "Convert to APR", self)

    def _image_changed(self, *_: Any) -> None:
        layer = self.image.value
        if layer is not None:
            want = default_spatial(layer)
            self.spatial.value = next(k for k, v in SPATIAL.items() if v == want)

    # ------------------------------------------------------------ choices


    # ----------------------------------------------------------- actions
    def set_rel_error(self, value: float, convert: bool = True) -> None:
        """Set E (e.g. from the Tune E widget) and convert again."""
        self.params.rel_error.value = float(value)
        if convert:
            self._timer.stop()
            self.convert()

    def convert(self, layer=None):
        """Convert ``layer`` (default: the selected one) in the background; return the worker or None."""
        layer = self.image.value if layer is None else layer
        try:
            spatial = SPATIAL[self.spatial.value] if layer is self.image.value else default_spatial(layer)
            image, channel_axis = image_from_layer(layer, spatial)
            params = self.params.parameters(spacing=tuple(layer.scale[-spatial:]))
        except (ValueError, TypeError) as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        if self.task.running:
            self._pending = True
            self.task.cancel()
            return None
        self.source_name = layer.name
        self._source = layer
        info = {"name": layer.name, "extra": {"source_layer": layer.name}, "scale": tuple(layer.scale),
                "translate": tuple(layer.translate), "axis_labels": tuple(layer.axis_labels)}
        return self.task.start(convert_job, image, params, channel_axis, self.mode.value, spatial,
                               layer_info=info, on_return=self._show, on_finish=self._finished)

    def _finished(self) -> None:
        if self._pending:
            self._pending = False
            self.convert()

    def _param_changed(self, *_: Any) -> None:
        layer = self.image.value
        if (self.auto_update.value and self.result is not None and layer is not None
                and layer.name == self.source_name and np.prod(layer.data.shape[:layer.ndim]) <= AUTO_PIXELS):
            self._timer.start()

    def _auto_convert(self) -> None:
        self.convert()

    def _show(self, result: ConvertResult | None) -> None:
        """Show a conversion: each layer in its own event-loop turns, then the summary (see ``in_turns``)."""
        if result is None:
            return
        self.result = result
        layer = self._source
        beside = self.level_display.value == LEVEL_DISPLAYS[0]
        steps = []
        for data, kwargs, kind in result.layers:
            role = kwargs["metadata"][METADATA_KEY]["role"]
            if role == "reconstruction" and not layer.rgb:
                kwargs = {**kwargs, "colormap": layer.colormap.name, "contrast_limits": layer.contrast_limits}
            elif role == "level_map":  # the level map beside the image or over it, as chosen now
                where = beside_translate(result.apr.shape, layer.scale, layer.translate) if beside else \
                    tuple(layer.translate)
                kwargs = {**kwargs, "opacity": 1.0 if beside else 0.5,
                          "translate": tuple(layer.translate[:-1]) + where[-1:]}
            steps += layer_steps(self.viewer, data, kwargs, kind)
        self.task.in_turns(*steps, lambda: self._show_cells(result, layer), lambda: self._summarise(result, layer))

    def _show_cells(self, result: ConvertResult, layer) -> None:
        apr, aprs = result.apr, result.aprs or [result.apr]
        cells_name = f"{layer.name} particle cells"
        if self.show_cells.value and len(aprs) == 1 and apr.n_particles <= MAX_CELL_POINTS:
            centres, sides, levels = particle_cells(apr)
            colors = [level_color(lv, apr.level_max) for lv in levels]
            if cells_name in self.viewer.layers:
                self.viewer.layers.remove(cells_name)
            self.viewer.add_points(centres, size=sides, symbol="square", face_color="transparent",
                                   border_color=colors, border_width=0.08, border_width_is_relative=True,
                                   name=cells_name, scale=tuple(layer.scale[-apr.ndim:]),
                                   translate=tuple(layer.translate[-apr.ndim:]),
                                   metadata={METADATA_KEY: {"role": "particle_cells"}})
        elif self.show_cells.value:
            notify(f"{apr.n_particles:,} particles are too many to draw as points "
                   f"(limit {MAX_CELL_POINTS:,}); use the level map", "info")

    def _summarise(self, result: ConvertResult, layer) -> None:
        apr, aprs = result.apr, result.aprs or [result.apr]
        meta = result.layers[0][1]["metadata"][METADATA_KEY]
        each = f" in {len(aprs)} images converted one by one" if len(aprs) > 1 else ""
        self.results.value = (f"particles: {meta['n_particles']:,}{each}   CR: {meta['computational_ratio']:.2f}\n"
                              f"{levels_present(aprs)}   "
                              f"mean |error|: {result.mean_error:.4g}   max |error|: {result.max_error:.4g}"
                              f"   PSNR: {result.psnr:.1f} dB")
        self.status.value = f"converted {layer.name!r} with E = {apr.parameters.rel_error:g}"
        self.legend.value = result.legend or legend_html(aprs)

    def save(self, path: str | Path | None = None):
        """Save the last APR to ``path`` (default: the "save as" field) in the background."""
        if self.result is None:
            notify("nothing to save yet: convert an image first")
            return None
        if len(self.result.aprs) > 1:
            notify(f"the last conversion is a stack of {len(self.result.aprs)} APRs; an .apr file holds one: "
                   "convert a single image (spatial axes = all of its axes) to save it")
            return None
        path = Path(self.save_path.value if path is None else path)
        if path.suffix.lower() != ".apr":
            path = path.with_suffix(".apr")
        apr = self.result.apr

        def job(*, cancel):
            yield Progress(0, 1, f"saving {path}...")
            apr.save(str(path))
            yield Progress(1, 1, f"saved {path}")
            return path

        if self.task.running:
            notify("wait for the running conversion to finish before saving", "warning")
            return None
        return self.task.start(job)
