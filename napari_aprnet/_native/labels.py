"""The labels section of ``native/aprnet.h``: label images <-> one label per particle."""
from __future__ import annotations

import numpy as np

from napari_aprnet._native.common import cancel_ptr, check, ffi, lib, ptr
from napari_aprnet._native.reconstruct import particle_table, region_bounds

_IMAGE_CODES = {
    np.dtype(np.uint8): lib.APRNET_LABEL_U8,
    np.dtype(np.uint16): lib.APRNET_LABEL_U16,
    np.dtype(np.uint32): lib.APRNET_LABEL_U32,
    np.dtype(np.uint64): lib.APRNET_LABEL_U64,
}


def labels_majority(structure, image: np.ndarray, cancel_flag=None) -> np.ndarray:
    """Majority label of every particle's cell (ties: the larger label), int64 ``(Np,)``.

    Parameters
    ----------
    structure : APRStructure
    image : ndarray of uint8, uint16, uint32 or uint64, C-contiguous
        Label image of the structure's shape; uint64 labels must be below 2**63.
    cancel_flag : int32 ndarray, optional
        Set its first element to non-zero to cancel (raises ``CancelledError``).
    """
    if not isinstance(image, np.ndarray) or image.dtype not in _IMAGE_CODES:
        raise TypeError(f"the label image must be a uint8/16/32/64 numpy array, got "
                        f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.shape != tuple(structure.shape):
        raise ValueError(f"the label image has shape {image.shape}, the APR {tuple(structure.shape)}")
    if not image.flags.c_contiguous:
        raise ValueError("the label image must be C-contiguous")
    out = np.empty(structure.n_particles, dtype=np.int64)
    parts = particle_table(structure)
    status = lib.aprnet_labels_majority(parts.c, ffi.cast("void *", image.ctypes.data), _IMAGE_CODES[image.dtype],
                                        ptr(out, np.int64, "out", writable=True), cancel_ptr(cancel_flag))
    if status == lib.APRNET_ERR_ARG:
        raise ValueError("a label of the image is 2**63 or more; particle labels are int64")
    check(status, "aprnet_labels_majority")
    return out


def labels_paint(structure, labels: np.ndarray, region=None, cancel_flag=None) -> np.ndarray:
    """Label image (of ``region``) where every pixel holds its particle's label, exactly.

    Parameters
    ----------
    structure : APRStructure
    labels : ndarray (Np,) of a 1, 2, 4 or 8 byte integer dtype (or bool)
        One label per particle; the output has the same dtype.
    region : sequence of (start, stop) per axis, optional
        Half-open pixel ranges; the whole image if None.
    cancel_flag : int32 ndarray, optional
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu" or labels.dtype.itemsize not in (1, 2, 4, 8):
        raise TypeError(f"particle labels must be integers of 1, 2, 4 or 8 bytes, got {labels.dtype}")
    if labels.shape != (structure.n_particles,):
        raise ValueError(f"particle labels must have shape ({structure.n_particles},), got {labels.shape}")
    labels = np.ascontiguousarray(labels)
    reg, out_shape = region_bounds(structure.shape, region)
    out = np.empty(out_shape, dtype=labels.dtype)
    if out.size == 0:
        return out
    parts = particle_table(structure)
    src = ffi.cast("void *", labels.ctypes.data) if labels.size else ffi.NULL
    status = lib.aprnet_labels_paint(parts.c, src, labels.dtype.itemsize, ffi.cast("int64_t *", reg.ctypes.data),
                                     ffi.cast("void *", out.ctypes.data), cancel_ptr(cancel_flag))
    check(status, "aprnet_labels_paint")
    return out
