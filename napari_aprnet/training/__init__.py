"""Training: :mod:`.config` (the run, parsed once), :mod:`.tasks` (targets, loss and metrics per task),
:mod:`.loop` (the step loop), :mod:`.evaluate`,
:mod:`.checkpoint` (files), :mod:`.predict` (the :class:`Classifier` for inference) and
:mod:`.data_setup` (the data of a run), :mod:`.distributed` and :mod:`.launcher` (training with several
processes). Imports torch.
"""
from napari_aprnet.training.config import CSV_FIELDS, EvalResult, TrainConfig, TrainEvent
from napari_aprnet.training.evaluate import evaluate, recalibrate_batchnorm
from napari_aprnet.training.loop import run_training, train

__all__ = ["TrainConfig", "TrainEvent", "EvalResult", "train", "evaluate", "recalibrate_batchnorm", "run_training",
           "CSV_FIELDS"]
