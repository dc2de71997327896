"""A form for :class:`napari_aprnet.params.APRParameters` (fields discovered at run time)."""
from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import CheckBox, FloatSpinBox

__all__ = ["ParamsForm"]

#: Tooltips of the known parameter names (any spelling of the same idea shares one).
_TOOLTIPS = {
    "rel_error": "Relative error threshold E. Particle cell size R <= E * sigma / |grad I|: "
                 "smaller E keeps more particles and a more faithful image; larger E compresses more.",
    "lambda": "Smoothing of the B-spline fitted before taking the gradient (0 = none, default 3). "
              "More smoothing ignores noise.",
    "ip_th": "Intensity threshold: where the smoothed image is <= this, the gradient is ignored "
             "(background becomes coarse).",
    "sigma_th": "Lower bound of the local intensity scale sigma; raises the floor so noise in dark "
                "regions does not force fine particles.",
    "grad_th": "Gradient threshold: gradients below this are treated as 0.",
    "sigma_th_max": "Where sigma is below this (and below sigma_th) the region is made as coarse as "
                    "possible (0 = off).",
    "psf": "Size of the point-spread function in pixels (default 2); sets the windows of the local "
           "intensity scale.",
    "neighborhood_optimization": "LibAPR's neighbourhood optimisation (default on): fewer particles for "
                                 "the same error.",
    "auto": "On (default): sigma_th and grad_th are chosen from the image (Li's threshold of the local "
            "intensity scale and of the gradient), so flat and dark regions get coarse particles and the APR "
            "compresses (e.g. CR 2.8 instead of 1.3 on the blobs sample); the two values above are then "
            "ignored. Off: the values above are used as typed (0 = keep every gradient, little compression).",
}
#: Defaults of the GUI that differ from APRParameters' (the library keeps the thesis defaults).
GUI_DEFAULTS = {"auto": True}
#: Fields filled from the layer's scale instead of the form.
_SPACING = ("dx", "dy", "dz")
_LABELS = {"rel_error": "E (relative error)", "lambda": "smoothing lambda", "ip_th": "Ip_th",
           "sigma_th": "sigma_th", "grad_th": "grad_th", "auto": "automatic thresholds"}


def _key(name: str) -> str:
    n = name.lower().rstrip("_")
    if n in ("lambda", "lam", "smoothing"):
        return "lambda"
    if n.startswith("auto"):
        return "auto"
    return n


class ParamsForm:
    """Widgets for the scalar fields of ``APRParameters`` (put ``widgets`` in a labelled container).

    The pixel spacing (``dz, dy, dx``) is not in the form: it comes from the
    ``spacing`` argument of :meth:`parameters` (the layer's scale).
    """

    def __init__(self) -> None:
        from napari_aprnet.params import APRParameters

        self._cls = APRParameters
        defaults = APRParameters()
        self.fields: dict[str, Any] = {}
        for f in dataclasses.fields(APRParameters):
            key = _key(f.name)
            value = GUI_DEFAULTS.get(key, getattr(defaults, f.name))
            tip = _TOOLTIPS.get(key, f.name)
            label = _LABELS.get(key, f.name)
            if isinstance(value, bool):
                w = CheckBox(value=value, text=label, tooltip=tip)
            elif f.name in _SPACING or key == "spacing":
                continue
            elif isinstance(value, (int, float)):
                lo = 1e-4 if key == "rel_error" else 0.0
                w = FloatSpinBox(value=float(value), min=lo, max=1e6, step=0.01 if key == "rel_error" else 0.5,
                                 label=label, tooltip=tip)
                w.native.setDecimals(4 if key == "rel_error" else 2)
            else:
                continue
            self.fields[f.name] = w
        self.rel_error_name = next(n for n in self.fields if _key(n) == "rel_error")

    @property
    def widgets(self) -> list:
        """The field widgets, in dataclass order."""
        return list(self.fields.values())

    @property
    def rel_error(self):
        """The E spin box."""
        return self.fields[self.rel_error_name]

    def parameters(self, spacing: tuple[float, ...] | None = None):
        """Return an ``APRParameters`` from the form (``spacing`` if given)."""
        values = {name: w.value for name, w in self.fields.items()}
        if spacing is not None:
            spacing = tuple(abs(float(s)) for s in spacing)
            if len(spacing) not in (2, 3):
                raise ValueError(f"spacing needs 2 or 3 values, got {spacing}")
            values.update(zip(("dz", "dy", "dx")[3 - len(spacing):], spacing))
        return self._cls(**values)

    def set_parameters(self, params) -> None:
        """Show ``params`` in the form."""
        for name, w in self.fields.items():
            w.value = getattr(params, name)
