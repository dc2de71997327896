"""napari-aprnet: deep learning on the Adaptive Particle Representation (APR)."""
from __future__ import annotations

__version__ = "0.1.0"

from napari_aprnet.structure import APRStructure
from napari_aprnet.apr import APR
from napari_aprnet.apr_file import APRFileError
from napari_aprnet.params import APRParameters


def __getattr__(name: str):
    # Classifier imports torch: loaded on first use, so that ``import napari_aprnet`` stays light
    if name == "Classifier":
        from napari_aprnet.classify import Classifier
        return Classifier
    raise AttributeError(f"module 'napari_aprnet' has no attribute {name!r}")


__all__ = ["APR", "APRFileError", "APRParameters", "APRStructure", "Classifier", "__version__"]
