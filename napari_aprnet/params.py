"""Parameters of APR formation (names and meaning follow LibAPR / pyapr).

The pipeline works in float32 throughout, so LibAPR's intensity offset for
integer images (+100 for uint16, +5 for uint8, added so that B-spline
coefficients stay positive in integer storage) is not needed: the offset
cancels everywhere (gradient, local intensity scale) and ``Ip_th`` is compared
with the smoothed image in the input's own units, exactly as LibAPR compares
it with ``Ip_th + offset`` on the offset image.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["APRParameters", "RANGES"]


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"APRParameters.{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"APRParameters.{name} must be finite, got {value!r}; pass a finite number")
    return v


#: Valid range of each numeric parameter: (low, high, low is allowed, meaning).
#: The bounds keep the float32 pipeline finite and its run time bounded.
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "rel_error": (0.0, 1e3, False, "typical 0.01 .. 0.5"),
    "lambda_": (0.0, 1e6, True, "0 disables smoothing, typical 0.1 .. 10"),
    "Ip_th": (-1e30, 1e30, True, "an intensity"),
    "sigma_th": (0.0, 1e30, True, "0 = no threshold"),
    "sigma_th_max": (0.0, 1e30, True, "0 = off"),
    "grad_th": (0.0, 1e30, True, "0 = no threshold"),
    "dx": (1e-12, 1e12, True, "pixel spacing; only ratios matter"),
    "dy": (1e-12, 1e12, True, "pixel spacing; only ratios matter"),
    "dz": (1e-12, 1e12, True, "pixel spacing; only ratios matter"),
    "psf": (0.0, 100.0, False, "pixels, default 2"),
}


def _in_range(name: str, value: Any) -> float:
    v = _finite(name, value)
    lo, hi, closed, meaning = RANGES[name]
    if not ((v >= lo if closed else v > lo) and v <= hi):
        raise ValueError(f"APRParameters.{name} must be in {'[' if closed else '('}{lo:g}, {hi:g}] ({meaning}), "
                         f"got {v:g}")
    return v


@dataclass
class APRParameters:
    """Parameters controlling how an image is turned into an APR.

    Parameters
    ----------
    rel_error : float
        Relative error threshold E of the reconstruction condition
        ``|I - I_hat| / sigma <= E`` (default 0.1). Smaller values give more
        particles.
    lambda_ : float
        Smoothing parameter of the cubic smoothing B-spline used to estimate
        the gradient (LibAPR's ``lambda``; default 3.0). ``0`` disables
        smoothing (the gradient is taken on the raw image).
    Ip_th : float
        Intensity threshold: the gradient is set to 0 where the smoothed image
        is <= ``Ip_th`` (so dark background is represented coarsely).
    sigma_th : float
        Lower bound of the local intensity scale: values below it are raised
        to ``sigma_th``. Larger values give fewer particles in dim regions.
    sigma_th_max : float
        Where the local intensity scale is below ``sigma_th_max`` (and below
        ``sigma_th``), it is set to 60000, i.e. such regions are represented as
        coarsely as the neighbour constraint allows (LibAPR's meaning). 0 = off.
    grad_th : float
        Gradient magnitudes (intensity per unit of the pixel spacing) below
        ``grad_th`` are set to 0.
    dx, dy, dz : float
        Pixel spacing along x (last axis), y and z (first axis of a 3D image).
        Used for the gradient; ``min`` of the spacings of the image's axes
        scales the levels (LibAPR's ``min(dx, dy, dz)``). Only the ratios
        matter: scaling all spacings by a constant (another unit) gives the
        same APR, as does adding a constant to the image when ``Ip_th`` is 0.
    psf : float
        Size of the point-spread function in pixels (default 2). It selects the
        box-mean windows of the local intensity scale (LibAPR's ``psfx``).
    neighborhood_optimization : bool
        LibAPR's neighbourhood optimisation (default True): the pulling scheme
        runs on the half-resolution tree and its seeds become particles one
        level finer.
    auto_parameters : bool
        If True, ``sigma_th`` and ``grad_th`` are chosen from the image
        (see :func:`napari_aprnet.formation.auto_thresholds`): Li's minimum
        cross-entropy threshold of the local intensity scale and of the
        gradient magnitude, computed deterministically on a fixed histogram.
        The explicit values of those two fields are then ignored.
    """

    rel_error: float = 0.1
    lambda_: float = 3.0
    Ip_th: float = 0.0
    sigma_th: float = 0.0
    sigma_th_max: float = 0.0
    grad_th: float = 0.0
    dx: float = 1.0
    dy: float = 1.0
    dz: float = 1.0
    psf: float = 2.0
    neighborhood_optimization: bool = True
    auto_parameters: bool = False

    def __post_init__(self) -> None:
        for name in RANGES:
            setattr(self, name, _in_range(name, getattr(self, name)))
        for name in ("neighborhood_optimization", "auto_parameters"):
            v = getattr(self, name)
            if not isinstance(v, (bool, int)) or isinstance(v, float):
                raise TypeError(f"APRParameters.{name} must be True or False, got {v!r}")
            setattr(self, name, bool(v))

    @property
    def psf_pixels(self) -> int:
        """The psf rounded to whole pixels (at least 1), as used by the C code."""
        return max(1, int(round(self.psf)))

    def spacing(self, ndim: int) -> tuple[float, ...]:
        """Pixel spacing in numpy axis order: ``(dy, dx)`` or ``(dz, dy, dx)``."""
        if ndim == 2:
            return (self.dy, self.dx)
        if ndim == 3:
            return (self.dz, self.dy, self.dx)
        raise ValueError(f"spacing is defined for 2D or 3D images, got ndim={ndim}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters (JSON/HDF5-attribute friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "APRParameters":
        """Rebuild parameters saved by :meth:`to_dict`.

        Unknown keys raise ``ValueError`` (a file from a newer version or a
        typo); missing keys take their defaults. ``lambda`` is accepted as an
        alias of ``lambda_``.
        """
        d = dict(d)
        if "lambda" in d and "lambda_" not in d:
            d["lambda_"] = d.pop("lambda")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown APR parameter(s) {unknown}; known: {sorted(names)}")
        kwargs = {}
        for k, v in d.items():
            if hasattr(v, "item"):  # numpy scalars from HDF5 attributes
                v = v.item()
            kwargs[k] = v
        return cls(**kwargs)
