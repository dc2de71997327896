"""The configuration and the result records of a training run.

:class:`TrainConfig` (one run), :class:`TrainEvent` (what :func:`~napari_aprnet.training.loop.train`
yields) and :class:`EvalResult`; ``validate`` parses the model name once into
``model_spec`` (a :class:`~napari_aprnet.models.ModelSpec`), which the run carries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from napari_aprnet.models import ModelSpec, parse_model_name

CSV_FIELDS = ("phase", "step", "epoch", "loss", "accuracy", "lr", "elapsed")  # accuracy: the task's score
TASKS = ("classify", "segment")
SYNTHETIC_DATA = {"shapes": "classify", "nuclei2d": "segment", "nuclei3d": "segment"}  # and their task
ANNOTATIONS = "annotations"  # data: in-memory images with drawn labels, given to train() (segmentation)
SHAPES_MEAN, SHAPES_STD = 0.5, 0.2887  # uniform [0, 1] intensities


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoints).

    Parameters
    ----------
    model : str
        Network name, e.g. ``"APR_B"``, ``"Pix_A-expanded"``, ``"APR_UNet"`` (see :mod:`napari_aprnet.models`).
    task : {"classify", "segment"}
        One class per image, or per particle / pixel (:mod:`napari_aprnet.training.tasks`).
    data : str
        Classification: ``"shapes"`` (synthetic) or a folder with one
        sub-folder per class. Segmentation: ``"nuclei2d"``, ``"nuclei3d"``
        (synthetic), a folder with ``images/`` and ``masks/``, or
        ``"annotations"``: crops of in-memory images with drawn labels
        (:class:`~napari_aprnet.data.AnnotatedImages`, passed to ``train``;
        a run of ``steps`` batches of fresh crops, validated every
        ``eval_every`` steps). Folders may have ``train/``, ``val/``,
        ``test/`` sub-folders, each laid out so.
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
        Classification: network input side; images are resized to it.
        Segmentation: images keep their size (see ``image_shape``).
    image_size : int, optional
        Side of generated shape images (default ``size``); e.g. 256 with
        ``size=64`` trains on downsampled images (Table 4.2).
    shape_params : dict, optional
        :class:`ShapeParams` as a dict.
    classes : list of str, optional
        Shapes: train on a subset of the six classes.
    n_train, n_val, n_test : int
        Fixed shapes datasets: images per class. Nuclei: images (``n_test``
        also sets the test images evaluated at the end of streaming runs).
    image_shape : list of int, optional
        Nuclei: the generated image shape (default 256x256, or 64x128x128 for
        ``nuclei3d``). Annotations: the crop shape (default 64 per side).
    nuclei_params : dict, optional
        :class:`~napari_aprnet.data.NucleiParams` as a dict (e.g. ``{"coverage": [0.03, 0.08]}``).
    boundary : bool
        Segmentation: learn three classes, background, interior and boundary
        (from instance masks), so that touching objects are told apart;
        default two, background and foreground.
    dice_weight : float
        Segmentation: weight of the soft Dice term added to the cross entropy.
    loss_weighting : {"pixels", "particles"}
        Segmentation on APRs: every particle's loss counts once (default;
        learns sparse 3D data) or for the pixels of its cell (see
        :class:`~napari_aprnet.training.tasks.SegmentationTask`). Runs stored
        before the option existed read as "pixels".
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
    width : float, optional
        Classifiers: channel multiplier (default 1 = thesis size). U-Nets:
        channels of the first stage, doubled at every pooling (default 16).
    depth : int, optional
        U-Nets: number of poolings (default 3).
    init_from : str, optional
        A checkpoint of the same network (model, width, depth, classes) whose
        weights start the run: fine-tuning, e.g. after correcting labels.
        The optimizer and the step count start afresh.
    normalisation : {"image", "dataset"}
        Input normalisation (see :class:`napari_aprnet.data.InputSpec`):
        per-image standardisation (default) or one mean/std for the dataset.
    model_spec : ModelSpec, optional
        ``model`` parsed; set by :meth:`validate` (not stored: ``to_dict`` leaves it out).
    """

    model: str = "APR_B"
    data: str = "shapes"
    task: str = "classify"
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
    width: float | None = None
    depth: int | None = None
    normalisation: str = "image"
    image_shape: list | None = None
    nuclei_params: dict | None = None
    boundary: bool = False
    dice_weight: float = 0.0
    loss_weighting: str = "particles"
    init_from: str | None = None
    model_spec: ModelSpec | None = field(default=None, compare=False, repr=False)

    @property
    def streaming(self) -> bool:
        """True for streaming mode (synthetic data, ``steps`` without ``epochs``)."""
        return self.data in SYNTHETIC_DATA and self.epochs is None

    @property
    def n_seg_classes(self) -> int:
        """Segmentation: the number of classes (2, or 3 with ``boundary``)."""
        return 3 if self.boundary else 2

    def _check_task(self, model: ModelSpec) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if (model.family == "unet") != (self.task == "segment"):
            which = "a U-Net (APR_UNet, Pix_UNet)" if self.task == "segment" else "a classifier (e.g. APR_B)"
            raise ValueError(f"{self.model} cannot be trained to {self.task}; choose {which}")
        if model.family != "unet" and self.depth is not None:
            raise ValueError("depth applies to the U-Nets only")
        wanted = SYNTHETIC_DATA.get(self.data, "segment" if self.data == ANNOTATIONS else None)
        if wanted is not None and wanted != self.task:
            raise ValueError(f"the data {self.data!r} is for the {wanted!r} task, not {self.task!r}; "
                             f"choose " + " or ".join(repr(k) for k, v in SYNTHETIC_DATA.items() if v == self.task))
        if self.task == "segment" and self.augment:
            raise ValueError("augmentation is not available for segmentation yet; leave augment off")
        if self.task == "segment" and self.normalisation != "image":
            raise ValueError("segmentation normalises every image on its own; leave normalisation at 'image'")
        if self.image_shape is not None and (len(self.image_shape) not in (2, 3) or min(self.image_shape) < 16):
            raise ValueError(f"image_shape must be 2 or 3 sides of at least 16 pixels, got {self.image_shape}")
        if not self.dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")
        if self.loss_weighting not in ("pixels", "particles"):
            raise ValueError(f"loss_weighting must be 'pixels' or 'particles', got {self.loss_weighting!r}")

    def validate(self) -> "TrainConfig":
        """Check values, parse the model name and fill the mode defaults; returns a new config."""
        model_spec = parse_model_name(self.model)
        if self.steps is None and self.epochs is None:
            raise ValueError("give the training length: steps (streaming) or epochs (fixed datasets)")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self._check_task(model_spec)
        epochs = self.epochs
        if self.data == ANNOTATIONS:
            if self.steps is None or self.epochs not in (None, 1):
                raise ValueError("annotations are trained for a number of steps (fresh crops every batch); "
                                 "give steps, not epochs")
            epochs = 1  # one pass over steps x batch_size random crops
        elif self.data not in SYNTHETIC_DATA and self.epochs is None:
            raise ValueError("folder datasets are trained for a number of epochs; give epochs")
        if self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        fixed = not self.streaming and model_spec.family == "classifier"  # the U-Nets have no dropout
        return replace(
            self,
            model_spec=model_spec,
            epochs=epochs,
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
        # runs stored before per-image normalisation existed used the dataset's mean/std, and runs stored
        # before loss_weighting existed weighted particles by their pixels
        return cls(**{"normalisation": "dataset", "loss_weighting": "pixels",
                      **{k: v for k, v in d.items() if k in names}})


@dataclass
class TrainEvent:
    """Progress of a run.

    ``phase`` is ``"train"`` (one step), ``"val"``, ``"test"``,
    ``"test_modified"`` (evaluations), ``"stopped"`` or ``"done"`` (last event,
    with ``checkpoint`` and ``metrics``). ``accuracy`` is the task's score:
    accuracy (classification) or foreground IoU (segmentation). In a run of
    several processes the events are rank 0's, with the loss and score of the
    whole global batch.
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
    """The measures of an evaluation.

    ``loss``; ``accuracy`` (classification: of images; segmentation: of
    pixels); ``confusion`` (rows: true class, columns: predicted; counts of
    images or pixels); ``n`` images. Segmentation adds the foreground
    ``iou`` and ``dice`` and the object ``f1`` at IoU 0.5 (None for
    classification).
    """

    loss: float
    accuracy: float
    confusion: np.ndarray
    n: int
    iou: float | None = None
    dice: float | None = None
    f1: float | None = None

    @property
    def score(self) -> float:
        """The task's main measure: IoU for segmentation, accuracy for classification."""
        return self.accuracy if self.iou is None else self.iou

    def to_dict(self) -> dict:
        d = {"loss": self.loss, "accuracy": self.accuracy, "n": self.n, "confusion": self.confusion.tolist()}
        d.update({k: getattr(self, k) for k in ("iou", "dice", "f1") if getattr(self, k) is not None})
        return d
