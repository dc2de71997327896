"""What a network is trained to do: targets, loss and metrics per task.

A task turns the labels of a batch's items into the batch's ``targets``
(:func:`~napari_aprnet.data.make_loader` collates with :meth:`Task.targets`),
gives the training loss and the per-step score, and accumulates an
evaluation (:meth:`Task.tally`). The loop (:mod:`.loop`) and
:func:`~napari_aprnet.training.evaluate.evaluate` use only this interface.
Classification is the one task today; segmentation adds a class here
(targets: masks; loss: per-particle or per-pixel cross entropy).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_aprnet.data import class_targets
from napari_aprnet.training.config import EvalResult

__all__ = ["Task", "Tally", "ClassificationTask"]


class Tally(Protocol):
    """The running sums of one evaluation."""

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None: ...

    def result(self) -> EvalResult: ...


class Task(Protocol):
    """The interface of a training task."""

    def targets(self, labels: Sequence) -> torch.Tensor:
        """The batch's targets from its items' labels."""

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

    def targets(self, labels: Sequence) -> torch.Tensor:
        return class_targets(labels)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float((outputs.detach().argmax(1) == targets).float().mean())

    def tally(self) -> _ClassificationTally:
        return _ClassificationTally(self.n_classes)
