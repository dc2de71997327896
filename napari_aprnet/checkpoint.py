"""Kept for the old import path: checkpoint files live in :mod:`napari_aprnet.training.checkpoint`."""
from napari_aprnet.training.checkpoint import *  # noqa: F401,F403
from napari_aprnet.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
