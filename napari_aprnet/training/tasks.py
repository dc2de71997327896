"""What a network is trained to do: targets, loss and metrics per task.

A task turns the labels of a batch's items into the batch's ``targets``
(:func:`~napari_aprnet.data.make_loader` collates with :meth:`Task.targets`),
gives the training loss and the per-step score, and accumulates an
evaluation (:meth:`Task.tally`). The loop (:mod:`.loop`) and
:func:`~napari_aprnet.training.evaluate.evaluate` use only this interface.
Tasks: :class:`ClassificationTask` (one class per image) and
:class:`SegmentationTask` (a class per particle or pixel).

``item_target(label, item)`` runs in the loader's worker processes on each
item (segmentation: the per-particle labels of the item's APR from its mask);
``targets`` then collates the items' results in the main process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_aprnet.apr import APR
from napari_aprnet.data import class_targets
from napari_aprnet.labels import paint_labels, particle_labels
from napari_aprnet.training.config import EvalResult
from napari_aprnet.training.seg_metrics import SegmentationCounts, label_instances

__all__ = ["Task", "Tally", "ClassificationTask", "SegmentationTask", "SegmentationTargets", "SEGMENTATION_CLASSES",
           "mask_classes", "task_for"]

#: How particles count in the segmentation loss: by the pixels of their cells, or once each.
LOSS_WEIGHTINGS = ("pixels", "particles")

#: Class names of the segmentation targets, by number of classes.
SEGMENTATION_CLASSES = {2: ("background", "foreground"), 3: ("background", "interior", "boundary")}


class Tally(Protocol):
    """The running sums of one evaluation."""

    def add(self, outputs: torch.Tensor, targets) -> None: ...

    def result(self) -> EvalResult: ...


class Task(Protocol):
    """The interface of a training task."""

    def item_target(self, label, item):
        """One item's label made ready in a loader worker, from the label and the network input item."""

    def targets(self, labels: Sequence):
        """The batch's targets from its items' labels (as :meth:`item_target` returned them)."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean training loss of a batch."""

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The per-step score shown while training (classification: accuracy)."""

    def tally(self) -> Tally:
        """An empty evaluation."""


class _ClassificationTally:
    """Summed loss, correct predictions and the confusion matrix (rows: true class, columns: predicted)."""

    def __init__(self, n_classes: int):
        self.total, self.correct, self.loss_sum = 0, 0, 0.0
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += float(F.cross_entropy(outputs, targets, reduction="sum"))
        pred = outputs.argmax(1)
        self.correct += int((pred == targets).sum())
        self.total += len(targets)
        np.add.at(self.confusion, (targets.cpu().numpy(), pred.cpu().numpy()), 1)

    def result(self) -> EvalResult:
        if self.total == 0:
            raise ValueError("evaluation set is empty")
        return EvalResult(self.loss_sum / self.total, self.correct / self.total, self.confusion, self.total)


class ClassificationTask:
    """One class per image: logits ``(B, n_classes)``, cross entropy, accuracy and confusion matrix."""

    def __init__(self, n_classes: int):
        self.n_classes = int(n_classes)

    def item_target(self, label, item):
        return label

    def targets(self, labels: Sequence) -> torch.Tensor:
        return class_targets(labels)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float((outputs.detach().argmax(1) == targets).float().mean())

    def tally(self) -> _ClassificationTally:
        return _ClassificationTally(self.n_classes)


def mask_classes(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """The per-pixel classes (int64) a segmentation network learns from an instance mask.

    Two classes: background (0) and foreground (every label > 0). Three:
    background, interior and boundary (2), where boundary pixels are the
    pixels of an object with a face neighbour outside it (background or
    another object), so touching objects are parted by a boundary band.
    """
    mask = np.asarray(mask)
    classes = (mask > 0).astype(np.int64)
    if n_classes == 2:
        return classes
    if n_classes != 3:
        raise ValueError(f"segmentation has 2 classes (background, foreground) or 3 (with boundaries), got {n_classes}")
    for axis in range(mask.ndim):
        a = [slice(None)] * mask.ndim
        b = [slice(None)] * mask.ndim
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        differ = mask[tuple(a)] != mask[tuple(b)]
        classes[tuple(a)][differ & (mask[tuple(a)] > 0)] = 2
        classes[tuple(b)][differ & (mask[tuple(b)] > 0)] = 2
    return classes


@dataclass
class _SegmentationItem:
    """One image's target, made in a loader worker: per-particle (APR) or per-pixel classes, and the mask."""

    classes: np.ndarray
    mask: np.ndarray
    structure: Any = None


@dataclass
class SegmentationTargets:
    """The targets of a segmentation batch.

    Attributes
    ----------
    classes : Tensor of int64
        APR networks: ``(N_total,)``, the class of each particle (the batch's
        particles concatenated); pixel networks: ``(B, *spatial)``.
    weights : Tensor or None
        APR networks: ``(N_total,)`` float, the pixels of each particle's cell.
    masks : list of ndarray
        The ground-truth instance masks (pixel grid), for the evaluation.
    structures : list of APRStructure or None
        APR networks: the structures, to paint particle predictions to pixels.
    """

    classes: torch.Tensor
    weights: torch.Tensor | None
    masks: list
    structures: list | None = None

    def __len__(self) -> int:
        return len(self.masks)

    def to(self, device) -> "SegmentationTargets":
        """The targets with ``classes`` and ``weights`` on ``device`` (masks and structures stay on the host)."""
        weights = None if self.weights is None else self.weights.to(device)
        return SegmentationTargets(self.classes.to(device), weights, self.masks, self.structures)


class SegmentationTask:
    """A class per particle (APR networks, logits ``(N_total, n_classes)``) or per pixel (``(B, n_classes, ...)``).

    Targets come from instance masks (:func:`mask_classes`); a particle's
    class is the majority class of its cell's pixels
    (:func:`napari_aprnet.labels.particle_labels`).

    Loss: cross entropy per particle, averaged over the particles
    (``loss_weighting="particles"``, the default), or weighted by the
    number of pixels of the particle's cell (``"pixels"``; then the loss
    equals the mean per-pixel cross entropy of the painted prediction, the
    pixel networks' objective). Why each particle counts once: on sparse
    3D volumes the finest-level particles are most of the particles but a
    few per cent of the pixels, and the pixel-weighted loss stalls APR_UNet
    (IoU 0.46, every finest-level particle labelled foreground) where this
    one learns (0.95 after 60 steps); in 2D the two reach the same IoU
    (benchmarks/results/segmentation.md). Pixel networks have one pixel
    per "particle", so the choice does not change them. With
    ``dice_weight`` > 0 the loss adds ``dice_weight * (1 - soft Dice)`` of
    the foreground probability (with the same weights).
    Score: foreground IoU (weighted by pixels).
    :meth:`tally` measures on the pixel grid (predictions painted with
    :func:`napari_aprnet.labels.paint_labels`): foreground IoU and Dice,
    object F1 at IoU 0.5, pixel accuracy and the pixel confusion matrix.
    """

    def __init__(self, n_classes: int = 2, dice_weight: float = 0.0, loss_weighting: str = "particles"):
        if n_classes not in SEGMENTATION_CLASSES:
            raise ValueError(f"segmentation has 2 classes (background, foreground) or 3 (with boundaries), "
                             f"got {n_classes}")
        if not dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        self.n_classes, self.dice_weight = int(n_classes), float(dice_weight)
        self.loss_weighting = loss_weighting

    # ----- targets -----
    def item_target(self, mask, item) -> _SegmentationItem:
        """The target of one image from its mask and network input item (an APR or a ``(C, ...)`` array)."""
        mask = np.asarray(mask)
        shape = tuple(item.shape) if isinstance(item, APR) else tuple(item.shape[1:])
        if mask.shape != shape:
            raise ValueError(f"the mask has shape {mask.shape} but its image {shape}; a mask covers its image "
                             f"pixel for pixel")
        classes = mask_classes(mask, self.n_classes)
        if isinstance(item, APR):
            return _SegmentationItem(particle_labels(item.structure, classes), mask, item.structure)
        return _SegmentationItem(classes, mask)

    def targets(self, items: Sequence[_SegmentationItem]) -> SegmentationTargets:
        masks = [it.mask for it in items]
        if items[0].structure is None:
            return SegmentationTargets(torch.from_numpy(np.stack([it.classes for it in items])), None, masks)
        structures = [it.structure for it in items]
        classes = torch.from_numpy(np.concatenate([it.classes for it in items]).astype(np.int64))
        weights = torch.from_numpy(np.concatenate([s.pixel_counts for s in structures]).astype(np.float32))
        return SegmentationTargets(classes, weights, masks, structures)

    # ----- loss and score -----
    @staticmethod
    def _flat(outputs: torch.Tensor, targets: SegmentationTargets):
        """(logits (N, C), classes (N,), weights (N,) or None) over particles or pixels."""
        if targets.weights is None:
            return outputs.movedim(1, -1).reshape(-1, outputs.shape[1]), targets.classes.reshape(-1), None
        return outputs, targets.classes, targets.weights.to(outputs.dtype)

    def loss(self, outputs: torch.Tensor, targets: SegmentationTargets) -> torch.Tensor:
        logits, classes, weights = self._flat(outputs, targets)
        if self.loss_weighting == "particles":
            weights = None
        ce = F.cross_entropy(logits, classes, reduction="none")
        loss = ce.mean() if weights is None else (ce * weights).sum() / weights.sum()
        if self.dice_weight:
            fg = 1 - torch.softmax(logits, dim=1)[:, 0]
            truth = (classes > 0).to(fg.dtype)
            w = torch.ones_like(fg) if weights is None else weights
            dice = (2 * (w * fg * truth).sum() + 1) / ((w * fg).sum() + (w * truth).sum() + 1)
            loss = loss + self.dice_weight * (1 - dice)
        return loss

    def score(self, outputs: torch.Tensor, targets: SegmentationTargets) -> float:
        logits, classes, weights = self._flat(outputs.detach(), targets)
        pred, truth = logits.argmax(1) > 0, classes > 0
        w = torch.ones(len(pred), dtype=torch.float64, device=pred.device) if weights is None else weights.double()
        union = float(w[pred | truth].sum())
        return 1.0 if union == 0 else float(w[pred & truth].sum()) / union

    # ----- evaluation -----
    def pixel_classes(self, outputs: torch.Tensor, targets: SegmentationTargets) -> list[np.ndarray]:
        """The predicted class of every pixel of each image of the batch."""
        pred = outputs.detach().argmax(1).cpu()
        if targets.structures is None:
            return list(pred.numpy())
        offsets = np.cumsum([0] + [s.n_particles for s in targets.structures])
        return [paint_labels(s, pred[a:b].numpy()) for s, a, b in zip(targets.structures, offsets[:-1], offsets[1:])]

    def instances(self, classes: np.ndarray) -> np.ndarray:
        """Objects of a predicted class image: connected components of the foreground; with boundaries, each
        connected interior grown over its boundary band (:func:`label_instances`)."""
        return label_instances(classes > 0, classes == 1 if self.n_classes == 3 else None)

    def tally(self) -> "_SegmentationTally":
        return _SegmentationTally(self)


class _SegmentationTally:
    """Summed loss (per pixel), pixel confusion matrix and :class:`SegmentationCounts` of an evaluation."""

    def __init__(self, task: SegmentationTask):
        self.task, self.counts = task, SegmentationCounts()
        self.loss_sum, self.pixels, self.images = 0.0, 0, 0
        self.confusion = np.zeros((task.n_classes, task.n_classes), dtype=np.int64)

    def add(self, outputs: torch.Tensor, targets: SegmentationTargets) -> None:
        n_pixels = sum(m.size for m in targets.masks)
        self.loss_sum += float(self.task.loss(outputs, targets)) * n_pixels
        self.pixels += n_pixels
        self.images += len(targets)
        c = self.task.n_classes
        for pred, mask in zip(self.task.pixel_classes(outputs, targets), targets.masks):
            truth = mask_classes(mask, c)
            self.confusion += np.bincount((truth * c + pred).ravel(), minlength=c * c).reshape(c, c)
            self.counts.add(pred, mask, instances=self.task.instances(pred))

    def result(self) -> EvalResult:
        if self.images == 0:
            raise ValueError("evaluation set is empty")
        accuracy = float(np.trace(self.confusion)) / max(int(self.confusion.sum()), 1)
        return EvalResult(self.loss_sum / self.pixels, accuracy, self.confusion, self.images,
                          iou=self.counts.iou, dice=self.counts.dice, f1=self.counts.f1)


def task_for(name: str, n_classes: int, dice_weight: float = 0.0, loss_weighting: str = "particles"):
    """The task called ``name`` (``"classify"`` or ``"segment"``) for ``n_classes`` outputs."""
    if name == "classify":
        return ClassificationTask(n_classes)
    if name == "segment":
        return SegmentationTask(n_classes, dice_weight, loss_weighting)
    raise ValueError(f"unknown task {name!r}; choose 'classify' or 'segment'")
