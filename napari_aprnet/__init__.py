"""napari-aprnet: deep learning on the Adaptive Particle Representation (APR)."""
from __future__ import annotations

__version__ = "0.1.0"

from napari_aprnet.structure import APRStructure

__all__ = ["APRStructure", "__version__"]
