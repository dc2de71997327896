"""npe2 reader for ``.apr`` files (imports no napari)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from napari_aprnet._layer_data import apr_layer_data
from napari_aprnet.apr import APR

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
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        apr = APR.load(p)
        layers += apr_layer_data(apr, Path(p).stem, source=str(p))
    return layers
