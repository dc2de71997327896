"""Integer label images <-> one label per particle (segmentation targets and predictions).

- :func:`particle_labels`: every particle takes the label held by most pixels
  of its cell (the cell clipped to the image); among equally frequent labels
  the larger wins, so a cell half foreground, half background is foreground.
- :func:`paint_labels`: the inverse direction, per-particle labels painted to
  a pixel label image, or to a region of it, copied exactly (no float round trip).

Both run in C (OpenMP) through :mod:`napari_aprnet._native` and give the same
result for any number of threads. For an APR whose cells never straddle a
label boundary, ``paint_labels(s, particle_labels(s, L))`` equals ``L``.
"""
from __future__ import annotations

import numpy as np

from napari_aprnet import _native
from napari_aprnet.structure import APRStructure

__all__ = ["particle_labels", "paint_labels"]

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _unsigned_labels(label_image) -> np.ndarray:
    """The label image as a C-contiguous unsigned array (a view where possible), after checking its labels."""
    image = np.asarray(label_image)
    if image.dtype == np.bool_:
        return np.ascontiguousarray(image).view(np.uint8)
    if image.dtype.kind not in "iu":
        raise TypeError(f"a label image holds integers (or booleans), got dtype {image.dtype}; "
                        "convert it with .astype(int) if its values are whole numbers")
    image = np.ascontiguousarray(image)
    if image.dtype.kind == "i":
        if image.size and int(image.min()) < 0:
            raise ValueError(f"the label image has negative labels (minimum {int(image.min())}); labels must "
                             "be >= 0 (0 is background): shift or clip them first")
        image = image.view(_UNSIGNED[image.dtype.itemsize])
    elif image.dtype == np.uint64 and image.size and int(image.max()) >= 2 ** 63:
        raise ValueError(f"the label image holds a label >= 2**63 ({int(image.max())}); particle labels are int64")
    return image


def particle_labels(structure: APRStructure, label_image: np.ndarray, *, cancel_flag=None) -> np.ndarray:
    """One label per particle: the majority label of the pixels of its cell.

    Parameters
    ----------
    structure : APRStructure
    label_image : ndarray of integers or booleans
        Labels >= 0 with exactly the structure's shape (numpy axis order).
    cancel_flag : int32 ndarray, optional
        Set its first element to non-zero from another thread to cancel
        (raises :class:`napari_aprnet._native.CancelledError`).

    Returns
    -------
    ndarray of int64, shape (Np,)
        In particle order; ties between equally frequent labels go to the larger label.

    Raises
    ------
    ValueError
        When the shape differs from the structure's or a label is negative.
    TypeError
        When the image does not hold integers.
    """
    if not isinstance(structure, APRStructure):
        raise TypeError(f"structure must be an APRStructure, got {type(structure).__name__}")
    shape = np.shape(label_image)
    if shape != tuple(structure.shape):
        raise ValueError(f"the label image has shape {shape} but the APR has shape {tuple(structure.shape)}; "
                         "labels must cover the APR's image pixel for pixel")
    return _native.labels_majority(structure, _unsigned_labels(label_image), cancel_flag)


def paint_labels(structure: APRStructure, particle_labels: np.ndarray, region=None, *,
                 cancel_flag=None) -> np.ndarray:
    """Pixel label image of per-particle labels: every pixel takes its particle's label.

    Parameters
    ----------
    structure : APRStructure
    particle_labels : ndarray of integers or booleans, shape (Np,)
        One label per particle, in particle order.
    region : sequence of (start, stop) per axis, optional
        Half-open pixel ranges (as ``napari_aprnet._native.reconstruct``); the whole image if None.
    cancel_flag : int32 ndarray, optional
        See :func:`particle_labels`.

    Returns
    -------
    ndarray
        The region's shape, the dtype of ``particle_labels`` (values copied exactly).
    """
    if not isinstance(structure, APRStructure):
        raise TypeError(f"structure must be an APRStructure, got {type(structure).__name__}")
    labels = np.asarray(particle_labels)
    if labels.dtype.kind not in "biu":
        raise TypeError(f"particle labels must be integers (or booleans), got dtype {labels.dtype}")
    return _native.labels_paint(structure, labels, region, cancel_flag)
