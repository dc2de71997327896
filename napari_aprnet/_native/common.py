"""The common section of ``native/aprnet.h``: the cffi library, errors, pointers, threads.

Loads ``napari_aprnet._aprnet_cffi``, converts numpy arrays to C pointers
without copying where it can and turns C status codes into Python exceptions.
"""
from __future__ import annotations

import numpy as np

try:
    from napari_aprnet._aprnet_cffi import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "napari_aprnet's C library is not built. Install the package with "
        "`pip install .` (or `pip install -e .`) from the repository root; "
        "it compiles native/*.c with gcc and OpenMP."
    ) from exc



class NativeError(RuntimeError):
    """The C library reported a failure that is not the caller's fault."""


class CancelledError(RuntimeError):
    """A long C computation was cancelled through its cancel flag."""


_MESSAGES = {
    lib.APRNET_ERR_ARG: (ValueError, "invalid argument passed to the C library"),
    lib.APRNET_ERR_NOMEM: (MemoryError, "the C library could not allocate memory"),
    lib.APRNET_ERR_CANCELLED: (CancelledError, "the computation was cancelled"),
    lib.APRNET_ERR_INTERNAL: (NativeError, "internal error in the C library (please report it)"),
    lib.APRNET_ERR_BOUNDS: (IndexError, "an index passed to the C library is out of bounds"),
}


def check(status: int, what: str) -> None:
    """Raise the Python exception matching a C status code.

    Parameters
    ----------
    status : int
        Value returned by a C function.
    what : str
        Short description of the call, used in the message.
    """
    if status == lib.APRNET_OK:
        return
    exc_type, message = _MESSAGES.get(status, (NativeError, f"unknown C status {status}"))
    raise exc_type(f"{what}: {message}")


_CTYPES = {
    np.dtype(np.float32): "float *",
    np.dtype(np.float64): "double *",
    np.dtype(np.int32): "int32_t *",
    np.dtype(np.int64): "int64_t *",
    np.dtype(np.uint8): "uint8_t *",
    np.dtype(np.uint16): "uint16_t *",
    np.dtype(np.int8): "int8_t *",
}


def ptr(arr: np.ndarray, dtype, name: str = "array", writable: bool = False):
    """Return a C pointer to ``arr``'s memory, checking dtype and layout.

    The array must already be C-contiguous with the given dtype: wrappers
    convert their inputs first (``np.ascontiguousarray(x, dtype)``) so a copy
    is made only when needed. No copy is made here.
    """
    dt = np.dtype(dtype)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dt:
        raise TypeError(f"{name} must have dtype {dt}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if arr.size == 0:
        return ffi.NULL
    return ffi.cast(_CTYPES[dt], arr.ctypes.data)


def cancel_ptr(cancel_flag):
    """C pointer to a cancel flag (an int32 numpy array the caller sets to non-zero to cancel), or NULL."""
    if cancel_flag is None:
        return ffi.NULL
    if not (isinstance(cancel_flag, np.ndarray) and cancel_flag.dtype == np.int32 and cancel_flag.size >= 1):
        raise TypeError("cancel flag must be an int32 numpy array with at least one element")
    return ffi.cast("int32_t *", cancel_flag.ctypes.data)


def shape3(shape) -> tuple[int, int, int]:
    """(y, x) or (z, y, x) -> (nz, ny, nx)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (1,) + shape
    if len(shape) == 3:
        return shape
    raise ValueError(f"expected a 2D or 3D shape, got {shape}")


def version() -> str:
    """Version string of the compiled C library."""
    return ffi.string(lib.aprnet_version()).decode()


def max_threads() -> int:
    """Number of OpenMP threads the C library will use."""
    return int(lib.aprnet_max_threads())


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads used by the C library (n >= 1)."""
    if int(n) < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    lib.aprnet_set_num_threads(int(n))
