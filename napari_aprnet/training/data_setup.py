"""The data of a training run: input spec, class names and train / validation / test sources (both tasks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_aprnet.data import (
    NUCLEI_DATASETS,
    AnnotatedImages,
    FolderDataset,
    InputSpec,
    NucleiDataset,
    NucleiParams,
    NucleiStream,
    SegmentationFolder,
    ShapeParams,
    ShapeStream,
    estimate_normalisation,
    make_nuclei_splits,
    make_shapes_splits,
    split_indices,
)
from napari_aprnet.data.nuclei import default_shape
from napari_aprnet.training.config import ANNOTATIONS, SHAPES_MEAN, SHAPES_STD, TrainConfig
from napari_aprnet.training.tasks import SEGMENTATION_CLASSES


@dataclass
class _Data:
    class_names: tuple
    spec: InputSpec
    train: object
    val: object = None
    tests: dict = field(default_factory=dict)
    held_out: bool = True  # the validation data is not trained on


def _level_channel(config: TrainConfig) -> bool:
    model = config.model_spec
    if config.level_channel is not None:
        return bool(config.level_channel)
    return model.mode == "apr" and model.default_in_channels > model.image_channels


def _folder_splits(root: Path, make, config: TrainConfig):
    """(train, val, tests) of a folder dataset: ``train/``, ``val/``, ``test/`` sub-folders, or one folder split."""
    if (root / "train").is_dir():
        train_set = make(root / "train")
        val_set = make(root / "val") if (root / "val").is_dir() else None
        tests = {"test": make(root / "test")} if (root / "test").is_dir() else {}
    else:
        train_set, val_set, tests = make(root), None, {}
    if val_set is None:
        tr, va = split_indices(len(train_set), config.val_fraction, config.seed)
        train_set, val_set = train_set.subset(tr), train_set.subset(va)
    return train_set, val_set, tests


#: Default side of the training crops of annotations.
ANNOTATION_CROP = 64


def _annotation_splits(config: TrainConfig, annotations: AnnotatedImages | None):
    """(train crops, validation crops, crop shape, held out) of in-memory annotations."""
    if annotations is None:
        raise ValueError("this run trains on annotations in memory: pass them to train() as annotations= "
                         "(a resumed run needs them again)")
    if annotations.channels != config.model_spec.image_channels:
        raise ValueError(f"{config.model} takes {config.model_spec.image_channels}-channel images, the annotated "
                         f"images have {annotations.channels}")
    crop = tuple(config.image_shape or (ANNOTATION_CROP,) * annotations.ndim)
    if len(crop) != annotations.ndim:
        raise ValueError(f"the crop {list(crop)} has {len(crop)} sides but the images are {annotations.ndim}D")
    splits = annotations.splits(crop, config.steps * config.batch_size, config.seed, config.val_fraction)
    return splits.train, splits.val, crop, splits.held_out


def _setup_segmentation(config: TrainConfig, annotations: AnnotatedImages | None = None) -> _Data:
    """Segmentation data: synthetic nuclei (a stream, or fixed splits), an images/masks folder or annotations."""
    model = config.model_spec
    channels = model.image_channels
    names = SEGMENTATION_CLASSES[config.n_seg_classes]
    held_out = True
    if config.data == ANNOTATIONS:
        train_set, val_set, shape, held_out = _annotation_splits(config, annotations)
        tests: dict = {}
    elif config.data in NUCLEI_DATASETS:
        shape = tuple(config.image_shape or default_shape(NUCLEI_DATASETS[config.data]))
        if len(shape) != NUCLEI_DATASETS[config.data]:
            raise ValueError(f"{config.data} images have {NUCLEI_DATASETS[config.data]} dimensions, got image_shape "
                             f"{list(shape)}")
        params = NucleiParams.from_dict(config.nuclei_params) if config.nuclei_params else None
        if config.streaming:
            train_set, val_set = NucleiStream(config.seed, shape, params), None
            tests = {"test": NucleiDataset(config.n_test, config.seed, shape, split=2, params=params)}
        else:
            splits = make_nuclei_splits(config.n_train, config.n_val, config.n_test, config.seed, shape, params)
            train_set, val_set, tests = splits["train"], splits["val"], {"test": splits["test"]}
    else:
        root = _existing_folder(config, "a folder with images/ and masks/")
        train_set, val_set, tests = _folder_splits(root, lambda r: SegmentationFolder(r, channels), config)
        shape = train_set[0][1].shape
    spec = InputSpec(model.mode, max(shape), channels, config.rel_error, config.apr_params, _level_channel(config),
                     [0.5] * channels, [0.25] * channels, "image", ndim=len(shape), resize=False)
    return _Data(names, spec, train_set, val_set, tests, held_out)


def _existing_folder(config: TrainConfig, what: str) -> Path:
    root = Path(config.data)
    if not root.is_dir():
        synthetic = "'shapes'" if config.task == "classify" else "'nuclei2d', 'nuclei3d'"
        raise FileNotFoundError(f"dataset folder not found: {root} (give {synthetic} or {what})")
    return root


def _setup_data(config: TrainConfig, annotations: AnnotatedImages | None = None) -> _Data:
    """The data of a validated ``config`` (its ``model_spec`` set); ``annotations`` for ``data="annotations"``."""
    if config.task == "segment":
        return _setup_segmentation(config, annotations)
    model = config.model_spec
    mode = model.mode
    channels = model.image_channels
    level = _level_channel(config)
    if config.data == "shapes":
        params = ShapeParams.from_dict(config.shape_params) if config.shape_params else ShapeParams()
        gen_size = config.image_size or config.size
        spec = InputSpec(mode, config.size, channels, config.rel_error, config.apr_params, level,
                         [SHAPES_MEAN] * channels, [SHAPES_STD] * channels, config.normalisation)
        if config.streaming:
            stream = ShapeStream(config.seed, gen_size, config.batch_size, params, config.classes)
            return _Data(stream.class_names, spec, stream)
        splits = make_shapes_splits(config.n_train, config.n_val, config.n_test, config.seed, gen_size, params,
                                    config.classes)
        return _Data(splits["train"].class_names, spec, splits["train"], splits["val"],
                     {"test": splits["test"], "test_modified": splits["test_modified"]})
    root = _existing_folder(config, "a folder of class folders")
    train_set, val_set, tests = _folder_splits(root, lambda r: FolderDataset(r, config.size, channels), config)
    for other in [val_set, *tests.values()]:
        if other.class_names != train_set.class_names:
            raise ValueError(f"class folders differ between {train_set.root} {train_set.class_names} and "
                             f"{other.root} {other.class_names}")
    mean, std = ([0.5] * channels, [0.25] * channels) if config.normalisation == "image" else \
        estimate_normalisation(train_set, channels, config.size, seed=config.seed)
    spec = InputSpec(mode, config.size, channels, config.rel_error, config.apr_params, level, mean, std,
                     config.normalisation)
    return _Data(train_set.class_names, spec, train_set, val_set, tests)
