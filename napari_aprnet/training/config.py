"""The configuration and the result records of a training run.

:class:`TrainConfig` (one run), :class:`TrainEvent` (what :func:`~napari_aprnet.training.loop.train`
yields) and :class:`EvalResult`; ``validate`` parses the model name once into
``model_spec`` (a :class:`~napari_aprnet.models.ModelSpec`), which the run carries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from napari_aprnet.models import ModelSpec, parse_model_name

CSV_FIELDS = ("phase", "step", "epoch", "loss", "accuracy", "lr", "elapsed")
SHAPES_MEAN, SHAPES_STD = 0.5, 0.2887  # uniform [0, 1] intensities


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoints).

    Parameters
    ----------
    model : str
        Network name, e.g. ``"APR_B"``, ``"Pix_A-expanded"`` (see :mod:`napari_aprnet.models`).
    data : str
        ``"shapes"`` (synthetic) or a folder with one sub-folder per class
        (optionally ``train/``, ``val/``, ``test/`` sub-folders, each with class folders).
    steps : int, optional
        Streaming mode (shapes): number of batches. In fixed mode: an upper limit.
    epochs : int, optional
        Fixed-dataset mode: passes over the training set.
    batch_size, lr : int, float
        Mini-batch size and Adam learning rate (thesis: 36, 5e-4).
    weight_decay, dropout, spatial_dropout : float, optional
        None = the mode's thesis default (streaming 0, 0, 0; fixed 1e-4, 0.5, 0.3).
    rel_error : float
        APR relative error threshold E.
    apr_params : dict, optional
        Other APR formation parameters (``APRParameters.to_dict()``).
    size : int
        Network input side; images are resized to it.
    image_size : int, optional
        Side of generated shape images (default ``size``); e.g. 256 with
        ``size=64`` trains on downsampled images (Table 4.2).
    shape_params : dict, optional
        :class:`ShapeParams` as a dict.
    classes : list of str, optional
        Shapes: train on a subset of the six classes.
    n_train, n_val, n_test : int
        Fixed shapes datasets: images per class.
    val_fraction : float
        Folders without ``val/``: fraction held out for validation.
    level_channel : bool, optional
        APR nets: add the particle level as input channel (default: only for ``APR_C``).
    augment : bool
        Thesis 4.2.4 augmentation of training images.
    seed : int
        Seed of data, initialisation and shuffling.
    workers : int
        Data-loading worker processes (image generation, augmentation, APR conversion).
    eval_every : int
        Fixed mode: validate every this many steps (0 = at the end of each epoch).
    checkpoint_every : int
        Save ``checkpoint.pt`` every this many steps (and at the end).
    last_window : int
        Streaming mode: batches in the final error statistics.
    bn_batches : int
        Batches used to re-estimate BatchNorm statistics before a model is
        evaluated or saved for use (see :func:`recalibrate_batchnorm`); 0 = off.
    width : float
        Channel multiplier of the network (1 = thesis size).
    normalisation : {"image", "dataset"}
        Input normalisation (see :class:`napari_aprnet.data.InputSpec`):
        per-image standardisation (default) or one mean/std for the dataset.
    model_spec : ModelSpec, optional
        ``model`` parsed; set by :meth:`validate` (not stored: ``to_dict`` leaves it out).
    """

    model: str = "APR_B"
    data: str = "shapes"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 36
    lr: float = 5e-4
    weight_decay: float | None = None
    dropout: float | None = None
    spatial_dropout: float | None = None
    rel_error: float = 0.1
    apr_params: dict | None = None
    size: int = 256
    image_size: int | None = None
    shape_params: dict | None = None
    n_train: int = 200
    n_val: int = 100
    n_test: int = 100
    val_fraction: float = 0.1
    classes: list | None = None
    level_channel: bool | None = None
    augment: bool = False
    seed: int = 0
    workers: int = 0
    eval_every: int = 0
    checkpoint_every: int = 200
    last_window: int = 100
    bn_batches: int = 20
    width: float = 1.0
    normalisation: str = "image"
    model_spec: ModelSpec | None = field(default=None, compare=False, repr=False)

    @property
    def streaming(self) -> bool:
        """True for streaming mode (synthetic shapes, ``steps`` without ``epochs``)."""
        return self.data == "shapes" and self.epochs is None

    def validate(self) -> "TrainConfig":
        """Check values, parse the model name and fill the mode defaults; returns a new config."""
        model_spec = parse_model_name(self.model)
        if self.steps is None and self.epochs is None:
            raise ValueError("give the training length: steps (streaming) or epochs (fixed datasets)")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.data != "shapes" and self.epochs is None:
            raise ValueError("folder datasets are trained for a number of epochs; give epochs")
        if self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        fixed = not self.streaming
        return replace(
            self,
            model_spec=model_spec,
            weight_decay=(1e-4 if fixed else 0.0) if self.weight_decay is None else float(self.weight_decay),
            dropout=(0.5 if fixed else 0.0) if self.dropout is None else float(self.dropout),
            spatial_dropout=(0.3 if fixed else 0.0) if self.spatial_dropout is None else float(self.spatial_dropout),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["model_spec"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)} - {"model_spec"}
        # runs stored before per-image normalisation existed used the dataset's mean/std
        return cls(**{"normalisation": "dataset", **{k: v for k, v in d.items() if k in names}})


@dataclass
class TrainEvent:
    """Progress of a run.

    ``phase`` is ``"train"`` (one step), ``"val"``, ``"test"``,
    ``"test_modified"`` (evaluations), ``"stopped"`` or ``"done"`` (last event,
    with ``checkpoint`` and ``metrics``). In a run of several processes the
    events are rank 0's, with the loss and score of the whole global batch.
    """

    phase: str
    step: int
    total_steps: int
    epoch: int
    loss: float | None
    accuracy: float | None
    lr: float
    elapsed: float
    step_time: float = 0.0
    n_converted: int = 0
    checkpoint: str | None = None
    metrics: dict = field(default_factory=dict)
    comm_time: float = 0.0  # seconds of the step spent in all-reduces (several processes)


@dataclass
class EvalResult:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) of an evaluation."""

    loss: float
    accuracy: float
    confusion: np.ndarray
    n: int

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "n": self.n, "confusion": self.confusion.tolist()}
