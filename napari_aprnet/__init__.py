"""napari-aprnet: deep learning on the Adaptive Particle Representation (APR)."""
from __future__ import annotations

__version__ = "0.1.0"

from napari_aprnet.structure import APRStructure
from napari_aprnet.apr import APR
from napari_aprnet.apr_file import APRFileError
from napari_aprnet.params import APRParameters

__all__ = ["APR", "APRFileError", "APRParameters", "APRStructure", "__version__"]
