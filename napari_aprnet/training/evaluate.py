"""Evaluation of a classifier on a loader, and BatchNorm re-estimation ("precise BN")."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from napari_aprnet.training.config import EvalResult

__all__ = ["evaluate", "recalibrate_batchnorm"]


def _forward(model, inputs):
    return model(inputs)


def evaluate(model: torch.nn.Module, loader, n_classes: int,
             stop: Callable[[], bool] | None = None) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every batch of ``loader`` (batches of :class:`Batch`)."""
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    try:
        with torch.no_grad():
            for batch in loader:
                logits = _forward(model, batch.inputs)
                loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
                pred = logits.argmax(1)
                correct += int((pred == batch.labels).sum())
                total += len(batch)
                np.add.at(confusion, (batch.labels.numpy(), pred.numpy()), 1)
                if stop is not None and stop():
                    break
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation set is empty")
    return EvalResult(loss_sum / total, correct / total, confusion, total)


def recalibrate_batchnorm(model: torch.nn.Module, loader) -> int:
    """Re-estimate BatchNorm running statistics as a plain average over ``loader`` ("precise BN").

    The running averages kept during training lag behind the changing weights;
    a model evaluated with them can score far below its training accuracy.
    This runs the batches forward in training mode without gradients, with
    cumulative averaging, and leaves every weight unchanged.

    Returns
    -------
    int
        The number of batches used (0 if the model has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    n = 0
    model.train()
    try:
        with torch.no_grad():
            for batch in loader:
                _forward(model, batch.inputs)
                n += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return n
