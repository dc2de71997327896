"""The data of a training run: input spec, class names and train / validation / test sources."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_aprnet.data import (
    FolderDataset,
    InputSpec,
    ShapeParams,
    ShapeStream,
    estimate_normalisation,
    make_shapes_splits,
    split_indices,
)
from napari_aprnet.training.config import SHAPES_MEAN, SHAPES_STD, TrainConfig


@dataclass
class _Data:
    class_names: tuple
    spec: InputSpec
    train: object
    val: object = None
    tests: dict = field(default_factory=dict)


def _setup_data(config: TrainConfig) -> _Data:
    """The data of a validated ``config`` (its ``model_spec`` set)."""
    model = config.model_spec
    mode = model.mode
    channels = model.image_channels
    level = config.level_channel if config.level_channel is not None else (
        mode == "apr" and model.default_in_channels > channels)
    if config.data == "shapes":
        params = ShapeParams.from_dict(config.shape_params) if config.shape_params else ShapeParams()
        gen_size = config.image_size or config.size
        spec = InputSpec(mode, config.size, channels, config.rel_error, config.apr_params, bool(level),
                         [SHAPES_MEAN] * channels, [SHAPES_STD] * channels, config.normalisation)
        if config.streaming:
            stream = ShapeStream(config.seed, gen_size, config.batch_size, params, config.classes)
            return _Data(stream.class_names, spec, stream)
        splits = make_shapes_splits(config.n_train, config.n_val, config.n_test, config.seed, gen_size, params,
                                    config.classes)
        return _Data(splits["train"].class_names, spec, splits["train"], splits["val"],
                     {"test": splits["test"], "test_modified": splits["test_modified"]})
    root = Path(config.data)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root} (give 'shapes' or a folder of class folders)")
    if (root / "train").is_dir():
        train_set = FolderDataset(root / "train", config.size, channels)
        val_set = FolderDataset(root / "val", config.size, channels) if (root / "val").is_dir() else None
        tests = {"test": FolderDataset(root / "test", config.size, channels)} if (root / "test").is_dir() else {}
        for other in [val_set, *tests.values()]:
            if other is not None and other.class_names != train_set.class_names:
                raise ValueError(f"class folders differ between {root / 'train'} {train_set.class_names} and "
                                 f"{other.root} {other.class_names}")
    else:
        train_set, val_set, tests = FolderDataset(root, config.size, channels), None, {}
    if val_set is None:
        tr, va = split_indices(len(train_set), config.val_fraction, config.seed)
        train_set, val_set = train_set.subset(tr), train_set.subset(va)
    mean, std = ([0.5] * channels, [0.25] * channels) if config.normalisation == "image" else \
        estimate_normalisation(train_set, channels, config.size, seed=config.seed)
    spec = InputSpec(mode, config.size, channels, config.rel_error, config.apr_params, bool(level), mean, std,
                     config.normalisation)
    return _Data(train_set.class_names, spec, train_set, val_set, tests)
