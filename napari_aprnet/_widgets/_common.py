"""Shared helpers of the dock widgets: input checks, notifications, background tasks."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton

from napari_aprnet._layer_data import METADATA_KEY
from napari_aprnet._widgets._task import BackgroundTask, Progress, TaskError, notify
from napari_aprnet.bundled import bundled_checkpoint

if TYPE_CHECKING:
    import napari

__all__ = ["BackgroundTask", "PLUGIN", "Progress", "TaskError", "bundled_model_file", "default_spatial",
           "find_widget", "image_from_layer", "image_layers",
           "input_image_choices", "notify", "preselect_layer", "refresh_choices_on_layer_change",
           "form", "open_widget", "register_widget", "row", "task_widgets", "text", "unwrap_viewer",
           "warm_up_layers"]

PLUGIN = "napari-aprnet"
_REGISTRY: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def unwrap_viewer(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer itself, not napari's public-only proxy that plugin widgets receive."""
    return getattr(viewer, "__wrapped__", viewer)


def register_widget(viewer: napari.Viewer, name: str, widget: Any) -> None:
    """Remember ``widget`` as this viewer's widget ``name`` (weakly); once docked, scroll and tab it."""
    from qtpy.QtCore import QTimer

    _REGISTRY[(id(unwrap_viewer(viewer)), name)] = widget
    ref = weakref.ref(widget)
    QTimer.singleShot(0, lambda: _dock_nicely(viewer, ref()))


def _dock_of(native) -> Any:
    from qtpy.QtWidgets import QDockWidget

    parent = native.parent() if native is not None else None
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _dock_nicely(viewer: napari.Viewer, widget: Any) -> None:
    """Put the docked ``widget`` in a scroll area and tab it with the plugin's other docked widgets.

    The widgets together are taller than most screens: stacked, they pushed
    the dock past the screen's bottom.
    """
    from qtpy.QtWidgets import QFrame, QScrollArea

    try:
        dock = _dock_of(getattr(widget, "native", None))
        if dock is None:
            return
        inner = dock.widget()
        if inner is not None and not isinstance(inner, QScrollArea):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.NoFrame)
            scroll.setMinimumWidth(min(inner.sizeHint().width() + 24, 480))
            dock.setWidget(scroll)
            scroll.setWidget(inner)
        window = dock.parent()
        key = id(unwrap_viewer(viewer))
        others = [_dock_of(w.native) for (vid, _), w in list(_REGISTRY.items()) if vid == key and w is not widget]
        others = [d for d in others if d is not None and d is not dock
                  and window.dockWidgetArea(d) == window.dockWidgetArea(dock)]
        if others and dock not in window.tabifiedDockWidgets(others[0]):
            window.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()
    except RuntimeError:  # closed before the event loop got here
        pass


def find_widget(viewer: napari.Viewer, name: str) -> Any:
    """This viewer's widget ``name`` if it is open, else None."""
    return _REGISTRY.get((id(unwrap_viewer(viewer)), name))


def open_widget(viewer: napari.Viewer, name: str) -> Any:
    """Return this viewer's widget ``name`` (display name), docking it if needed."""
    widget = find_widget(viewer, name)
    if widget is None:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
        widget = find_widget(viewer, name)
    if widget is None:  # pragma: no cover - manifest and registry out of sync
        raise RuntimeError(f"could not open the {name!r} widget")
    return widget


def bundled_model_file(name: str) -> Path | None:
    """The file of the bundled model ``name`` (preselected in the widgets), or None if not installed."""
    try:
        return bundled_checkpoint(name)
    except FileNotFoundError:
        return None


def image_layers(viewer: napari.Viewer) -> list:
    """Image layers of the viewer (for combo boxes)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def input_image_choices(viewer: napari.Viewer) -> Callable[..., list[tuple[str, Any]]]:
    """Return a magicgui ``choices`` callable: the viewer's image layers, except those this plugin added."""
    def choices(*_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in image_layers(viewer) if METADATA_KEY not in layer.metadata]

    return choices


def _pick(picker: Any, layer: Any) -> None:
    from magicgui.widgets import Select

    picker.value = [layer] if isinstance(picker, Select) else layer


def preselect_layer(viewer: napari.Viewer, picker: Any, layer: Any = None) -> None:
    """Select ``layer`` (default: the active layer, else the newest choice) in ``picker`` if it is a choice.

    Without ``layer``, a picker that already shows a layer is left alone.
    """
    choices = [c for c in picker.choices if c is not None]
    if layer is not None:
        if layer in choices:
            _pick(picker, layer)
        return
    if picker.value not in (None, [], ()) or not choices:
        return
    active = viewer.layers.selection.active
    _pick(picker, active if active in choices else choices[-1])


def refresh_choices_on_layer_change(viewer: napari.Viewer, picker: Any) -> None:
    """Keep ``picker``'s layer choices current; preselect the active image layer and each new one."""
    def reset(event: Any = None) -> None:
        try:
            picker.reset_choices()
            added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
            preselect_layer(viewer, picker, added)
            preselect_layer(viewer, picker)
        except RuntimeError:  # the widget was already deleted by Qt
            pass

    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(reset)
    reset()


#: Axis names that are never spatial: images along such an axis are converted one by one.
NON_SPATIAL = {"t", "time", "c", "ch", "channel", "class", "plane", "sample", "index", "e", "label", "frame"}


def default_spatial(layer) -> int:
    """2 or 3: how many trailing axes of ``layer`` form one image (RGB's colour axis not counted).

    2D layers give 2. Otherwise an axis named like time, channel or class
    (:data:`NON_SPATIAL`) just before the last two makes them stacked 2D
    images; a 3D layer with an axis named "z" or default names is one volume;
    4D and up (e.g. t, z, y, x) give 3D volumes unless the third-last axis is
    non-spatial.
    """
    ndim = int(layer.ndim)
    if ndim <= 2:
        return 2
    labels = [str(a).lower() for a in getattr(layer, "axis_labels", ())] or [""] * ndim
    third = labels[-3] if len(labels) >= 3 else ""
    return 2 if third in NON_SPATIAL else 3


def image_from_layer(layer, spatial: int | None = None) -> tuple[np.ndarray, int | None]:
    """Return ``(data, channel_axis)`` of a layer that APR conversion accepts.

    ``data`` is the layer's array as is (possibly lazy); read it with
    ``np.asarray`` in the worker thread. With ``spatial`` (2 or 3), the
    layer may have more axes than that: the images along the leading axes are
    converted one by one.

    Raises
    ------
    ValueError
        With a message saying what is wrong and what to do: no layer, not an
        Image layer, multiscale data, or not 2D/3D (RGB allowed).
    """
    from napari.layers import Image

    if layer is None:
        raise ValueError("no image layer selected: open an image (File > Open, or File > Open Sample > "
                         "APRNet) and pick it in the widget")
    if not isinstance(layer, Image):
        raise ValueError(f"layer {layer.name!r} is a {type(layer).__name__} layer; "
                         "APR conversion needs an Image layer")
    if layer.multiscale:
        raise ValueError(f"layer {layer.name!r} is multiscale; convert a single-scale image instead")
    rgb = bool(layer.rgb)
    ndim = layer.ndim
    if spatial is None:
        if ndim not in (2, 3):
            raise ValueError(f"layer {layer.name!r} has {ndim} dimensions (shape {tuple(layer.data.shape)}); "
                             "APR conversion takes 2D or 3D images (RGB allowed). Extract one time point or "
                             "channel first (e.g. right-click the layer > Split Stack)")
        spatial = ndim
    elif spatial not in (2, 3) or ndim < spatial:
        raise ValueError(f"layer {layer.name!r} has {ndim} dimensions: it cannot be converted as "
                         f"{spatial}D images")
    data = layer.data  # not read here: lazy (dask) data is loaded in the worker thread
    if min(data.shape[ndim - spatial:ndim]) < 2:
        raise ValueError(f"layer {layer.name!r} has shape {tuple(data.shape)}: every spatial side must be "
                         ">= 2 pixels")
    return data, (-1 if rgb else None)


def load_checkpoint_in_background(task: BackgroundTask, field: Any, path: str | Path | None,
                                  load: Callable[[Path], Any], on_return: Callable[[Any], None],
                                  on_finish: Callable[[], None] | None = None, kind: str = "training"):
    """Load checkpoint ``path`` (default: ``field``'s value) with ``load(path)`` in ``task``.

    Says what is wrong (no such file, a task running) and returns None, else
    puts the path in ``field`` and returns the worker.
    """
    path = Path(field.value if path is None else path)
    if not path.is_file():
        notify(f"checkpoint {str(path)!r} not found; pick a .pt file written by {kind}")
        return None
    field.value = path
    if task.running:
        notify("wait for the running task to finish", "warning")
        return None

    def job(*, cancel):
        yield Progress(0, 1, f"loading {path.name}...")
        return load(path)

    return task.start(job, on_return=on_return, on_finish=on_finish)
_LAYERS_WARM = threading.Event()


def warm_up_layers() -> None:
    """Make a throwaway Image layer, once per process; call it from a worker thread.

    napari imports about 200 more modules (``scipy.ndimage`` among them) the
    first time an Image layer is made; when that happens as results arrive,
    the imports stall the main thread. napari's layer models hold no Qt
    objects, so this is safe off the main thread. (Convert and Tune E make
    no Labels layer, whose first one imports pandas.)
    """
    if _LAYERS_WARM.is_set():
        return
    from napari.layers import Image

    Image(np.zeros((2, 2), dtype=np.float32))
    _LAYERS_WARM.set()


def task_widgets(name: str) -> tuple[ProgressBar, Label, PushButton]:
    """A progress bar, a status label and a cancel button for a :class:`BackgroundTask`."""
    progress = ProgressBar(value=0, min=0, max=1, label="progress")
    status = text(value="")
    cancel = PushButton(text=f"Cancel {name.lower()}")
    return progress, status, cancel


def text(value: str = "") -> Label:
    """A read-only text that wraps and takes the dock's full width."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Minimum)
    label.native.setMinimumWidth(260)
    return label


def form(*widgets) -> Container:
    """Widgets one per line with their labels on the left."""
    return Container(widgets=list(widgets), labels=True)


def row(*widgets) -> Container:
    """Widgets side by side without labels."""
    return Container(widgets=list(widgets), layout="horizontal", labels=False)
