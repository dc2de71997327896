"""Stage 1 + 2 of a blockwise conversion on a run of z-planes (a *chain*), block after block with carried state.

The smoothing spline is separable: its y and x passes work plane by plane and
only its z pass (a causal and an anti-causal recursion) links the planes. The
blocks of a chain run in order:

* the causal z recursion continues from the block before (two planes of
  state), so it is exact;
* the anti-causal one starts at a mirror boundary ``lookahead`` planes after
  the block (the spline's own truncation length: the error at the block is
  below 1e-4 of the intensity), and exactly at the end of the volume;
* the gradient needs one smoothed plane on each side: a block keeps its last
  two for the next one, and reads the planes after it from its look-ahead;
* the local intensity scale needs ``reach`` half-resolution planes on each
  side (inverse B-spline and box means): the level map of a block's last
  ``reach`` half-planes is finished with the next block, from a ring of
  half-resolution planes.

Each pixel is smoothed once (plus the look-ahead). A chain that does not
start at plane 0 starts ``warmup`` planes early from a mirror boundary, as an
independent block would; chains are independent (worker processes, executors).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_aprnet import _native
from napari_aprnet._blockwise_tasks import LevelJob, native_block, read_block

_CHUNK = 4  # planes read and smoothed along y and x at a time


@dataclass(frozen=True)
class ChainJob:
    """What every chain of a conversion shares: the volume's shape and the block geometry."""

    level: LevelJob
    shape: tuple
    core: int       # planes per block (even)
    lookahead: int  # planes after a block for its anti-causal z recursion
    reach: int      # half-resolution planes the local intensity scale reads on each side


def plan_blocks(s0: int, c1: int, job: ChainJob) -> list[tuple[int, int, int]]:
    """``(z0, z1, lookahead)`` of the blocks from plane ``s0`` until the level map of planes ``< c1`` is finished.

    A block whose look-ahead would reach the end of the volume takes the rest
    of the volume instead (then it is exact at the end).
    """
    nz = job.shape[0]
    half_end = -(-c1 // 2)
    blocks, z0 = [], s0
    while True:
        z1 = min(z0 + job.core, nz)
        if z1 + job.lookahead >= nz:
            z1 = nz
        blocks.append((z0, z1, min(job.lookahead, nz - z1)))
        if (-(-z1 // 2) if z1 == nz else z1 // 2 - job.reach) >= half_end:
            return blocks
        z0 = z1


def chain_bytes(lookahead: int, reach: int, itemsize: int, out_planes: int) -> tuple[int, int]:
    """``(per_core_plane, fixed)``: bytes of a chain's arrays in units of ``ny * nx``.

    Per plane of a block: its float32 work plane (4) and the half-resolution
    ring's gradient, smoothed value, their copy and the scale (4 x 4 / 8).
    Fixed: the look-ahead and two carried planes, the causal state, the ring's
    extra half-planes, the planes being read, and ``out_planes`` of level map
    returned to another process.
    """
    fixed = 4 * (lookahead + 2) + 8 + 2 * (4 * reach + 4) + _CHUNK * (2 * itemsize + 4)
    return 6, fixed + out_planes // 8 + 1


class _HalfRing:
    """Half-resolution gradient and smoothed planes ``q0 ..`` of a chain, until their level map is finished."""

    def __init__(self, q0: int, capacity: int, ny: int, nx: int):
        self.grad = np.empty((capacity, ny, nx), np.float32)
        self.smooth = np.empty((capacity, ny, nx), np.float32)
        self.q0, self.filled = q0, 0

    def add_block(self, smoothed: np.ndarray, skip: int, n_half: int, spacing, cancel_flag) -> None:
        """Append the ``n_half`` half-planes after the first ``skip`` of the gradient of ``smoothed``."""
        total = -(-smoothed.shape[0] // 2)
        a = self.filled - skip
        kept = (self.grad[a: self.filled].copy(), self.smooth[a: self.filled].copy())  # overwritten below
        _native.formation_grad_ds(smoothed, spacing, (self.grad[a: a + total], self.smooth[a: a + total]),
                                  cancel_flag)
        self.grad[a: self.filled], self.smooth[a: self.filled] = kept
        self.filled += n_half

    def levels(self, lo: int, hi: int, job: LevelJob, cancel_flag) -> np.ndarray:
        """The level map of half-planes ``lo:hi`` (inside the ring, ``reach`` planes from its ends or the volume's)."""
        smooth = self.smooth[: self.filled].copy()  # the inverse B-spline works in place
        sigma = _native.formation_scale(smooth, job.lambda_, job.psf_pixels, cancel_flag)
        a, b = lo - self.q0, hi - self.q0
        return _native.formation_levels(self.grad[a:b], sigma[a:b], smooth[a:b], cancel_flag=cancel_flag,
                                        **job.level_args)

    def drop_before(self, q: int) -> None:
        """Forget the half-planes before ``q``."""
        k = q - self.q0
        self.grad[: self.filled - k] = self.grad[k: self.filled]
        self.smooth[: self.filled - k] = self.smooth[k: self.filled]
        self.q0, self.filled = q, self.filled - k


def _smooth_xy(source, e: int, planes: np.ndarray, job: LevelJob, cancel_flag) -> None:
    """``planes`` = ``source[e:e + len(planes)]`` minus the offset, smoothed along y and x, a few planes at a time."""
    for k in range(0, len(planes), _CHUNK):
        m = min(_CHUNK, len(planes) - k)
        block = native_block(read_block(source, e + k, e + k + m))
        if job.offset != 0:
            block = np.subtract(block, block.dtype.type(job.offset), dtype=block.dtype)
        _native.formation_spline_xy(block, job.lambda_, planes[k: k + m], cancel_flag)


def chain_task(source, e0: int, e1: int, s0: int, c0: int, c1: int, job: ChainJob, out=None,
               cancel_flag=None) -> np.ndarray:
    """The uint8 half-resolution level map of planes ``c0:c1``; ``source[e0:e1]`` holds planes ``s0:``.

    ``s0`` is 0 or ``c0`` minus the warm-up; ``out`` (optional) is the array
    to write the result into.
    """
    nz, ny, nx = job.shape
    lv, reach = job.level, job.reach
    blocks = plan_blocks(s0, c1, job)
    h0, h1 = c0 // 2, -(-c1 // 2)
    out = np.empty((h1 - h0, -(-ny // 2), -(-nx // 2)), np.uint8) if out is None else out
    work = np.empty((2 + max(z1 - z0 + la for z0, z1, la in blocks), ny, nx), np.float32)
    state = np.empty((2, ny, nx), np.float32)  # causal z-state: read, then rewritten, column by column
    ring = _HalfRing(s0 // 2, 2 * reach + 2 + -(-max(z1 - z0 for z0, z1, _ in blocks) // 2),
                     -(-ny // 2), -(-nx // 2))
    done = s0 // 2  # half-planes before this have their levels
    for i, (z0, z1, la) in enumerate(blocks):
        off = 2 if i else 0  # work[0:2]: the last two smoothed planes of the block before
        planes = work[off: off + z1 - z0 + la]
        _smooth_xy(source, z0 - s0 + e0, planes, lv, cancel_flag)
        if lv.lambda_ > 0 and len(planes) >= 2:
            _native.formation_spline_z(planes, lv.lambda_, state if i else None, z1 - z0,
                                       state if z1 < nz else None, cancel_flag)
        ring.add_block(work[: off + z1 - z0 + min(2, la)], off // 2, -(-z1 // 2) - z0 // 2, lv.spacing, cancel_flag)
        finished = -(-z1 // 2) if z1 == nz else z1 // 2 - reach
        lo, hi = max(done, h0), min(finished, h1)
        if hi > lo:
            out[lo - h0: hi - h0] = ring.levels(lo, hi, lv, cancel_flag)
        done = max(done, finished)
        if z1 < nz:
            ring.drop_before(max(ring.q0, done - reach))
            work[0:2] = work[off + z1 - z0 - 2: off + z1 - z0]
    return out
