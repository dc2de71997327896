"""napari-aprnet: deep learning on the Adaptive Particle Representation (APR)."""
from __future__ import annotations

from napari_aprnet._version import __version__
from napari_aprnet.apr import APR
from napari_aprnet.io.apr_h5 import APRFileError
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure


def __getattr__(name: str):
    # Classifier and Segmenter import torch: lazy imports (on first use), so that ``import napari_aprnet`` stays light
    if name == "Classifier":
        from napari_aprnet.training.predict import Classifier
        return Classifier
    if name == "Segmenter":
        from napari_aprnet.training.segment import Segmenter
        return Segmenter
    raise AttributeError(f"module 'napari_aprnet' has no attribute {name!r}")


__all__ = ["APR", "APRFileError", "APRParameters", "APRStructure", "Classifier", "Segmenter", "__version__"]
