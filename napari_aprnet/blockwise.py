"""APR formation of volumes larger than memory, block by block along z.

:func:`form_apr_blockwise` reads any 3D array-like that slices along its first
axis (a numpy memmap, a :class:`TiffPages` stack read page by page, a zarr or
dask array) a block of z-planes at a time:

1. one pass for the image minimum and maximum (and the NaN/Inf check);
2. per block, the gradient, local intensity scale and required level of each
   half-resolution cell (:func:`napari_aprnet.formation` stage 1 and 2), on the
   block extended by a halo of ``halo`` planes on each side; only the level
   map of the block's own planes is kept (uint8, an eighth of the pixels);
3. the pulling scheme on the whole half-resolution level map (as the
   whole-volume conversion does);
4. per block, the sums of the pixels of every particle cell, accumulated in
   float64 and divided by the cell sizes.

Tolerance
---------
Stages 3 and 4 see the whole volume, so the result differs from
:func:`napari_aprnet.formation.form_apr` only through stage 1: the smoothing
B-spline is a recursive (IIR) filter whose influence decays like ``rho**d``
with the distance ``d`` (``rho ~ 0.58`` for ``lambda_ = 3``). The halo is
chosen so that ``rho**halo <= 1e-3`` plus the reach of the local intensity
scale, so gradients near block borders differ by about 1e-3 of the
intensity, which moves a cell across a level boundary only rarely (measured:
well under 0.5 % of the particles; ``benchmarks/bench_blockwise.py``). The
round-off floor of the gradient uses the image range instead of the range
of the smoothed image. Particle values are means computed in float64, equal
to the whole-volume means to float32 rounding. ``auto_parameters`` needs
statistics of the whole image and is refused.
"""
from __future__ import annotations

import math
import mmap
from typing import Any, Callable

import numpy as np

from napari_aprnet import _native
from napari_aprnet.formation import _ROUNDOFF, MAX_ABS_VALUE, _CancelWatch, estimate_memory
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, level_max_for_shape

__all__ = ["form_apr_blockwise", "TiffPages", "parse_memory", "halo_planes", "needs_blocks"]

_STAGE1_BYTES_PER_PIXEL = 8  # input copy (<= 2 for uint16) + float32 work + half-resolution grad/sigma/smooth
_SAMPLE_BYTES_PER_PIXEL = 16  # float64 block + its first yx reduction (4) and the next level's z sums
_MIN_CORE = 8


def parse_memory(text: str | int) -> int:
    """Bytes from ``"600MiB"``, ``"2GiB"``, ``"1.5GB"``, ``"500M"`` or a plain number of bytes."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "kb": 1e3, "mb": 1e6,
                 "gb": 1e9, "tb": 1e12, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "b": 1}
        unit = next((u for u in units if s.endswith(u)), "")
        try:
            value = int(float(s[: len(s) - len(unit)]) * (units[unit] if unit else 1))
        except ValueError:
            raise ValueError(f"cannot read the memory size {text!r}; write e.g. 600MiB or 2GiB") from None
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return value


def halo_planes(params: APRParameters) -> int:
    """z-planes added on each side of a block: spline decay to 1e-3 plus the reach of the local intensity scale."""
    lam = params.lambda_
    spline = 0
    if lam > 0:
        r = math.sqrt(3.0 + 144.0 * lam)
        xi = 1.0 - 96.0 * lam + 24.0 * lam * r
        rho = abs((24.0 * lam - 1.0 - math.sqrt(xi)) / (24.0 * lam) * math.sqrt((48.0 * lam + 24.0 * lam * r) / xi))
        spline = math.ceil(math.log(1e-3) / math.log(rho))
    w1, w2 = (1, 1, 1, 2, 2, 3)[min(params.psf_pixels, 6) - 1], (2, 3, 4, 4, 5, 6)[min(params.psf_pixels, 6) - 1]
    halo = spline + 2 * (w1 + w2) + 4
    return halo + (halo % 2)


def needs_blocks(shape: tuple[int, ...], max_memory: int) -> bool:
    """True if whole-volume formation of ``shape`` would need more than ``max_memory`` bytes."""
    return estimate_memory(tuple(int(s) for s in shape)) > max_memory


class TiffPages:
    """A multi-page TIFF as a read-only ``(pages, y, x)`` array-like read page by page (tifffile).

    Only slicing along the first axis with step 1 (``stack[z0:z1]``) reads data.
    """

    def __init__(self, path):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        pages = self._tif.pages
        first = pages[0]
        if len(first.shape) != 2:
            raise ValueError(f"{path}: pages of shape {first.shape}; a z-stack of 2D grey pages is needed")
        self.shape = (len(pages), *first.shape)
        self.dtype = np.dtype(first.dtype)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TiffPages reads slices of pages, e.g. stack[10:20]")
        start, stop, _ = key.indices(self.shape[0])
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        for k, z in enumerate(range(start, stop)):
            out[k] = self._tif.pages[z].asarray()
        return out

    def close(self) -> None:
        """Close the file."""
        self._tif.close()


def _read(image, z0: int, z1: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image[z0:z1]))


def _release(image) -> None:
    """Drop the pages a numpy memmap has read from this process's resident memory (they stay in the page cache)."""
    mm = getattr(image, "_mmap", None)
    if isinstance(image, np.memmap) and isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def _range(image, rows: int, watch) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for z0 in range(0, image.shape[0], rows):
        block = _read(image, z0, min(z0 + rows, image.shape[0]))
        b_lo, b_hi = float(block.min()), float(block.max())  # NaN propagates through min and max
        _release(image)
        if not (math.isfinite(b_lo) and math.isfinite(b_hi)):
            raise ValueError("image contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
        lo, hi = min(lo, b_lo), max(hi, b_hi)
        watch.check()
    if max(-lo, hi) > MAX_ABS_VALUE:
        raise ValueError(f"image values reach {max(-lo, hi):.3g}, beyond +-{MAX_ABS_VALUE:g}; rescale it first")
    return lo, hi


def _level_map(image, params: APRParameters, level_max: int, offset: float, span: float, core: int,
               watch) -> np.ndarray:
    """Stage 1 + 2 block by block: the uint8 half-resolution level map of the whole image."""
    nz = image.shape[0]
    halo = halo_planes(params)
    level_ds = np.empty(tuple(-(-int(s) // 2) for s in image.shape), np.uint8)
    spacing = params.spacing(3)
    h_min = min(spacing)
    grad_th = max(params.grad_th * h_min, _ROUNDOFF * span)
    for z0 in range(0, nz, core):
        z1 = min(z0 + core, nz)
        e0, e1 = max(z0 - halo, 0), min(z1 + halo, nz)
        block = _read(image, e0, e1)
        _release(image)
        if block.dtype not in (np.uint8, np.uint16, np.float32):
            block = block.astype(np.float32)
        if offset != 0:
            block = np.subtract(block, block.dtype.type(offset), dtype=block.dtype)
        grad, sigma, smooth = _native.formation_grad_sigma(block, tuple(h / h_min for h in spacing),
                                                           params.lambda_, params.psf_pixels, watch.flag)
        del block
        watch.check()
        a, b = (z0 - e0) // 2, (z0 - e0) // 2 + (-(-(z1 - z0) // 2))
        level_ds[z0 // 2: z0 // 2 + (b - a)] = _native.formation_levels(
            grad[a:b], sigma[a:b], smooth[a:b], ip_th=params.Ip_th - offset, sigma_th=params.sigma_th,
            sigma_th_max=params.sigma_th_max, grad_th=grad_th, rel_error=params.rel_error,
            level_max=level_max, h_min=1.0, cancel_flag=watch.flag)
        watch.check()
    return level_ds


def _sample(image, structure: APRStructure, rows: int, watch) -> np.ndarray:
    """Mean of the pixels of every particle cell, from blocks of ``rows`` planes (float64 sums)."""
    lmax = structure.level_max
    off = structure.level_offsets
    sums = np.zeros(structure.n_particles, np.float64)
    zc_all = structure.coords[:, 0]
    nz = structure.shape[0]
    for z0 in range(0, nz, rows):
        z1 = min(z0 + rows, nz)
        red = _read(image, z0, z1).astype(np.float64)
        _release(image)
        for level in range(lmax, structure.level_min - 1, -1):
            k = lmax - level
            if level < lmax:  # 2x2 sums of the finer level's yx reduction
                red = np.add.reduceat(np.add.reduceat(red, np.arange(0, red.shape[1], 2), axis=1),
                                      np.arange(0, red.shape[2], 2), axis=2)
            lo, hi = off[level], off[level + 1]
            if lo == hi:
                continue
            c_lo, c_hi = z0 >> k, (z1 - 1) >> k
            starts = np.maximum(np.arange(c_lo, c_hi + 1) << k, z0) - z0
            zsum = red if k == 0 else np.add.reduceat(red, starts, axis=0)
            zc = zc_all[lo:hi]
            i0, i1 = lo + np.searchsorted(zc, c_lo), lo + np.searchsorted(zc, c_hi, side="right")
            c = structure.coords[i0:i1]
            sums[i0:i1] += zsum[c[:, 0] - c_lo, c[:, 1], c[:, 2]]
        watch.check()
    return (sums / structure.pixel_counts).astype(np.float32)


def form_apr_blockwise(image: Any, params: APRParameters | None = None, *, max_memory: int | str = "1GiB",
                       cancel: Callable[[], bool] | None = None) -> tuple[APRStructure, np.ndarray]:
    """Form the APR of a 3D volume block by block along z within a memory budget.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Anything with ``shape``, ``dtype`` and ``image[z0:z1]`` (numpy memmap,
        :class:`TiffPages`, zarr, dask). One channel, real dtype.
    params : APRParameters, optional
        ``auto_parameters`` is refused (it needs the whole image).
    max_memory : int or str
        Budget for the conversion's arrays (e.g. ``"600MiB"``); the
        interpreter and the input's own cache are not counted.
    cancel : callable, optional
        Polled between blocks and inside the C code.

    Returns
    -------
    structure : APRStructure
    values : ndarray of float32, shape (Np,)

    Raises
    ------
    ValueError
        For a non-3D input, NaN/Inf, ``auto_parameters``, or a budget too
        small for blocks of at least 8 planes plus the halo.
    """
    params = APRParameters() if params is None else params
    if params.auto_parameters:
        raise ValueError("auto_parameters needs statistics of the whole image, which a blockwise conversion does "
                         "not have; pass sigma_th and grad_th (e.g. from APR.from_image on a crop)")
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"blockwise conversion needs a (z, y, x) volume, got shape {shape}")
    if dtype.kind not in "uif":
        raise TypeError(f"image must have a real numeric dtype, got {dtype}")
    budget = parse_memory(max_memory)
    plane = shape[1] * shape[2]
    fixed = -(-plane // 4) * -(-shape[0] // 2)  # the half-resolution level map (and its pulling tree share)
    halo = halo_planes(params)
    core = (budget - 2 * fixed) // (_STAGE1_BYTES_PER_PIXEL * plane) - 2 * halo
    core -= core % 2
    if core < _MIN_CORE:
        need = 2 * fixed + (_MIN_CORE + 2 * halo) * _STAGE1_BYTES_PER_PIXEL * plane
        raise ValueError(f"max_memory {budget / 2**20:.0f} MiB is too small for planes of {shape[1]}x{shape[2]}: "
                         f"blocks of {_MIN_CORE} planes and a halo of {halo} need about {need / 2**20:.0f} MiB")
    rows = max(1, min(shape[0], (budget - 2 * fixed) // (_SAMPLE_BYTES_PER_PIXEL * plane)))
    level_max = level_max_for_shape(shape)
    level_min = min(1, level_max)
    with _CancelWatch(cancel) as watch:
        lo, hi = _range(image, rows, watch)
        offset = lo  # subtracted like form_apr does (exact for integers)
        level_ds = _level_map(image, params, level_max, offset, hi - lo, core, watch)
        levels, coords = _native.pulling_scheme(level_ds, shape, level_max, level_min,
                                                params.neighborhood_optimization, watch.flag)
        del level_ds
        watch.check()
        structure = APRStructure(shape, level_max, levels, coords, level_min)
        values = _sample(image, structure, rows, watch)
    return structure, values

