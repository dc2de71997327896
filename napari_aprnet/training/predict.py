"""Use a trained network: load a checkpoint, classify images, look at feature maps.

Images of another size are resized (bilinear) to the network's input size,
as during training; integer images are scaled by their dtype's maximum. A
wrong number of channels (colour image for a grey network or the reverse) is
an error, since silently converting would hide a wrong input.

Bundled models ship inside the package (``napari_aprnet/bundled/``) and are
named ``bundled:<name>`` wherever a checkpoint path is taken:
``Classifier.load("bundled:shapes")`` or ``Classifier.bundled("shapes")``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from napari_aprnet.bundled import bundled_checkpoint, resolve_checkpoint
from napari_aprnet.data.spec import InputSpec
from napari_aprnet.models import ClassifierNet, model_from_config
from napari_aprnet.training.checkpoint import CheckpointError, load_checkpoint

__all__ = ["Classifier", "load_network", "checkpoint_task"]
_MAX_INPUT_SIZE = 16384  # side of the square network input; larger sizes come from damaged files
_USE = {"classify": "Classifier", "segment": "Segmenter"}


def checkpoint_task(data: dict) -> str:
    """The task a checkpoint's network was trained for (``"classify"`` for checkpoints from before tasks)."""
    config = data.get("train", {}).get("config", {}) if isinstance(data.get("train"), dict) else {}
    return str(config.get("task", "classify")) if isinstance(config, dict) else "classify"


def load_network(path: str | Path, task: str) -> tuple[torch.nn.Module, InputSpec, list, dict]:
    """Network (weights loaded), input spec, class names and training metadata of a checkpoint.

    Raises
    ------
    FileNotFoundError, CheckpointError, ValueError
        ``ValueError`` when the checkpoint is for another task than ``task``.
    """
    path = resolve_checkpoint(path)
    data = load_checkpoint(path)
    stored = checkpoint_task(data)
    if stored != task:
        raise ValueError(f"{path} holds a network trained to {stored}, not to {task}; load it with "
                         f"{_USE.get(stored, 'the matching class')}")
    try:
        model = model_from_config(data["model"])
        model.load_state_dict(data["state_dict"])
        spec = InputSpec.from_dict(data["input"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{path}: the checkpoint does not describe a usable network: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not 8 <= spec.size <= _MAX_INPUT_SIZE:
        raise CheckpointError(f"{path}: input size {spec.size} is outside 8..{_MAX_INPUT_SIZE}; the "
                              f"checkpoint is damaged")
    if len(data["class_names"]) != model.config["n_classes"]:
        raise CheckpointError(f"{path}: {len(data['class_names'])} class names for "
                              f"{model.config['n_classes']} outputs")
    return model, spec, data["class_names"], data["train"]


class Classifier:
    """A trained network with its input specification and class names.

    Use :meth:`load` to read a checkpoint written by training.

    Attributes
    ----------
    model : ClassifierNet
        The network, in eval mode.
    spec : InputSpec
        How images are turned into network input.
    class_names : tuple of str
    metadata : dict
        Training metadata stored in the checkpoint (config, step, metrics).
    """

    def __init__(self, model: ClassifierNet, spec: InputSpec, class_names: Sequence[str], metadata: dict | None = None):
        if model.mode != spec.mode:
            raise ValueError(f"model takes {model.mode} input but the input specification says {spec.mode}")
        self.model = model.eval()
        self.spec = spec
        self.class_names = tuple(class_names)
        self.metadata = dict(metadata or {})

    @classmethod
    def load(cls, path: str | Path) -> "Classifier":
        """Load a checkpoint (``best.pt``, ``checkpoint.pt`` or ``bundled:<name>``).

        Raises
        ------
        FileNotFoundError, CheckpointError, ValueError
        """
        return cls(*load_network(path, "classify"))

    @classmethod
    def bundled(cls, name: str = "shapes") -> "Classifier":
        """Load a model shipped with the package (see :data:`BUNDLED_MODELS`)."""
        return cls.load(bundled_checkpoint(name))

    # ----- properties ----------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Side of the square images the network was trained on."""
        return self.spec.size

    @property
    def mode(self) -> str:
        """``"apr"`` or ``"pixels"``."""
        return self.spec.mode

    @property
    def channels(self) -> int:
        """Image channels expected: 1 (grey) or 3 (RGB)."""
        return self.spec.channels

    def layer_names(self) -> list[str]:
        """Names of the layers whose output :meth:`feature_maps` can return."""
        return self.model.layer_names()

    # ----- inference -------------------------------------------------------------
    def _as_list(self, images) -> list[np.ndarray]:
        if isinstance(images, np.ndarray):
            grey_stack = self.channels == 1 and images.ndim == 3 and images.shape[-1] not in (1, 2, 3, 4)
            if images.ndim == 4 or grey_stack:
                return list(images)
            return [images]
        images = list(images)
        if not images:
            raise ValueError("no images given")
        return [np.asarray(im) for im in images]

    def _input(self, images: list[np.ndarray]):
        try:
            return self.spec.make_input(images, convert_channels=False)
        except ValueError as exc:
            raise ValueError(f"cannot classify: {exc}") from exc

    def predict_proba(self, images, batch_size: int = 16) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        images : ndarray or sequence of ndarray
            One image ``(H, W)`` / ``(H, W, 3)``, a stack ``(N, H, W)`` /
            ``(N, H, W, 3)``, or a list of images of any sizes.
        batch_size : int
            Images per forward pass.

        Returns
        -------
        ndarray, shape (n_images, n_classes)
        """
        images = self._as_list(images)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                logits = self.model(self._input(images[i:i + batch_size]))
                out.append(torch.softmax(logits.double(), dim=1).numpy())
        return np.concatenate(out)

    def predict(self, images) -> list[str]:
        """Most probable class name of each image."""
        return [self.class_names[i] for i in self.predict_proba(images).argmax(1)]

    def feature_maps(self, image: np.ndarray, layer: int | str):
        """Output of one layer for one image.

        Returns
        -------
        APR nets: ``(structure, features)`` with the layer's APRStructure and
        features ``(Np, C)`` (numpy float32). Pixel nets: ``(None, features)``
        with features ``(C, H, W)``.
        """
        x = self._input([np.asarray(image)])
        with torch.no_grad():
            y = self.model.features(x, layer)
        if self.mode == "apr":
            return y.structures[0], y.features.numpy().astype(np.float32, copy=False)
        return None, y[0].numpy()
