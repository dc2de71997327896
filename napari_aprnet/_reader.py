"""npe2 reader for ``.apr`` files (imports no napari)."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["get_reader", "read_apr"]


def get_reader(path: str | list[str]) -> Callable | None:
    """Return :func:`read_apr` if every path is an existing ``.apr`` file, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(str(p).lower().endswith(".apr") for p in paths):
        return None
    return read_apr


def read_apr(path: str | list[str]) -> list[tuple]:
    """Read ``.apr`` file(s) into a reconstruction layer and a level-map layer each.

    The APR parameters, particle count and computational ratio are stored in
    each layer's ``metadata["aprnet"]``.
    """
    from napari_aprnet._layer_data import apr_layer_data
    from napari_aprnet.apr import APR

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        try:
            apr = APR.load(p)
        except Exception as exc:
            if _is_libapr(p):
                message = (f"{Path(p).name} is a LibAPR/pyapr .apr file; napari-aprnet reads only the .apr "
                           "files it writes for now (a LibAPR reader is being added). Reconstruct it to a TIFF "
                           "with pyapr and open that, or convert the image again in napari-aprnet.")
                warnings.warn(message, stacklevel=2)  # napari shows warnings as notifications
                raise ValueError(message) from exc
            raise

        layers += apr_layer_data(apr, Path(p).stem, source=str(p))
    return layers


def _is_libapr(path) -> bool:
    """True for an HDF5 file laid out as LibAPR/pyapr writes it (a "ParticleRepr" group)."""
    try:
        import h5py  # lazy: optional at import time, as in io

        with h5py.File(path, "r") as f:
            return "ParticleRepr" in f
    except Exception:  # not HDF5 at all
        return False
