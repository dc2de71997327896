"""Checkpoints: everything needed to use a trained network alone, or to resume training.

A checkpoint is a ``torch.save`` file holding only plain data (dicts, lists,
str, numbers, tensors), so it loads with ``torch.load(weights_only=True)``:

``format``, ``version``
    Identify the file (:data:`FORMAT`, :data:`VERSION`).
``model``
    The model config (:func:`napari_aprnet.models.model_from_config`).
``state_dict``
    Network weights and batch-norm statistics.
``class_names``
    Output class names, in output order.
``input``
    :class:`napari_aprnet.data.InputSpec` as a dict: mode (apr/pixels),
    input size, channels, APR parameters, normalisation.
``train``
    Training metadata: the run config, step, epoch, metrics, best validation loss.
``optimizer``
    Optimizer state (or None), for resuming.

Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_aprnet._atomic import atomic_write_bytes

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "napari-aprnet-checkpoint"
VERSION = 1
_REQUIRED = ("model", "state_dict", "class_names", "input", "train")


class CheckpointError(ValueError):
    """The file is not a readable napari-aprnet checkpoint."""


def save_checkpoint(path: str | Path, *, model_config: dict, state_dict: dict, class_names, input_spec: dict,
                    train: dict, optimizer: dict | None = None) -> Path:
    """Write a checkpoint atomically and return its path."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "model": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "class_names": [str(c) for c in class_names], "input": dict(input_spec), "train": dict(train),
        "optimizer": optimizer,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # serialised first, so a full disk gives a plain OSError (ENOSPC)
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getbuffer())
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is damaged, not a torch file, or not a napari-aprnet checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a napari-aprnet checkpoint (not a torch file, or damaged); "
                              f"give a checkpoint.pt or best.pt written by `aprnet train`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path} could not be read as a napari-aprnet checkpoint: it is damaged, or a "
                              f"torch file from another program holding more than plain data "
                              f"({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a napari-aprnet checkpoint "
                              f"(train one with `aprnet train`)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}; this napari-aprnet "
                              f"reads version {VERSION}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint entries {missing}")
    return data


