"""Dock widget "Tune E": convert at several E, stack results along an "E" axis, plot CR and error."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton

from napari_aprnet._layer_data import METADATA_KEY, level_map_display, pyramid_data
from napari_aprnet._widgets._common import (
    BackgroundTask,
    Progress,
    form,
    image_from_layer,
    input_image_choices,
    notify,
    open_widget,
    refresh_choices_on_layer_change,
    register_widget,
    row,
    task_widgets,
    text,
    unwrap_viewer,
    warm_up_layers,
)
from napari_aprnet._widgets._params import ParamsForm
from napari_aprnet._widgets._plot import LinePlot
from napari_aprnet._widgets.convert import layer_steps

if TYPE_CHECKING:
    import napari

__all__ = ["TuneWidget", "sweep_job"]


def sweep_job(image: np.ndarray, rel_errors: list[float], params, channel_axis: int | None, mode: str, *,
              cancel):
    """Generator run in a worker: yields progress and one SweepPoint per E (holding its APR, no images).

    Returns the lazy data of the two result layers, the reconstructions and
    the level maps stacked along E (:func:`napari_aprnet.lazy.stacked_pyramid`):
    no full reconstruction is held per E value.
    """
    from napari_aprnet.lazy import stacked_pyramid
    from napari_aprnet.sweep import sweep_rel_error

    n = len(rel_errors)
    yield Progress(0, n, "reading the image...")
    image = np.asarray(image)
    warm_up_layers()  # napari's first-layer imports here, not on the main thread
    yield Progress(0, n, f"converting at E = {rel_errors[0]:g} (1/{n})...")
    points = []
    for i, point in enumerate(sweep_rel_error(image, rel_errors, params=params, channel_axis=channel_axis,
                                              mode=mode, cancel=cancel.is_set, keep_images=False)):
        points.append(point)
        yield point
        if i + 1 < n:
            yield Progress(i + 1, n, f"converting at E = {rel_errors[i + 1]:g} ({i + 2}/{n})...")
    if not points:
        return None
    aprs, lead = [p.apr for p in points], (len(points),)
    yield Progress(n, n, "sweep done")
    return pyramid_data(stacked_pyramid(aprs, lead, mode)), pyramid_data(stacked_pyramid(aprs, lead, "level"))


class TuneWidget(Container):
    """Sweep the relative error E of an image's APR conversion.

    Adds ``"<image> E sweep"`` (reconstructions) and ``"<image> E sweep
    levels"`` (level maps), stacked along a first axis labelled "E": the
    dims slider moves through E. The plot shows the computational ratio and
    the mean absolute error against E, with the E under the slider marked.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False)
        self.viewer = unwrap_viewer(napari_viewer)
        self.image = ComboBox(label="image", choices=input_image_choices(self.viewer), nullable=True,
                              tooltip="2D or 3D image layer (RGB allowed) to convert at each E")
        self.values = LineEdit(label="E values", value="0.02:0.5:6",
                               tooltip="comma-separated list (0.05, 0.1, 0.2) or geometric range "
                                       "start:stop:count (0.02:0.5:6)")
        self.params = ParamsForm()
        self.mode = ComboBox(label="reconstruction", choices=["constant", "smooth"], value="constant")
        self.run_button = PushButton(text="Run sweep")
        self.progress, self.status, self.cancel_button = task_widgets("sweep")
        self.task = BackgroundTask("E sweep", self.progress, self.status, self.cancel_button)
        self.plot = LinePlot(title="computational ratio and error vs E", xlabel="E", log_x=True)
        self.current = text("")
        self.use_button = PushButton(text="Use this E in Convert to APR")
        self.use_button.enabled = False
        self.extend([form(self.image, self.values, *[w for w in self.params.widgets if w is not self.params.rel_error],
                          self.mode),
                     row(self.run_button, self.cancel_button),
                     self.progress, self.status, self.current, self.use_button])
        self.native.layout().addWidget(self.plot)
        self.points: list = []
        self._source = None
        self._stack = None
        self.run_button.changed.connect(lambda *_: self.run())
        self.use_button.changed.connect(lambda *_: self.use_current())
        napari_viewer.dims.events.current_step.connect(self._dims_changed)
        refresh_choices_on_layer_change(self.viewer, self.image)
        register_widget(napari_viewer, "Tune E", self)



    # -------------------------------------------------------------- run
    def run(self, layer=None, values: str | None = None):
        """Start the sweep; return the worker or None (bad input is notified)."""
        from napari_aprnet.sweep import parse_rel_errors

        layer = self.image.value if layer is None else layer
        try:
            image, channel_axis = image_from_layer(layer)
            rel_errors = parse_rel_errors(self.values.value if values is None else values)
            params = self.params.parameters(spacing=tuple(layer.scale[-layer.ndim:]))
        except (ValueError, TypeError) as exc:
            self.status.value = str(exc)
            notify(str(exc))
            return None
        if self.task.running:
            notify("an E sweep is already running; cancel it first", "warning")
            return None
        self.points = []
        self._source = layer
        self.plot.clear()
        self.use_button.enabled = False
        self._stack = None
        return self.task.start(sweep_job, image, rel_errors, params, channel_axis, self.mode.value,
                               on_yield=self._add_point, on_return=self._stacked, on_finish=self._finished)

    def _stacked(self, stack) -> None:
        self._stack = stack

    def _add_point(self, point) -> None:
        self.points.append(point)
        es = [p.rel_error for p in self.points]
        self.plot.set_series("CR", es, [p.computational_ratio for p in self.points], "#4fc3f7", "left")
        self.plot.set_series("mean |error|", es, [p.mean_error for p in self.points], "#ff8a65", "right")

    def _finished(self) -> None:
        if self.points and self._stack is not None:
            self._show_layers()

    def _show_layers(self) -> None:
        layer, pts = self._source, self.points
        recon, levels = self._stack
        spatial = layer.ndim
        own = tuple(str(a) for a in layer.axis_labels[-spatial:])
        if all(a.lstrip("-").isdigit() for a in own):  # napari's default labels ("-2", "-1")
            own = ("z", "y", "x")[3 - spatial:]
        labels = ("E",) + own
        multiscale = isinstance(recon, list)
        rgb = (recon[0] if multiscale else recon).ndim == (levels[0] if multiscale else levels).ndim + 1
        table = [{"rel_error": p.rel_error, "n_particles": p.n_particles,
                  "computational_ratio": p.computational_ratio, "mean_error": p.mean_error,
                  "max_error": p.max_error, "psnr": p.psnr} for p in pts]
        meta = {METADATA_KEY: {"role": "sweep", "source_layer": layer.name, "sweep": table}}
        common = {"scale": (1.0,) + tuple(layer.scale[-spatial:]),
                  "translate": (0.0,) + tuple(layer.translate[-spatial:]), "axis_labels": labels,
                  "metadata": meta}
        if multiscale:
            common["multiscale"] = True
        kwargs = {"name": f"{layer.name} E sweep", "rgb": rgb, **common}
        if not rgb:
            kwargs["contrast_limits"] = layer.contrast_limits
        lmin = min(int(p.apr.level_min) for p in pts)
        lmax = max(int(p.apr.level_max) for p in pts)
        level_kwargs = {"name": f"{layer.name} E sweep levels", "opacity": 0.5, **level_map_display(lmin, lmax),
                        **common}
        # the plot's last redraw first, in a turn of its own: its timer would fire amid the layer turns
        self.task.in_turns(self.plot.flush, *layer_steps(self.viewer, recon, kwargs, "image"),
                           *layer_steps(self.viewer, levels, level_kwargs, "image"),
                           lambda: self._sweep_shown(labels))

    def _sweep_shown(self, labels: tuple[str, ...]) -> None:
        self._label_dims(labels)
        self.use_button.enabled = True
        self._show_current()

    def _label_dims(self, labels: tuple[str, ...]) -> None:
        dims = self.viewer.dims
        n = dims.ndim
        if n >= len(labels):
            current = list(dims.axis_labels)
            current[n - len(labels):] = labels
            try:
                dims.axis_labels = tuple(current)
            except (ValueError, TypeError):  # napari versions deriving labels from layers
                pass

    # ------------------------------------------------------- E selection
    def current_index(self) -> int | None:
        """Index of the E under the dims slider (None without a sweep)."""
        if not self.points:
            return None
        n = self.viewer.dims.ndim
        spatial = self._source.ndim
        axis = n - spatial - 1
        if axis < 0:
            return None
        return int(np.clip(self.viewer.dims.current_step[axis], 0, len(self.points) - 1))

    def _dims_changed(self, *_: Any) -> None:
        # while a sweep runs or its layers are being added the slider is not yet the plot's E; adding the
        # first layer with an E axis moves it, and a redraw then would stall the GUI with that add
        if not self.task.running:
            self._show_current()

    def _show_current(self) -> None:
        i = self.current_index()
        if i is None:
            return
        p = self.points[i]
        self.plot.set_marker(p.rel_error)
        self.current.value = (f"slider at E = {p.rel_error:g}: {p.n_particles:,} particles, CR "
                              f"{p.computational_ratio:.2f}, mean |error| {p.mean_error:.4g}, "
                              f"max |error| {p.max_error:.4g}")

    def use_current(self) -> None:
        """Send the E under the slider to the Convert to APR widget (opening it if needed)."""
        i = self.current_index()
        if i is None:
            notify("run a sweep first, then move the E slider to the value you want")
            return
        convert = open_widget(self.viewer, "Convert to APR")
        if self._source is not None and self._source in self.viewer.layers:
            convert.image.value = self._source
        convert.params.set_parameters(self.params.parameters())
        convert.set_rel_error(self.points[i].rel_error, convert=True)
