"""Kept for the old import path: the training code lives in :mod:`napari_aprnet.training`
(config, loop, evaluate, checkpoint, predict)."""
from napari_aprnet.training import (
                                    CSV_FIELDS,
                                    EvalResult,
                                    TrainConfig,
                                    TrainEvent,
                                    evaluate,
                                    recalibrate_batchnorm,
                                    run_training,
                                    train,
)

__all__ = ["TrainConfig", "TrainEvent", "EvalResult", "train", "evaluate", "recalibrate_batchnorm", "run_training",
           "CSV_FIELDS"]
