"""npe2 reader for ``.apr`` files (imports no napari)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from napari_aprnet._layer_data import apr_layer_data
from napari_aprnet.apr import APR
from napari_aprnet.io import detect_format
from napari_aprnet.io.libapr import read_libapr

__all__ = ["get_reader", "read_apr"]


def get_reader(path: str | list[str]) -> Callable | None:
    """Return :func:`read_apr` if every path is an existing ``.apr`` file, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(str(p).lower().endswith(".apr") for p in paths):
        return None
    return read_apr


def read_apr(path: str | list[str]) -> list[tuple]:
    """Read ``.apr`` file(s) into a reconstruction layer and a level-map layer each.

    Both our format and LibAPR / pyapr's are read; a LibAPR file with several
    particle datasets gives one reconstruction layer per dataset (and one
    level map). The APR parameters, particle count, computational ratio and
    source format (``"apr"`` or ``"libapr"``) are stored in each layer's
    ``metadata["aprnet"]``.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        stem = Path(p).stem
        if detect_format(p) != "libapr":
            layers += apr_layer_data(APR.load(p), stem, source=str(p), extra={"source_format": "apr"})
            continue
        contents = read_libapr(p)
        for k, (name, values) in enumerate(contents.particles.items()):
            extra = {"source_format": "libapr", "particle_set": name, "libapr_channel": contents.channel,
                     **contents.attributes}
            data = apr_layer_data(APR(contents.structure, values, contents.parameters),
                                  stem if name == "particles" else f"{stem} {name}", source=str(p), extra=extra)
            layers += data if k == 0 else data[:1]
    return layers
