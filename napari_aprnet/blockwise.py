"""APR formation of volumes larger than memory, block by block along z.

:func:`form_apr_blockwise` reads any 3D array-like that slices along its first
axis (a numpy memmap, a :class:`TiffPages` stack read page by page, a zarr or
dask array) a block of z-planes at a time:

1. one pass for the image minimum and maximum (and the NaN/Inf check);
2. the gradient, local intensity scale and required level of each
   half-resolution cell (:func:`napari_aprnet.formation` stage 1 and 2) in
   *chains* of blocks (:mod:`napari_aprnet._blockwise_chain`): the blocks of
   a chain run in order and pass the smoothing spline's causal z-state and
   their last planes on, so each plane is smoothed once (plus a look-ahead
   of ``lookahead`` planes per block); only the level map is kept (uint8,
   an eighth of the pixels);
3. the pulling scheme on the whole half-resolution level map (as the
   whole-volume conversion does);
4. per block, the particle values: blocks are a multiple of the tallest
   cell's height, so every cell lies in one block and the whole-volume C
   sampler gives the same float32 means; cells taller than a block (a budget
   too small for them) are summed across blocks in float64.

Chains (``_CHAIN_HALOS * halo_planes`` planes, 416 for the default
parameters; the chain length depends on the parameters only) and the blocks
of stage 4 are independent: ``workers=N`` runs them in N processes (a memmap
or :class:`TiffPages` is reopened by path there; an in-memory numpy array is
sent chain by chain), or any :class:`concurrent.futures.Executor` runs them,
e.g. a dask cluster's ``distributed.Client(...).get_executor()``. The result
does not depend on it (for the same budget per worker).

Tolerance
---------
Stages 3 and 4 see the whole volume, so the result differs from
:func:`napari_aprnet.formation.form_apr` only through stage 1: the smoothing
B-spline is a recursive (IIR) filter whose influence decays like ``rho**d``
with the distance ``d`` (``rho ~ 0.58`` for ``lambda_ = 3``). Within a chain
its causal z recursion is exact; the anti-causal one of a block starts
``lookahead`` planes after it, where ``rho**lookahead <= 1e-4`` (the C code's
own truncation of its boundary sums), and is exact in the last block. A
chain after the first starts ``halo_planes`` planes early (``rho**d <= 1e-3``
plus the reach of the local intensity scale). So gradients near block ends
differ by about 1e-4 of the intensity, near chain starts by 1e-3, which
moves a cell across a level boundary only rarely (measured: identical level
maps on the test volumes, well under 0.5 % of the particles on large ones;
``benchmarks/results/blockwise.md``). The round-off floor of the gradient
uses the image range instead of the range of the smoothed image. Particle
values equal the whole-volume ones (those of cells taller than a sampling
block to float32 rounding).
``auto_parameters`` needs statistics of the whole image and is refused.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Callable

import numpy as np

from napari_aprnet import _native
from napari_aprnet._blockwise_chain import ChainJob, chain_bytes, chain_task, plan_blocks
from napari_aprnet._blockwise_tasks import LevelJob, portable, read_block, run_tasks, sample_task
from napari_aprnet.formation import _ROUNDOFF, MAX_ABS_VALUE, _available_memory, _CancelWatch, estimate_memory
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, level_max_for_shape

__all__ = ["form_apr_blockwise", "TiffPages", "parse_memory", "halo_planes", "needs_blocks", "default_budget"]

_MIN_CORE = 8
_CHAIN_HALOS = 16  # chains of 16 warm-ups: their warm-ups cost about 6 % more stage-1 work


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


def _spline_rho(lam: float) -> float:
    """|pole| of the smoothing spline's recursive filter: its influence decays like ``rho**distance``."""
    r = math.sqrt(3.0 + 144.0 * lam)
    xi = 1.0 - 96.0 * lam + 24.0 * lam * r
    return abs((24.0 * lam - 1.0 - math.sqrt(xi)) / (24.0 * lam) * math.sqrt((48.0 * lam + 24.0 * lam * r) / xi))


def _box_widths(params: APRParameters) -> tuple[int, int]:
    """Half-widths of the local intensity scale's two box means (native/formation/sigma.c)."""
    k = min(params.psf_pixels, 6) - 1
    return (1, 1, 1, 2, 2, 3)[k], (2, 3, 4, 4, 5, 6)[k]


def halo_planes(params: APRParameters) -> int:
    """Warm-up planes before a chain that does not start at plane 0: spline decay to 1e-3 plus the scale's reach."""
    spline = math.ceil(math.log(1e-3) / math.log(_spline_rho(params.lambda_))) if params.lambda_ > 0 else 0
    halo = spline + 2 * sum(_box_widths(params)) + 4
    return halo + (halo % 2)


def _geometry(params: APRParameters) -> tuple[int, int]:
    """``(lookahead, reach)``: planes after a block for the anti-causal spline pass (its truncation length for
    1e-4, as in the C code, at least 2 for the gradient) and half-planes the local intensity scale reads."""
    lookahead = 2
    if params.lambda_ > 0:
        lookahead = max(lookahead, math.ceil(abs(math.log(1e-4) / math.log(_spline_rho(params.lambda_)))))
    return lookahead, sum(_box_widths(params)) + 1


def _chain_planes(params: APRParameters) -> int:
    """Planes per chain: chains are independent tasks; each but the first recomputes ``halo_planes`` planes."""
    return _CHAIN_HALOS * halo_planes(params)


def default_budget() -> int | None:
    """Half the memory available now (None where unknown): the budget the Convert widget converts within."""
    avail = _available_memory()
    return None if avail is None else avail // 2


def needs_blocks(shape: tuple[int, ...], max_memory: int) -> bool:
    """True if whole-volume formation of ``shape`` would need more than ``max_memory`` bytes."""
    return estimate_memory(tuple(int(s) for s in shape)) > max_memory


class TiffPages:
    """A multi-page TIFF as a read-only ``(pages, y, x)`` array-like read page by page (tifffile).

    Only slicing along the first axis with step 1 (``stack[z0:z1]``) reads data.
    Pickling keeps the path only (a worker process reopens the file).
    """

    def __init__(self, path):
        import tifffile

        self._path = os.fspath(path)
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

    def __getstate__(self) -> dict:
        return {"path": self._path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def _range(image, rows: int, watch) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for z0 in range(0, image.shape[0], rows):
        block = read_block(image, z0, min(z0 + rows, image.shape[0]))
        b_lo, b_hi = float(block.min()), float(block.max())  # NaN propagates through min and max
        if not (math.isfinite(b_lo) and math.isfinite(b_hi)):
            raise ValueError("image contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
        lo, hi = min(lo, b_lo), max(hi, b_hi)
        watch.check()
    if max(-lo, hi) > MAX_ABS_VALUE:
        raise ValueError(f"image values reach {max(-lo, hi):.3g}, beyond +-{MAX_ABS_VALUE:g}; rescale it first")
    return lo, hi


class _Runner:
    """Where the blocks go: this process, ``workers`` spawned processes, or a user's executor (e.g. dask's)."""

    def __init__(self, image, workers: int | Executor):
        self.own = isinstance(workers, (int, np.integer)) and not isinstance(workers, bool)
        if self.own and workers < 1:
            raise ValueError(f"workers must be a positive number of processes or an Executor, got {workers}")
        if not self.own and not isinstance(workers, Executor):
            raise TypeError(f"workers must be an int or a concurrent.futures.Executor, got {type(workers).__name__}")
        self.parallel = int(workers) if self.own else 1  # blocks in memory at a time on this machine
        self.executor = None if self.own else workers
        # tasks waiting at a time: each holds a block of pixels when they are sent (in-memory arrays)
        self.in_flight = 2 * (self.parallel if self.own else getattr(workers, "_max_workers", 8))
        self.image = image
        self.source = portable(image, sends_blocks=not self.own or self.parallel > 1)

    def __enter__(self):
        if self.own and self.parallel > 1:
            self.executor = ProcessPoolExecutor(self.parallel, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self.own and self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def read_args(self, e0: int, e1: int) -> tuple:
        """The ``(source, e0, e1)`` a task reads its planes with (the pixels themselves for in-memory arrays)."""
        if self.source is None:
            return read_block(self.image, e0, e1), 0, e1 - e0
        return self.source, e0, e1

    def run(self, fn, args, on_result, watch) -> None:
        run_tasks(self.executor, fn, args, self.in_flight, on_result, watch.check, watch.flag)


def _level_map(runner: _Runner, params: APRParameters, level_max: int, offset: float, span: float, core: int,
               watch) -> np.ndarray:
    """Stage 1 + 2 chain by chain: the uint8 half-resolution level map of the whole image."""
    shape = runner.image.shape
    nz = shape[0]
    lookahead, reach = _geometry(params)
    warmup, length = halo_planes(params), _chain_planes(params)
    level_ds = np.empty(tuple(-(-int(s) // 2) for s in shape), np.uint8)
    spacing = params.spacing(3)
    h_min = min(spacing)
    level = LevelJob(tuple(h / h_min for h in spacing), params.lambda_, params.psf_pixels, offset,
                     dict(ip_th=params.Ip_th - offset, sigma_th=params.sigma_th, sigma_th_max=params.sigma_th_max,
                          grad_th=max(params.grad_th * h_min, _ROUNDOFF * span), rel_error=params.rel_error,
                          level_max=level_max, h_min=1.0))
    job = ChainJob(level, tuple(int(s) for s in shape), core, lookahead, reach)

    def tasks():
        for c0 in range(0, nz, length):
            c1 = min(c0 + length, nz)
            s0 = max(c0 - warmup, 0)
            end = max(z1 + la for _, z1, la in plan_blocks(s0, c1, job))
            source, e0, e1 = runner.read_args(s0, end)
            out = level_ds[c0 // 2: -(-c1 // 2)] if runner.executor is None else None  # in place here
            yield c0, (source, e0, e1, s0, c0, c1, job, out)

    def store(c0, chain_levels):
        if not np.shares_memory(chain_levels, level_ds):
            level_ds[c0 // 2: c0 // 2 + len(chain_levels)] = chain_levels

    runner.run(chain_task, tasks(), store, watch)
    return level_ds


def _z_starts(structure: APRStructure) -> list[np.ndarray]:
    """Per level: the index of the first particle of each z-row of cells (and the level's end), int64."""
    off, lmax, nz = structure.level_offsets, structure.level_max, structure.shape[0]
    starts = []
    for level in range(lmax + 1):
        lo, hi = int(off[level]), int(off[level + 1])
        counts = np.zeros(((nz - 1) >> (lmax - level)) + 1, np.int64)
        for a in range(lo, hi, 1 << 22):  # chunks: no copy of a whole level's z column
            counts += np.bincount(structure.coords[a: min(a + (1 << 22), hi), 0], minlength=len(counts))
        starts.append(np.concatenate([[lo], lo + np.cumsum(counts)]))
    return starts


def _sample_rows(structure: APRStructure, rows_max: int) -> int:
    """Planes per sampling block: a multiple of the tallest cell if that fits, else a power of two."""
    present = np.flatnonzero(np.diff(structure.level_offsets))
    tallest = 1 << (structure.level_max - int(present.min())) if len(present) else 1
    if tallest <= rows_max:
        return rows_max // tallest * tallest
    return 1 << (rows_max.bit_length() - 1)


def _sample(runner: _Runner, structure: APRStructure, rows_max: int, watch) -> np.ndarray:
    """Particle values block by block: cells inside a block by the C sampler, taller ones by float64 sums."""
    lmax, nz = structure.level_max, structure.shape[0]
    rows = _sample_rows(structure, rows_max)
    starts = _z_starts(structure)
    values = np.empty(structure.n_particles, np.float32)
    tall_levels = [lv for lv in range(lmax + 1) if (1 << (lmax - lv)) > rows]
    sums = {lv: np.zeros(int(starts[lv][-1] - starts[lv][0]), np.float64) for lv in tall_levels}

    def tasks():
        for z0 in range(0, nz, rows):
            z1 = min(z0 + rows, nz)
            spans, levels, coords, tall = [], [], [], []
            for level in range(lmax + 1):
                k = lmax - level
                c0, c1 = z0 >> k, ((z1 - 1) >> k) + 1
                i0, i1 = int(starts[level][c0]), int(starts[level][c1])
                if i0 == i1:
                    continue
                spans.append((level, i0, i1))
                if level in sums:
                    tall.append((k, structure.coords[i0:i1, 1:]))
                else:
                    levels.append(structure.levels[i0:i1])
                    coords.append(structure.coords[i0:i1] - np.array([c0, 0, 0], np.int32))
            source, e0, e1 = runner.read_args(z0, z1)
            empty = (np.zeros(0, np.uint8), np.zeros((0, 3), np.int32))
            yield spans, (source, e0, e1, lmax, np.concatenate(levels or [empty[0]]),
                          np.concatenate(coords or [empty[1]]), tall)

    def store(spans, result):
        block_values, tall_sums = result
        n, t = 0, 0
        for level, i0, i1 in spans:
            if level in sums:
                sums[level][i0 - starts[level][0]: i1 - starts[level][0]] += tall_sums[t]
                t += 1
            else:
                values[i0:i1] = block_values[n: n + i1 - i0]
                n += i1 - i0

    runner.run(sample_task, tasks(), store, watch)
    for level, s in sums.items():
        lo, hi = int(starts[level][0]), int(starts[level][-1])
        steps = np.int64(1) << (lmax - level)
        counts = np.ones(hi - lo, np.float64)
        for axis, n in enumerate(structure.shape):
            first = structure.coords[lo:hi, axis].astype(np.int64) * steps
            counts *= np.minimum(first + steps, n) - first
        values[lo:hi] = s / counts
    return values


def form_apr_blockwise(image: Any, params: APRParameters | None = None, *, max_memory: int | str = "1GiB",
                       workers: int | Executor = 1,
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
        Budget for the conversion's arrays (e.g. ``"600MiB"``), shared by the
        worker processes (their blocks, and so the exact result, depend on the
        budget per worker); the interpreter, the input's own cache and the
        particles of the result are not counted.
    workers : int or concurrent.futures.Executor
        Number of processes converting blocks at the same time (1: this
        process), or an executor to submit the blocks to, e.g. a dask
        cluster's ``distributed.Client(...).get_executor()``; each of its
        workers then needs up to ``max_memory`` and the image's path (a
        memmap, :class:`TiffPages`, zarr or dask array; an in-memory numpy
        array is sent chain by chain, block by block). The result does not
        depend on it for the same budget per worker.
    cancel : callable, optional
        Polled between blocks and inside the C code (of this process).

    Returns
    -------
    structure : APRStructure
    values : ndarray of float32, shape (Np,)

    Raises
    ------
    ValueError
        For a non-3D input, NaN/Inf, ``auto_parameters``, or a budget too
        small for blocks of at least 8 planes.
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
    with _Runner(image, workers) as runner:
        core, rows = _block_planes(shape, dtype, params, parse_memory(max_memory), runner.parallel,
                                   runner.executor is not None or runner.parallel > 1)
        level_max = level_max_for_shape(shape)
        level_min = min(1, level_max)
        with _CancelWatch(cancel) as watch:
            lo, hi = _range(image, rows, watch)
            level_ds = _level_map(runner, params, level_max, lo, hi - lo, core, watch)
            levels, coords = _native.pulling_scheme(level_ds, shape, level_max, level_min,
                                                    params.neighborhood_optimization, watch.flag)
            del level_ds
            watch.check()
            structure = APRStructure(shape, level_max, levels, coords, level_min)
            values = _sample(runner, structure, rows, watch)
    return structure, values


def _size_text(n: int) -> str:
    """``n`` bytes as MiB, rounded up (as bytes below 1 MiB)."""
    return f"{-(-n // 2**20):,} MiB" if n >= 2**20 else f"{n:,} bytes"


def _block_planes(shape: tuple, dtype: np.dtype, params: APRParameters, budget: int, parallel: int,
                  sends_results: bool):
    """Core planes per level-map block and planes per sampling block for ``parallel`` chains at a time."""
    plane = shape[1] * shape[2]
    fixed = -(-plane // 4) * -(-shape[0] // 2)  # the half-resolution level map (and its pulling tree share)
    lookahead, reach = _geometry(params)
    chain_out = min(_chain_planes(params), shape[0]) if sends_results else 0
    per_plane, chain_fixed = chain_bytes(lookahead, reach, dtype.itemsize, chain_out)
    share = (budget - 2 * fixed) // parallel
    core = (share // plane - chain_fixed) // per_plane
    core -= core % 2
    if core < _MIN_CORE:
        need = 2 * fixed + parallel * (chain_fixed + _MIN_CORE * per_plane) * plane
        raise ValueError(f"max_memory {_size_text(budget)} is too small for planes of {shape[1]}x{shape[2]}"
                         f"{f' and {parallel} workers' if parallel > 1 else ''}: blocks of {_MIN_CORE} planes "
                         f"need about {_size_text(need)}")
    rows = max(1, min(shape[0], share // ((2 * dtype.itemsize + 5) * plane)))
    return core, rows
