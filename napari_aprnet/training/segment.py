"""Use a trained segmentation network: the :class:`Segmenter` (images or APRs in, label images out).

An image (2D grey or colour, or a 3D grey stack) is segmented whole or tile
by tile (``tile``): each tile is cut out with ``halo`` pixels of context on
every side, converted (APR networks) and segmented, and only its core is
kept, so memory is bounded by the tile and the results of neighbouring
tiles meet without seams from the image border. Every tile is normalised
with the intensity statistics of the whole image, as in training. An APR is segmented on its
particles directly (a pixel network gets its reconstruction); ``region``
paints only a box of the result, and :meth:`Segmenter.particle_probabilities`
gives the per-particle output to paint other regions without running the
network again.

Instances are the connected components of the predicted foreground; a
network trained with a boundary class (three classes) has its object
interiors grown over the boundary band instead, which keeps touching
objects apart (:func:`napari_aprnet.training.seg_metrics.label_instances`).

Long runs report ``progress(done, total)`` after every tile and poll
``stop`` (a callable or ``threading.Event``) before every tile and during
APR formation; when it is set they raise
:class:`napari_aprnet._native.CancelledError`.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from napari_aprnet._native import CancelledError
from napari_aprnet.apr import APR, normalize_region
from napari_aprnet.data.spec import InputSpec
from napari_aprnet.nn import APRBatch
from napari_aprnet.training.predict import load_network
from napari_aprnet.training.tasks import SegmentationTask

__all__ = ["Segmenter", "Segmentation"]

Stop = Callable[[], bool] | threading.Event | None


@dataclass
class Segmentation:
    """The result of :meth:`Segmenter.segment`.

    Attributes
    ----------
    classes : ndarray of uint8
        The most probable class of every pixel (0 background).
    probabilities : ndarray of float32, shape (n_classes, *classes.shape)
        Class probabilities per pixel.
    labels : ndarray of int32
        Instances: 0 background, 1..n objects.
    class_names : tuple of str
    """

    classes: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    class_names: tuple

    @property
    def foreground(self) -> np.ndarray:
        """Probability of the foreground (any class but background), float32."""
        return 1 - self.probabilities[0]


def _should_stop(stop: Stop) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    return stop.is_set if hasattr(stop, "is_set") else stop


def _boxes(bounds, tile: int | None, halo: int, shape, align: int) -> list[tuple[tuple, tuple]]:
    """(core, outer) boxes, per axis ``(start, stop)``: tiles of side ``tile`` over ``bounds``, each outer
    box the core plus ``halo`` on every side, clipped to the image, its start rounded down to a multiple of
    ``align`` (so the network's poolings see the same pixel blocks as on the whole image)."""
    if tile is None:
        starts = [[a] for a, _ in bounds]
        tile = max(b - a for a, b in bounds)
    else:
        starts = [list(range(a, b, tile)) for a, b in bounds]
    boxes = []
    for corner in itertools.product(*starts):
        core = tuple((s, min(s + tile, b)) for s, (_, b) in zip(corner, bounds))
        outer = tuple((max(0, a - halo) // align * align, min(n, b + halo)) for (a, b), n in zip(core, shape))
        boxes.append((core, outer))
    return boxes


class Segmenter:
    """A trained segmentation network with its input specification and class names.

    Use :meth:`load` to read a checkpoint written by ``aprnet train --task segment``.

    Attributes
    ----------
    model : torch.nn.Module
        The network, in eval mode.
    spec : InputSpec
    class_names : tuple of str
        ``("background", "foreground")`` or ``("background", "interior", "boundary")``.
    metadata : dict
        Training metadata stored in the checkpoint.
    """

    def __init__(self, model: torch.nn.Module, spec: InputSpec, class_names: Sequence[str],
                 metadata: dict | None = None):
        self.model = model.eval()
        self.spec = spec
        self.class_names = tuple(class_names)
        self.metadata = dict(metadata or {})
        self._task = SegmentationTask(len(self.class_names))

    @classmethod
    def load(cls, path: str | Path) -> "Segmenter":
        """Load a segmentation checkpoint (``best.pt`` or ``checkpoint.pt``).

        Raises
        ------
        FileNotFoundError, CheckpointError, ValueError
        """
        return cls(*load_network(path, "segment"))

    @property
    def mode(self) -> str:
        """``"apr"`` or ``"pixels"``."""
        return self.spec.mode

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the images the network takes (2 or 3)."""
        return self.spec.ndim

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # ----- the network on one input -----
    def particle_probabilities(self, apr: APR, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Class probabilities of every particle of ``apr`` (APR networks), float32 ``(Np, n_classes)``.

        ``stats``: the intensity ``(mean, std)`` to normalise with (default:
        the APR's own, as in training; see :meth:`InputSpec.normalise`).
        """
        if self.mode != "apr":
            raise ValueError("particle probabilities need an APR network; this one takes pixels")
        if apr.ndim != self.ndim:
            raise ValueError(f"this network segments {self.ndim}D images, got a {apr.ndim}D APR")
        if apr.n_channels != self.spec.channels:
            raise ValueError(f"this network takes {self.spec.channels}-channel images, got an APR with "
                             f"{apr.n_channels} channels")
        values = self.spec.normalise(apr.values, apr.structure.pixel_counts, stats)
        batch = APRBatch.from_aprs([apr], values=[values], add_level_channel=self.spec.add_level_channel)
        with torch.no_grad():
            logits = self.model(batch)
        return torch.softmax(logits.double(), dim=1).float().numpy()

    def _image_probabilities(self, image: np.ndarray, stats, cancel: Callable[[], bool]) -> np.ndarray:
        """``(n_classes, *shape)`` probabilities of one prepared image (or tile, normalised with ``stats``)."""
        if self.mode == "apr":
            apr = self.spec.to_apr(image, cancel=cancel)
            probs = apr.reconstruct(values=self.particle_probabilities(apr, stats))
            return np.moveaxis(probs, -1, 0)
        x = torch.from_numpy(self.spec.pixel_input(image, stats)[None])
        with torch.no_grad():
            logits = self.model(x)
        return torch.softmax(logits.double(), dim=1)[0].float().numpy()

    # ----- whole images and APRs -----
    def predict_probabilities(self, data: np.ndarray | APR, *, region=None, tile: int | None = None,
                              halo: int = 32, progress: Callable[[int, int], None] | None = None,
                              stop: Stop = None) -> np.ndarray:
        """Class probabilities ``(n_classes, *region shape)`` of an image or APR (see :meth:`segment`)."""
        cancel = _should_stop(stop)
        if isinstance(data, APR) and self.mode == "apr":
            if tile is not None:
                raise ValueError("an APR is segmented whole (its particles are few); tile applies to images")
            probs = np.moveaxis(data.reconstruct(values=self.particle_probabilities(data), region=region), -1, 0)
            if progress is not None:
                progress(1, 1)
            return probs
        image = data.reconstruct() if isinstance(data, APR) else data
        image = self.spec.prepare(np.asarray(image), convert_channels=False)
        shape = image.shape[:self.ndim]
        if (tile is not None and tile < 16) or halo < 0:
            raise ValueError(f"tile must be >= 16 pixels and halo >= 0, got tile={tile}, halo={halo}")
        bounds = normalize_region(region, shape)
        out = np.empty((self.n_classes, *[b - a for a, b in bounds]), np.float32)
        boxes = _boxes(bounds, tile, halo, shape, 2 ** int(getattr(self.model, "config", {}).get("depth", 0)))
        # a part of the image is normalised like the whole image (training normalised whole images)
        whole = len(boxes) == 1 and boxes[0][1] == tuple((0, n) for n in shape)
        stats = None if whole else self.spec.statistics(image)
        for done, (core, outer) in enumerate(boxes):
            if cancel():
                raise CancelledError("segmentation was cancelled")
            probs = self._image_probabilities(image[tuple(slice(a, b) for a, b in outer)], stats, cancel)
            inner = tuple(slice(c0 - o0, c1 - o0) for (c0, c1), (o0, _) in zip(core, outer))
            target = tuple(slice(c0 - b0, c1 - b0) for (c0, c1), (b0, _) in zip(core, bounds))
            out[(slice(None), *target)] = probs[(slice(None), *inner)]
            if progress is not None:
                progress(done + 1, len(boxes))
        return out

    def segment(self, data: np.ndarray | APR, *, region=None, tile: int | None = None, halo: int = 32,
                progress: Callable[[int, int], None] | None = None, stop: Stop = None) -> Segmentation:
        """Segment an image or an APR.

        Parameters
        ----------
        data : ndarray or APR
            A 2D image ``(H, W)`` / ``(H, W, 3)`` or a 3D grey stack
            ``(D, H, W)``, as the network was trained on; integer images are
            scaled by their dtype's maximum. Or an APR.
        region : tuple of slices, optional
            Segment only this box (images: with ``halo`` pixels of context).
        tile : int, optional
            Images: segment tiles of this side (plus the halo) one at a time.
        halo : int
            Context pixels around each tile (or region).
        progress : callable, optional
            ``progress(done, total)`` after every tile.
        stop : callable or threading.Event, optional
            Polled before every tile and during APR formation.

        Returns
        -------
        Segmentation

        Raises
        ------
        napari_aprnet._native.CancelledError
            When ``stop`` was set.
        ValueError
            For an image the network cannot take (dimensions, channels).
        """
        probs = self.predict_probabilities(data, region=region, tile=tile, halo=halo, progress=progress, stop=stop)
        classes = probs.argmax(0).astype(np.uint8)
        return Segmentation(classes, probs, self._task.instances(classes), self.class_names)
