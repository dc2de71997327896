"""Reconstruction error measures (pure numpy): used by the sweep, the CLI and the convert widget."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ErrorTally", "apr_error_stats", "error_stats"]

#: :func:`apr_error_stats` reconstructs blocks of about this many values at a time.
BLOCK_VALUES = 1 << 22


class ErrorTally:
    """Running sums of the absolute error over parts of an image, for :func:`error_stats` by parts."""

    def __init__(self):
        self.n = 0
        self.abs_sum = self.sq_sum = self.max = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, image: np.ndarray, reconstruction: np.ndarray) -> None:
        """Count one part (``image`` and its reconstruction, same shape)."""
        image = np.asarray(image, dtype=np.float64)
        reconstruction = np.asarray(reconstruction, dtype=np.float64)
        if image.shape != reconstruction.shape:
            raise ValueError(f"shapes differ: image {image.shape}, reconstruction {reconstruction.shape}")
        if not image.size:
            return
        diff = np.abs(image - reconstruction)
        self.n += diff.size
        self.abs_sum += float(diff.sum())
        self.sq_sum += float(np.square(diff).sum())
        self.max = max(self.max, float(diff.max()))
        self.lo, self.hi = min(self.lo, float(image.min())), max(self.hi, float(image.max()))

    def result(self) -> tuple[float, float, float]:
        """``(mean_abs_error, max_abs_error, psnr_db)`` of the parts counted so far."""
        if not self.n:
            return 0.0, 0.0, float("inf")
        mse = self.sq_sum / self.n
        peak = self.hi - self.lo
        if mse == 0.0:
            psnr = float("inf")
        elif peak == 0.0:
            psnr = float("nan")
        else:
            psnr = 10.0 * math.log10(peak**2 / mse)
        return self.abs_sum / self.n, self.max, psnr


def error_stats(image: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float, float]:
    """Return ``(mean_abs_error, max_abs_error, psnr_db)`` of a reconstruction.

    The PSNR uses the image's intensity range as peak (inf when the error is 0,
    nan for a constant image).
    """
    image, reconstruction = np.asarray(image), np.asarray(reconstruction)
    if image.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: image {image.shape}, reconstruction {reconstruction.shape}")
    tally = ErrorTally()
    tally.add(image, reconstruction)
    return tally.result()


def apr_error_stats(apr, image, mode: str = "constant", tally: ErrorTally | None = None) -> tuple[float, float, float]:
    """:func:`error_stats` of ``apr``'s reconstruction, reconstructed in blocks along the first axis.

    Only a block of about :data:`BLOCK_VALUES` values of the reconstruction
    exists at a time. ``image`` has the APR's shape (channels last, as the
    reconstruction), any array-like read block by block (e.g. a memmap).
    Pass a ``tally`` to add this image to others (a stack).
    """
    tally = ErrorTally() if tally is None else tally
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    rows = max(1, BLOCK_VALUES // max(1, int(np.prod(image.shape[1:]))))
    for start in range(0, image.shape[0], rows):
        block = slice(start, min(start + rows, image.shape[0]))
        tally.add(np.asarray(image[block]), apr.reconstruct(mode=mode, region=(block,)))
    return tally.result()
