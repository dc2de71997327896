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
``sha256``
    Hash of every other entry (tensors by dtype, shape and bytes); a
    checkpoint whose contents do not match it is refused as damaged.

Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_aprnet.io._atomic import atomic_write_bytes

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "resave_checkpoint"]

FORMAT = "napari-aprnet-checkpoint"
VERSION = 1
_REQUIRED = ("model", "state_dict", "class_names", "input", "train")


class CheckpointError(ValueError):
    """The file is not a readable napari-aprnet checkpoint."""


def _update(h, obj) -> None:
    """Feed a canonical encoding of plain data (dicts, lists, str, numbers, tensors) to hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _update(h, key)
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    else:
        text = repr(obj)
        h.update(f"{type(obj).__name__}:{len(text)}:{text}".encode())


def _digest(payload: dict) -> str:
    h = hashlib.sha256()
    _update(h, {k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def _write(path: Path, payload: dict) -> None:
    payload["sha256"] = _digest(payload)
    buf = io.BytesIO()  # serialised first, so a full disk gives a plain OSError (ENOSPC)
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getbuffer())


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
    _write(path, payload)
    return path


def _read(path: Path) -> dict:
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


def _check_finite(path: Path, data: dict) -> None:
    state = data["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of tensors")
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: network weight '{name}' contains NaN or Inf; the training run "
                                  f"diverged or the file is damaged; use an earlier checkpoint")
    spec = data["input"] if isinstance(data["input"], dict) else {}
    for key in ("mean", "std"):
        values = spec.get(key, [])
        try:
            ok = all(math.isfinite(float(v)) for v in values) and (key != "std" or all(float(v) > 0 for v in values))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: the input normalisation '{key}' is {values!r}; it must hold finite "
                                  f"numbers{' > 0' if key == 'std' else ''}")


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is damaged (its contents do not match its sha256), not a
        torch file, not a napari-aprnet checkpoint, has no hash (written by
        an older version: see :func:`resave_checkpoint`), or holds NaN/Inf
        weights or normalisation.
    """
    path = Path(path)
    data = _read(path)
    stored = data.get("sha256")
    if stored is None:
        raise CheckpointError(f"{path} has no integrity hash (written by an older napari-aprnet); if you trust "
                              f"it, re-save it once with: python -c \"from napari_aprnet.checkpoint import "
                              f"resave_checkpoint; resave_checkpoint('{path}')\"")
    if stored != _digest(data):
        raise CheckpointError(f"{path} is damaged: its contents do not match the sha256 stored in it; use "
                              f"another checkpoint (e.g. checkpoint.pt instead of best.pt) or retrain")
    _check_finite(path, data)
    return data


def resave_checkpoint(path: str | Path) -> Path:
    """Add the integrity hash to a trusted checkpoint written before hashes existed (in place, atomically)."""
    path = Path(path)
    data = _read(path)
    _check_finite(path, data)
    _write(path, data)
    return path
