"""Batch loaders: from image sources to batches of network inputs.

The network input is described by an :class:`~napari_aprnet.data.spec.InputSpec`
(stored in every checkpoint). :func:`make_loader` returns a torch ``DataLoader`` whose
worker processes read/generate images, augment them and convert them to
APRs in parallel (thesis 4.2.4: APRs are computed from the transformed
images); the main process only concatenates the batch.

For fixed datasets without augmentation, converted APRs are kept in an
:class:`APRCache` keyed by a hash of the image and the APR parameters, so
epochs after the first do not convert again (:mod:`napari_aprnet.data.cache`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from napari_aprnet import _native
from napari_aprnet.data.cache import APRCache, image_key
from napari_aprnet.data.spec import InputSpec
from napari_aprnet.data.transforms import augment

__all__ = ["InputSpec", "APRCache", "Batch", "make_loader", "stream_batches", "epoch_batches",
           "image_key", "estimate_normalisation", "class_targets"]


@dataclass
class Batch:
    """One loaded batch: network ``inputs``, the task's ``targets`` (classification: (B,) int64 class
    indices; ``len(targets)`` is the number of images), ``n_converted`` APR conversions."""

    inputs: Any
    targets: torch.Tensor
    n_converted: int = 0
    new: list = field(default_factory=list)  # (key, apr) pairs converted in a worker

    def __len__(self) -> int:
        return len(self.targets)


class _ItemDataset(torch.utils.data.Dataset):
    """Per-image work done in worker processes: read/generate, prepare, augment, convert, the item's target."""

    def __init__(self, source, spec: InputSpec, augment_seed: int | None, cache: APRCache | None,
                 item_target: Callable[[Any, Any], Any] | None):
        self.source, self.spec, self.augment_seed, self.cache = source, spec, augment_seed, cache
        self.item_target = item_target
        self.epoch = 0

    def __len__(self):
        return len(self.source) if hasattr(self.source, "__len__") else 2**62

    def __getitem__(self, i):
        image, label = self.source[i] if not hasattr(self.source, "image") else self.source.image(i)
        item, key, new = self._input(i, image)
        if self.item_target is not None:
            label = self.item_target(label, item)
        return item, label, key, new

    def _input(self, i, image):
        """(network input item, cache key, newly converted APR) of one image."""
        image = self.spec.prepare(image)
        if self.augment_seed is not None:
            image = augment(image, np.random.default_rng([self.augment_seed, self.epoch, int(i)]))
        if self.spec.mode == "pixels":
            return self.spec.pixel_input(image), None, None
        key = None
        if self.cache is not None and self.augment_seed is None:
            key = image_key(image, self.spec)
            apr = self.cache.get(key)
            if apr is not None:
                return apr, None, None
        apr = self.spec.to_apr(image)
        return apr, key, apr


def class_targets(labels: Sequence[int]) -> torch.Tensor:
    """Class-index targets ``(B,)`` int64 of a batch (classification)."""
    return torch.tensor([int(v) for v in labels], dtype=torch.int64)


def _collate(spec: InputSpec, targets: Callable[[Sequence], torch.Tensor]):
    def collate(items):
        inputs = spec.collate_inputs([it[0] for it in items])
        converted = sum(it[3] is not None for it in items)
        new = [(it[2], it[3]) for it in items if it[2] is not None]
        return Batch(inputs, targets([it[1] for it in items]), converted, new)
    return collate


def _worker_init(_):
    torch.set_num_threads(1)
    _native.set_num_threads(1)


def stream_batches(batch_size: int, start: int, stop: int) -> list[list[int]]:
    """Image indices of stream batches ``start .. stop - 1`` (batch ``s`` = images ``s*B .. s*B+B-1``)."""
    return [list(range(s * batch_size, (s + 1) * batch_size)) for s in range(start, stop)]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, skip: int = 0,
                  shuffle: bool = True) -> list[list[int]]:
    """Index batches of one epoch (a reproducible permutation of ``n``), minus the first ``skip`` batches."""
    order = np.random.default_rng([seed, 53, epoch]).permutation(n) if shuffle else np.arange(n)
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    return batches[skip:]


class _Loader:
    """Iterable over :class:`Batch` objects that feeds new APRs back into the cache (and moves them to ``device``)."""

    def __init__(self, loader, cache: APRCache | None, device=None):
        self.loader, self.cache, self.device = loader, cache, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.cache is not None:
                for key, apr in batch.new:
                    self.cache.put(key, apr)
            batch.new = []
            if self.device is not None:
                batch.inputs, batch.targets = batch.inputs.to(self.device), batch.targets.to(self.device)
            yield batch


def make_loader(source, spec: InputSpec, batches: Sequence[Sequence[int]], *, workers: int = 0,
                augment_seed: int | None = None, epoch: int = 0, cache: APRCache | None = None,
                targets: Callable[[Sequence], Any] = class_targets,
                item_target: Callable[[Any, Any], Any] | None = None, device=None) -> _Loader:
    """Loader over the given index ``batches`` of ``source``.

    Parameters
    ----------
    source : dataset or ShapeStream
        ``source[i] -> (image, label)`` (or ``source.image(i)`` for streams).
    spec : InputSpec
        How images become network inputs.
    batches : list of list of int
        Indices of each batch, in order (see :func:`stream_batches`, :func:`epoch_batches`).
    workers : int
        Worker processes doing generation, augmentation and APR conversion
        (0 = in this process).
    augment_seed : int, optional
        Apply :func:`augment` with a generator seeded by ``(augment_seed, epoch, index)``.
    epoch : int
        Epoch number (augmentation seeding).
    cache : APRCache, optional
        Cache of converted APRs (used only without augmentation).
    targets : callable
        The batch's targets from its items' labels (the task's; default: class indices).
    item_target : callable, optional
        ``item_target(label, item)``: an item's label made ready in the worker
        process, from the label and the network input item (an APR, or a
        ``(C, ...)`` pixel array), e.g. per-particle labels from a mask.
    device : torch.device, optional
        Move each batch's inputs and targets there (default: leave them on the CPU).
    """
    ds = _ItemDataset(source, spec, augment_seed, cache, item_target)
    ds.epoch = epoch
    kwargs: dict = {}
    if workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": 2}
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[list(b) for b in batches], num_workers=workers,
                                         collate_fn=_collate(spec, targets), **kwargs)
    return _Loader(loader, cache, device)


def estimate_normalisation(source, channels: int, size: int, n: int = 200, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of up to ``n`` random images of ``source`` (prepared like training images)."""
    spec = InputSpec(mode="pixels", size=size, channels=channels)
    idx = np.random.default_rng([seed, 71]).permutation(len(source))[:n]
    stack = np.stack([spec.prepare(source[int(i)][0]).reshape(-1, channels) for i in idx]).reshape(-1, channels)
    std = np.maximum(stack.std(axis=0), 1e-3)
    return stack.mean(axis=0).tolist(), std.tolist()

