"""Kept for the old import path: the :class:`Classifier` lives in :mod:`napari_aprnet.training.predict`."""
from napari_aprnet.training.predict import *  # noqa: F401,F403
from napari_aprnet.training.predict import Classifier

__all__ = ["Classifier"]
