"""APR formation: pixel image -> particle cells and particle values.

The pipeline is LibAPR's (thesis section 2.3, DESIGN section 7), run in C:

1. smoothing B-spline (``lambda_``), gradient magnitude with the pixel
   spacing, max-downsampled 2x; local intensity scale ``sigma`` on the
   half-resolution smoothed image;
2. thresholds (``Ip_th``, ``sigma_th``, ``sigma_th_max``, ``grad_th``) and the
   required level ``L = floor(log2(|grad| / sigma * 2^level_max * h_min / E))``;
3. the pulling scheme (face-adjacent particle cells differ by at most one
   level), optionally with the neighbourhood optimisation;
4. particle values: mean of the pixels of each particle cell.

Input conventions
-----------------
- 2D ``(y, x)`` or 3D ``(z, y, x)`` arrays of any real integer or float dtype
  (uint8, uint16 and float32 are read without conversion; other dtypes are
  converted to float32, so integers above 2**24 lose precision). ``bool``,
  complex and object arrays are refused, as are NaN/Inf and empty arrays.
- Channels: pass ``channel_axis``. When ``channel_axis`` is None, a 3D array
  whose last axis has 3 or 4 entries is read as a 2D RGB(A) image
  ``(y, x, c)`` (napari's ``rgb`` rule); pass ``rgb=False`` to read it as a
  ``(z, y, x)`` stack instead. 4D arrays need an explicit ``channel_axis``.
- With several channels the particle cells come from one intensity image:
  for 3 or 4 channels the ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``
  (alpha ignored), otherwise the mean of the channels. Every channel is then
  sampled at the particle cells (thesis 4.2.2), so the reconstruction
  condition holds for the intensity image, not for each channel.
- The input is never modified.

``level_min`` follows LibAPR (``GenInfo``): 1, the coarsest level of the
particle-cell tree (``min(1, level_max)`` for tiny images). With the
neighbourhood optimisation seeds become particles one level finer, so a
constant image gives the coarsest APR LibAPR can form: all particles at level
``min(2, level_max)``.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np

from napari_aprnet import _native
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, level_max_for_shape

__all__ = ["form_apr", "gradient_and_scale", "auto_thresholds", "estimate_memory",
           "prepare_image", "LUMA_WEIGHTS"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
# Relative float32 round-off of the recursive smoothing filter: gradient
# magnitudes (per smallest pixel spacing) below this fraction of max |smoothed
# image - image minimum| are treated as 0, so a constant image gives the
# coarsest APR instead of a 0/0 level.
_ROUNDOFF = 1e-5
#: Largest |pixel value| accepted: squared float32 gradients overflow beyond ~1e19.
MAX_ABS_VALUE = 1e18
_NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


# ----- input handling ------------------------------------------------------

def prepare_image(image: Any, channel_axis: int | None = None, rgb: bool | None = None) -> np.ndarray:
    """Validate an input image and return it as ``(*spatial, C)`` (a view when possible).

    Raises
    ------
    TypeError
        For bool, complex, object or non-numeric arrays.
    ValueError
        For empty arrays, NaN/Inf, values beyond ``MAX_ABS_VALUE`` or shapes
        that are not 2D/3D (+ channels).
    MemoryError
        When forming the APR would need more memory than is available
        (checked before the values are scanned).
    """
    if isinstance(image, np.ndarray):
        arr = image
    else:
        try:
            arr = np.asarray(image)
        except Exception as exc:  # ragged lists etc.
            raise TypeError(f"image must be array-like, got {type(image).__name__}: {exc}") from None
    kind = arr.dtype.kind
    if kind == "b":
        raise TypeError("boolean images are not supported: convert with image.astype(np.uint8) first")
    if kind == "c":
        raise TypeError("complex images are not supported: pass np.abs(image) or image.real")
    if kind not in "uif":
        raise TypeError(f"image must have a real numeric dtype (uint8, uint16, float32, ...), got {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape}); an APR needs at least one pixel")
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
        ax = int(channel_axis)
        if not -arr.ndim <= ax < arr.ndim:
            raise ValueError(f"channel_axis {channel_axis} is out of range for an image with {arr.ndim} axes")
        arr = np.moveaxis(arr, ax, -1)
        if arr.ndim - 1 not in (2, 3):
            raise ValueError(f"with a channel axis the image must have 2 or 3 spatial axes, got shape {image.shape}")
    else:
        auto_rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
        if rgb is None:
            rgb = auto_rgb
        if rgb:
            if not auto_rgb:
                raise ValueError(f"rgb=True needs a (y, x, 3|4) array, got shape {arr.shape}")
        elif arr.ndim == 4:
            raise ValueError(f"4D image {arr.shape}: pass channel_axis (e.g. channel_axis=-1 for (z, y, x, c))")
        elif arr.ndim not in (2, 3):
            hint = " (reshape a 1D signal to (1, N))" if arr.ndim == 1 else ""
            raise ValueError(f"image must be 2D (y, x) or 3D (z, y, x), got shape {arr.shape}{hint}")
        if not rgb:
            arr = arr[..., np.newaxis]
    _check_memory(tuple(int(s) for s in arr.shape[:-1]), int(arr.shape[-1]))
    _check_values(arr)
    return arr


def _check_values(arr: np.ndarray) -> None:
    """Refuse NaN/Inf and values beyond ``MAX_ABS_VALUE``, scanning in blocks (no image-sized temporary)."""
    rows = max(1, (16 << 20) // max(1, arr[0].nbytes))  # about 16 MiB per block
    for start in range(0, arr.shape[0], rows):
        block = arr[start:start + rows]
        lo, hi = float(block.min()), float(block.max())  # NaN propagates through min and max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("image contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
        if max(-lo, hi) > MAX_ABS_VALUE:
            raise ValueError(f"image values reach {max(-lo, hi):.3g}, beyond +-{MAX_ABS_VALUE:g} where the "
                             f"float32 gradient and block means overflow; rescale the image first "
                             f"(e.g. image / abs(image).max())")


def _native_channel(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8/uint16/float32 copy-or-view of one spatial channel."""
    if arr.dtype in _NATIVE_DTYPES:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _intensity(arr: np.ndarray) -> np.ndarray:
    """The single-channel image the particle cells are computed from."""
    c = arr.shape[-1]
    if c == 1:
        return _native_channel(arr[..., 0])
    if c in (3, 4):
        out = np.zeros(arr.shape[:-1], np.float32)
        for k, w in enumerate(LUMA_WEIGHTS):
            out += np.float32(w) * arr[..., k].astype(np.float32)
    else:
        out = arr.astype(np.float32).mean(axis=-1, dtype=np.float32)
    return np.ascontiguousarray(out)


# ----- memory ----------------------------------------------------------------

def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_memory(shape: tuple[int, ...], n_channels: int = 1) -> int:
    """Upper estimate of the bytes :func:`form_apr` needs for a spatial ``shape``.

    Counts the float32 working copies, the half-resolution arrays, the
    pulling-scheme tree and the worst-case output (one particle per pixel).
    """
    n = int(np.prod(shape, dtype=np.int64))
    nh = int(np.prod([-(-int(s) // 2) for s in shape], dtype=np.int64))
    ndim = len(shape)
    work = 4 * n + 4 * n  # float32 intensity copy + C working image
    half = 4 * 4 * nh + nh + 2 * nh + 3 * nh  # grad, sigma, smooth, temp; levels; tree; pulling masks
    outputs = n * (1 + 4 * ndim + 4 * n_channels)
    sampling = 4 * n + 5 * nh  # one channel copy + mean pyramid
    return int(work + half + outputs + sampling)


def _check_memory(shape: tuple[int, ...], n_channels: int) -> None:
    need = estimate_memory(shape, n_channels)
    avail = _available_memory()
    if avail is not None and need > avail:
        raise MemoryError(
            f"forming the APR of an image of shape {tuple(shape)} with {n_channels} channel(s) needs about "
            f"{need / 2**20:.0f} MiB but only {avail / 2**20:.0f} MiB are available; use a smaller image "
            f"(crop or tile it) or free memory")


# ----- cancellation ------------------------------------------------------------

class _CancelWatch:
    """An int32 flag the C code polls, set from ``cancel`` (callable or Event) by a watcher thread."""

    def __init__(self, cancel):
        self.flag = np.zeros(1, np.int32)
        if cancel is None:
            self._test = None
        elif hasattr(cancel, "is_set"):
            self._test = cancel.is_set
        elif callable(cancel):
            self._test = cancel
        else:
            raise TypeError(f"cancel must be a callable returning bool or a threading.Event, got {cancel!r}")
        self._stop = threading.Event()
        self._thread = None

    def _poll(self) -> bool:
        if self._test is not None and self._test():
            self.flag[0] = 1
        return bool(self.flag[0])

    def check(self) -> None:
        if self._poll():
            raise _native.CancelledError("APR formation was cancelled")

    def _run(self):
        while not self._stop.wait(0.01):
            if self._poll():
                return

    def __enter__(self):
        if self._test is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


# ----- pipeline ------------------------------------------------------------------

def _grad_sigma(intensity: np.ndarray, params: APRParameters, cancel_flag=None):
    """Stage 1 in units that make the levels independent of the spacing's unit and of an offset.

    The image minimum is subtracted first (in the image's dtype, exact for
    integers) and the spacing is divided by its smallest value, so scaling all
    spacings by a constant or adding a constant to the image gives the same
    arrays. Returns ``grad, sigma, smooth, offset, h_min``: the gradient is per
    ``h_min`` (in intensity units per smallest pixel spacing) and ``smooth`` is
    relative to ``offset``, the image minimum.
    """
    offset = intensity.min()
    if offset != 0:
        intensity = np.subtract(intensity, offset, dtype=intensity.dtype)
    spacing = params.spacing(intensity.ndim)
    h_min = min(spacing)
    grad, sigma, smooth = _native.formation_grad_sigma(
        intensity, tuple(h / h_min for h in spacing), params.lambda_, params.psf_pixels, cancel_flag)
    return grad, sigma, smooth, float(offset), h_min


def gradient_and_scale(image: Any, params: APRParameters | None = None, cancel_flag=None):
    """Half-resolution gradient magnitude, local intensity scale and smoothed image.

    Parameters
    ----------
    image : array_like
        Single-channel 2D or 3D image.
    params : APRParameters, optional

    Returns
    -------
    grad_ds, sigma_ds, smooth_ds : ndarray of float32, shape ``ceil(shape / 2)``
        Before any threshold is applied; the gradient is per unit of the
        pixel spacing, as ``grad_th`` is.
    """
    params = APRParameters() if params is None else params
    arr = prepare_image(image, rgb=False)
    grad, sigma, smooth, offset, h_min = _grad_sigma(_intensity(arr), params, cancel_flag)
    if h_min != 1.0:
        grad /= np.float32(h_min)
    if offset != 0.0:
        smooth += np.float32(offset)
    return grad, sigma, smooth


def _li_threshold(values: np.ndarray, nbins: int = 4096) -> float:
    """Li's minimum cross-entropy threshold on a fixed histogram (deterministic)."""
    v = np.asarray(values)
    if v.dtype != np.float32:
        v = v.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return lo
    if v.dtype == np.float32:  # the C histogram counts exactly as numpy.histogram on the float64 values
        edges = np.linspace(lo, hi, nbins + 1, endpoint=True, dtype=np.float64)
        hist = _native.formation_histogram(v, edges)
    else:
        hist, edges = np.histogram(v.ravel(), bins=nbins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:]) - lo + (hi - lo) / nbins  # shift to positive values
    hist = hist.astype(np.float64)
    csum = np.cumsum(hist)
    wsum = np.cumsum(hist * centers)
    total_n, total_w = csum[-1], wsum[-1]
    t = total_w / total_n
    width = (hi - lo) / nbins
    for _ in range(1000):
        k = int(np.searchsorted(centers, t, side="right")) - 1
        k = min(max(k, 0), nbins - 2)
        nb, wb = csum[k], wsum[k]
        nf, wf = total_n - nb, total_w - wb
        if nb <= 0 or nf <= 0:
            break
        mb, mf = wb / nb, wf / nf
        if mb <= 0 or mf <= 0 or mb == mf:
            break
        t_new = (mb - mf) / (np.log(mb) - np.log(mf))
        if abs(t_new - t) < 0.5 * width:
            t = t_new
            break
        t = t_new
    return float(t + lo - (hi - lo) / nbins)


def auto_thresholds(grad_ds: np.ndarray, sigma_ds: np.ndarray) -> tuple[float, float]:
    """Automatic ``(sigma_th, grad_th)``: Li thresholds of the local intensity scale and of the gradient.

    Deterministic (a fixed 4096-bin histogram of all half-resolution cells;
    the iteration starts at the mean), so results do not depend on threads.
    """
    return max(_li_threshold(sigma_ds), 0.0), max(_li_threshold(grad_ds), 0.0)


def _level_image(intensity: np.ndarray, params: APRParameters, level_max: int, watch) -> np.ndarray:
    """The downsampled particle level image (the local resolution) of the intensity."""
    flag = watch.flag
    grad, sigma, smooth, offset, h_min = _grad_sigma(intensity, params, flag)
    watch.check()
    # grad is per smallest spacing h_min: grad_th (per unit spacing) is scaled to match
    sigma_th, grad_th = params.sigma_th, params.grad_th * h_min
    if params.auto_parameters:
        sigma_th, grad_th = auto_thresholds(grad, sigma)
    # gradients at the float32 round-off level of the smoothing filter are 0
    abs_max = max(0.0, float(smooth.max()), -float(smooth.min()))  # max |smooth| without a temporary
    grad_th = max(grad_th, _ROUNDOFF * abs_max)
    return _native.formation_levels(
        grad, sigma, smooth, ip_th=params.Ip_th - offset, sigma_th=sigma_th,
        sigma_th_max=params.sigma_th_max, grad_th=grad_th, rel_error=params.rel_error,
        level_max=level_max, h_min=1.0, cancel_flag=flag)


def _sample_channels(arr: np.ndarray, level_max: int, levels, coords, watch) -> np.ndarray:
    """Particle values ``(Np, C)`` of every channel of ``arr``, one channel at a time."""
    values = np.empty((len(levels), arr.shape[-1]), np.float32)
    for c in range(arr.shape[-1]):
        channel = _native_channel(arr[..., c])
        _native.formation_sample(channel, level_max, levels, coords, values, c, cancel_flag=watch.flag)
        watch.check()
    return values


def form_apr(image: Any, params: APRParameters | None = None, channel_axis: int | None = None,
             cancel: Callable[[], bool] | threading.Event | None = None, *,
             rgb: bool | None = None) -> tuple[APRStructure, np.ndarray]:
    """Form the APR of an image.

    Parameters
    ----------
    image : array_like
        2D ``(y, x)`` or 3D ``(z, y, x)`` image, optionally with a channel axis
        (see the module docstring for the RGB rule). Never modified.
    params : APRParameters, optional
        Formation parameters (defaults when None).
    channel_axis : int, optional
        Axis holding channels.
    cancel : callable or threading.Event, optional
        Polled during formation (also while C code runs); when it returns
        True, ``napari_aprnet._native.CancelledError`` is raised.
    rgb : bool, optional
        Force (True) or forbid (False) reading a ``(y, x, 3|4)`` array as RGB(A)
        when ``channel_axis`` is None. Default: automatic.

    Returns
    -------
    structure : APRStructure
    values : ndarray of float32, shape ``(Np,)`` for one channel or ``(Np, C)``

    Raises
    ------
    TypeError, ValueError
        Bad input (see :func:`prepare_image`) or parameters.
    MemoryError
        When the estimated memory need exceeds the available memory (checked
        before any large allocation).
    """
    params = APRParameters() if params is None else params
    if not isinstance(params, APRParameters):
        raise TypeError(f"params must be an APRParameters, got {type(params).__name__}")
    arr = prepare_image(image, channel_axis, rgb)
    spatial = tuple(int(s) for s in arr.shape[:-1])
    n_channels = int(arr.shape[-1])
    level_max = level_max_for_shape(spatial)
    level_min = min(1, level_max)

    with _CancelWatch(cancel) as watch:
        watch.check()
        intensity = _intensity(arr)
        flag = watch.flag
        if level_max - 1 >= level_min:
            level_ds = _level_image(intensity, params, level_max, watch)
        else:  # 1 or 2 pixels per axis at most: every pixel is a particle
            level_ds = np.zeros(1, np.uint8)
        watch.check()
        levels, coords = _native.pulling_scheme(level_ds, spatial, level_max, level_min,
                                                params.neighborhood_optimization, flag)
        del level_ds
        watch.check()
        if n_channels == 1:
            values = _native.formation_sample(intensity, level_max, levels, coords, cancel_flag=flag)
        else:
            del intensity
            values = _sample_channels(arr, level_max, levels, coords, watch)
        watch.check()
    structure = APRStructure(spatial, level_max, levels, coords, level_min)
    return structure, values
