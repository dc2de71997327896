"""Reconstruction error measures (pure numpy): used by the sweep, the CLI and the convert widget."""
from __future__ import annotations

import numpy as np

__all__ = ["error_stats"]


def error_stats(image: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float, float]:
    """Return ``(mean_abs_error, max_abs_error, psnr_db)`` of a reconstruction.

    The PSNR uses the image's intensity range as peak (inf when the error is 0,
    nan for a constant image).
    """
    image = np.asarray(image, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    if image.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: image {image.shape}, reconstruction {reconstruction.shape}")
    diff = np.abs(image - reconstruction)
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    peak = float(image.max() - image.min()) if image.size else 0.0
    if mse == 0.0:
        psnr = float("inf")
    elif peak == 0.0:
        psnr = float("nan")
    else:
        psnr = 10.0 * np.log10(peak**2 / mse)
    return (float(diff.mean()) if diff.size else 0.0, float(diff.max()) if diff.size else 0.0, psnr)
