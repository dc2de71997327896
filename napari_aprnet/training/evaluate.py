"""Evaluation of a network on a loader (any task), and BatchNorm re-estimation ("precise BN")."""
from __future__ import annotations

from typing import Callable

import torch

from napari_aprnet.training.config import EvalResult
from napari_aprnet.training.tasks import ClassificationTask, Task

__all__ = ["evaluate", "recalibrate_batchnorm"]


def _forward(model, inputs):
    return model(inputs)


def evaluate(model: torch.nn.Module, loader, n_classes: int,
             stop: Callable[[], bool] | None = None, *, task: Task | None = None) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every batch of ``loader`` (batches of :class:`Batch`).

    ``task`` gives the metrics (default: classification into ``n_classes`` classes).
    """
    tally = (task or ClassificationTask(n_classes)).tally()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                tally.add(_forward(model, batch.inputs), batch.targets)
                if stop is not None and stop():
                    break
    finally:
        model.train(was_training)
    return tally.result()


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
