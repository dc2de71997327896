"""The per-block work of :mod:`napari_aprnet.blockwise`, runnable in this process or in worker processes.

A task gets a *source* it reads ``source[e0:e1]`` from: the image itself, a
:class:`MemmapSource` (a numpy memmap reopened by path in the worker), or the
task's pixels (an in-memory array is sent chain by chain, block by block). Tasks return only
small arrays (a chain's uint8 level map, the values of a block's
particles), so the parent holds the particle structure and nothing of full
pixel size.
"""
from __future__ import annotations

import mmap
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from napari_aprnet import _native

_NATIVE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


@dataclass(frozen=True)
class MemmapSource:
    """A C-ordered numpy memmap by file name, so a worker process opens it instead of receiving its pixels."""

    filename: str
    dtype: str
    shape: tuple
    offset: int

    def __getitem__(self, key):
        return np.memmap(self.filename, np.dtype(self.dtype), "r", self.offset, self.shape)[key]


def portable(image, sends_blocks: bool):
    """What a task reads from: a :class:`MemmapSource`, ``None`` (send the block's pixels) or ``image``.

    ``sends_blocks`` is true when the tasks run in other processes.
    """
    if isinstance(image, np.memmap) and isinstance(image.base, mmap.mmap) and image.flags.c_contiguous:
        return MemmapSource(str(image.filename), image.dtype.str, tuple(image.shape), int(image.offset))
    if sends_blocks and isinstance(image, np.ndarray):
        return None
    return image  # TiffPages, zarr and dask arrays travel by reference (path, store, graph)


def read_block(image, z0: int, z1: int) -> np.ndarray:
    """``image[z0:z1]`` as a C-contiguous numpy array, its memmap pages dropped from this process."""
    block = np.ascontiguousarray(np.asarray(image[z0:z1]))
    release(image)
    return block


def release(image) -> None:
    """Drop the pages a numpy memmap has read from this process's resident memory (they stay in the page cache)."""
    mm = getattr(image, "_mmap", None)
    if isinstance(image, np.memmap) and isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def native_block(block: np.ndarray) -> np.ndarray:
    """The block in a dtype the C formation code reads (uint8, uint16, float32), like ``form_apr``."""
    return block if block.dtype in _NATIVE else np.ascontiguousarray(block, dtype=np.float32)


@dataclass(frozen=True)
class LevelJob:
    """What stage 1 + 2 of every block needs (napari_aprnet._blockwise_chain): spacing, spline, offset, thresholds."""

    spacing: tuple
    lambda_: float
    psf_pixels: int
    offset: float
    level_args: dict


def sample_task(source, z0: int, z1: int, level_max: int, levels: np.ndarray, coords: np.ndarray,
                tall: list, cancel_flag=None) -> tuple[np.ndarray, list]:
    """Particle values of the block ``source[z0:z1]``.

    ``levels``/``coords`` are the block's particles whose cells lie inside it
    (``coords`` in cells of the block: ``z0`` is a multiple of their cell
    height): their means, by the whole-volume C sampler. ``tall`` lists
    ``(k, yx)`` for cells of ``2**k`` pixels taller than the block: their pixel
    sums over the block (float64), to be added up across blocks.
    """
    block = native_block(read_block(source, z0, z1))
    values = _native.formation_sample(block, level_max, levels, coords, cancel_flag=cancel_flag)
    sums = []
    for k, yx in tall:
        step = 1 << k
        red = np.add.reduceat(block.sum(axis=0, dtype=np.float64), np.arange(0, block.shape[1], step), axis=0)
        red = np.add.reduceat(red, np.arange(0, block.shape[2], step), axis=1)
        sums.append(red[yx[:, 0], yx[:, 1]])
    return values, sums


def run_tasks(executor: Executor | None, fn: Callable, args: Iterable[tuple], in_flight: int,
              on_result: Callable[[Any, Any], None], check: Callable[[], None], cancel_flag=None) -> None:
    """Run ``fn(*a)`` for each ``(key, a)`` of ``args`` here or on ``executor``, calling ``on_result(key, result)``.

    At most ``in_flight`` tasks wait at a time (each may hold a block of
    pixels); ``check`` runs between results and may raise to cancel (pending
    tasks are then cancelled).
    """
    if executor is None:
        for key, a in args:
            on_result(key, fn(*a, cancel_flag=cancel_flag))
            check()
        return
    pending: deque = deque()
    try:
        for key, a in args:
            pending.append((key, executor.submit(fn, *a)))
            while len(pending) >= in_flight:
                key0, fut = pending.popleft()
                on_result(key0, fut.result())
                check()
        while pending:
            key0, fut = pending.popleft()
            on_result(key0, fut.result())
            check()
    finally:
        for _, fut in pending:
            fut.cancel()
