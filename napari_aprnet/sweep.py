"""Sweep the relative error threshold E of APR conversion (no GUI imports).

Used by the napari "Tune E" widget and usable from scripts::

    for point in sweep_rel_error(image, [0.05, 0.1, 0.2]):
        print(point.rel_error, point.n_particles, point.computational_ratio)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_aprnet._native import CancelledError
from napari_aprnet.apr import APR
from napari_aprnet.metrics import apr_error_stats, error_stats

__all__ = ["SweepPoint", "parse_rel_errors", "stack_points", "sweep_rel_error"]


@dataclass(frozen=True)
class SweepPoint:
    """The result of converting one image at one relative error E.

    Attributes
    ----------
    rel_error : float
        The E used.
    n_particles : int
        Number of particles.
    computational_ratio : float
        Pixels divided by particles.
    mean_error, max_error : float
        Mean and max absolute difference between the image and the
        reconstruction (in image intensity units).
    psnr : float
        Peak signal-to-noise ratio of the reconstruction in dB (inf if exact).
    reconstruction : ndarray or None
        The reconstructed image (same shape as the input); None when the
        sweep ran with ``keep_images=False``.
    level_map : ndarray of uint8 or None
        The particle level of every pixel (None likewise).
    apr : APR
        The APR itself.
    """

    rel_error: float
    n_particles: int
    computational_ratio: float
    mean_error: float
    max_error: float
    psnr: float
    reconstruction: np.ndarray | None
    level_map: np.ndarray | None
    apr: Any


def parse_rel_errors(text: str) -> list[float]:
    """Parse a list of E values.

    Accepts a comma/space separated list (``"0.05, 0.1, 0.2"``) or a geometric
    range ``"start:stop:count"`` (``"0.02:0.5:6"`` gives 6 log-spaced values,
    rounded to 3 significant digits).

    Raises
    ------
    ValueError
        If the text is empty, malformed, or contains a value <= 0.
    """
    text = text.strip()
    if not text:
        raise ValueError("no E values given; type e.g. '0.05, 0.1, 0.2' or '0.02:0.5:6'")
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 1 or start <= 0 or stop <= 0:
                raise ValueError(f"range {text!r} needs start > 0, stop > 0 and count >= 1")
            values = list(np.geomspace(start, stop, count)) if count > 1 else [start]
        else:
            values = [float(t) for t in text.replace(",", " ").split()]
    except ValueError as exc:
        detail = f": {exc}" if str(exc) else ""
        raise ValueError(f"cannot read E values from {text!r}{detail}; "
                         "type e.g. '0.05, 0.1, 0.2' or '0.02:0.5:6'") from None
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"E values must be positive numbers, got {bad}")
    return [float(f"{v:.3g}") if ":" in text else float(v) for v in values]


def sweep_rel_error(image: np.ndarray, rel_errors: Sequence[float], *, params=None,
                    channel_axis: int | None = None, mode: str = "constant",
                    cancel: Callable[[], bool] | None = None, keep_images: bool = True) -> Iterator[SweepPoint]:
    """Convert ``image`` once per E and yield one :class:`SweepPoint` each.

    Parameters
    ----------
    image : ndarray
        2D or 3D image (plus a channel axis if ``channel_axis`` is given).
    rel_errors : sequence of float
        The E values, converted in the order given.
    params : APRParameters, optional
        Other conversion parameters; their ``rel_error`` is replaced by each E.
    channel_axis : int, optional
        Axis holding colour channels, passed to :meth:`APR.from_image`.
    mode : {"constant", "smooth"}
        Reconstruction mode.
    cancel : callable returning bool, optional
        Polled between and during conversions; when true the sweep ends
        (the generator returns; no exception).
    keep_images : bool
        Keep each reconstruction and level map in its point (default). With
        False the points hold only their APRs (reconstruct on demand, e.g.
        with :func:`napari_aprnet.lazy.stacked_pyramid`) and the error is
        measured block by block, so no full reconstruction stays in memory.
    """
    for e in rel_errors:
        if cancel is not None and cancel():
            return
        p = replace(params, rel_error=float(e)) if params is not None else None
        try:
            apr = APR.from_image(image, float(e), params=p, channel_axis=channel_axis, cancel=cancel)
        except CancelledError:
            return
        if keep_images:
            recon, level_map = np.asarray(apr.reconstruct(mode=mode)), np.asarray(apr.reconstruct(mode="level"))
            mean_err, max_err, psnr = error_stats(image, recon)
        else:
            recon = level_map = None
            channels_last = image if channel_axis is None else np.moveaxis(image, channel_axis, -1)
            mean_err, max_err, psnr = apr_error_stats(apr, channels_last, mode)
        yield SweepPoint(float(e), int(apr.n_particles), float(apr.computational_ratio),
                         mean_err, max_err, psnr, recon, level_map, apr)


def stack_points(points: Sequence[SweepPoint]) -> tuple[np.ndarray, np.ndarray]:
    """Stack reconstructions and level maps along a new leading "E" axis."""
    if not points:
        raise ValueError("no sweep points to stack")
    if any(p.reconstruction is None for p in points):
        raise ValueError("these sweep points hold no images (keep_images=False); stack their APRs lazily "
                         "with napari_aprnet.lazy.stacked_pyramid")
    return (np.stack([p.reconstruction for p in points]),
            np.stack([p.level_map for p in points]))
