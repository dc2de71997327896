"""Training and evaluation of APRNets and pixel CNNs: one loop, as a generator of progress events.

:func:`train` yields a :class:`TrainEvent` after every optimisation step,
validation and test pass, and a final ``"done"`` (or ``"stopped"``) event
with the checkpoint path and metrics. It is used the same way by the CLI,
the tests and a napari ``thread_worker``; it stops between steps when the
``stop`` callable (or ``threading.Event``) says so, or when the consumer
closes the generator, saving a checkpoint that ``resume=True`` continues.

Two modes (thesis 4.1.3):

- *streaming* (``steps`` given, synthetic shapes): every batch is fresh from
  the generator; Adam, cross entropy, lr 5e-4, batch 36. Final metrics: mean
  and standard deviation of the error over the last ``last_window`` batches
  (Table 4.2).
- *fixed datasets* (``epochs`` given): train / validation / test sets,
  dropout 0.5 and spatial dropout 0.3, weight decay 1e-4 (defaults in this
  mode); the model with the lowest validation loss is kept (``best.pt``) and
  evaluated on the test set (and, for shapes, on the modified-distribution
  test set).

Files in the run folder ``out``: ``checkpoint.pt`` (latest, with optimizer
state, for resuming), ``best.pt`` (fixed mode), ``log.csv`` (one row per
step and evaluation, flushed row by row).
"""
from __future__ import annotations

import csv
import io
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from napari_aprnet.io._atomic import atomic_write_bytes
from napari_aprnet.checkpoint import load_checkpoint, save_checkpoint
from napari_aprnet.data import (APRCache, FolderDataset, InputSpec, ShapeParams, ShapeStream, epoch_batches,
                                estimate_normalisation, make_loader, make_shapes_splits, split_indices,
                                stream_batches)
from napari_aprnet.models import ARCHITECTURES, build_model, model_from_config, parse_model_name

__all__ = ["TrainConfig", "TrainEvent", "EvalResult", "train", "evaluate", "recalibrate_batchnorm", "run_training",
           "CSV_FIELDS"]

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

    @property
    def streaming(self) -> bool:
        """True for streaming mode (synthetic shapes, ``steps`` without ``epochs``)."""
        return self.data == "shapes" and self.epochs is None

    def validate(self) -> "TrainConfig":
        """Check values and fill the mode defaults; returns a new config."""
        parse_model_name(self.model)
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
            weight_decay=(1e-4 if fixed else 0.0) if self.weight_decay is None else float(self.weight_decay),
            dropout=(0.5 if fixed else 0.0) if self.dropout is None else float(self.dropout),
            spatial_dropout=(0.3 if fixed else 0.0) if self.spatial_dropout is None else float(self.spatial_dropout),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        # runs stored before per-image normalisation existed used the dataset's mean/std
        return cls(**{"normalisation": "dataset", **{k: v for k, v in d.items() if k in names}})


@dataclass
class TrainEvent:
    """Progress of a run.

    ``phase`` is ``"train"`` (one step), ``"val"``, ``"test"``,
    ``"test_modified"`` (evaluations), ``"stopped"`` or ``"done"`` (last event,
    with ``checkpoint`` and ``metrics``).
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


@dataclass
class EvalResult:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) of an evaluation."""

    loss: float
    accuracy: float
    confusion: np.ndarray
    n: int

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "n": self.n, "confusion": self.confusion.tolist()}


# ----- data set-up -------------------------------------------------------------

@dataclass
class _Data:
    class_names: tuple
    spec: InputSpec
    train: object
    val: object = None
    tests: dict = field(default_factory=dict)


def _channels_for(config: TrainConfig) -> int:
    kind, arch, _ = parse_model_name(config.model)
    return ARCHITECTURES[arch].in_channels_pixels


def _setup_data(config: TrainConfig) -> _Data:
    kind, arch, _ = parse_model_name(config.model)
    mode = "apr" if kind == "APR" else "pixels"
    channels = _channels_for(config)
    level = config.level_channel if config.level_channel is not None else (
        mode == "apr" and ARCHITECTURES[arch].in_channels_apr > channels)
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


# ----- evaluation ---------------------------------------------------------------

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


# ----- the loop ----------------------------------------------------------------

_BN_STREAM_START = 10 ** 7


def _as_stop(stop) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if isinstance(stop, threading.Event) or hasattr(stop, "is_set"):
        return stop.is_set
    if callable(stop):
        return stop
    raise TypeError("stop must be a callable returning bool or a threading.Event")


class _CSVLog:
    """Append-only CSV log; each row is written with one write() and flushed."""

    def __init__(self, path: Path | None, keep_until_step: int | None):
        self.path = path
        if path is None:
            self.f = None
            return
        rows = []
        if keep_until_step is not None and path.is_file():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row["step"]) <= keep_until_step:
                            rows.append(row)
                    except (KeyError, TypeError, ValueError):
                        break  # a torn last row
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(path, buf.getvalue().encode())
        self.f = open(path, "a", newline="")

    def write(self, ev: TrainEvent) -> None:
        if self.f is None:
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            [ev.phase, ev.step, ev.epoch, "" if ev.loss is None else f"{ev.loss:.6g}",
             "" if ev.accuracy is None else f"{ev.accuracy:.6g}", f"{ev.lr:.6g}", f"{ev.elapsed:.3f}"])
        self.f.write(buf.getvalue())
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def train(config: TrainConfig, out: str | Path | None = None, *, resume: bool = False,
          stop: Callable[[], bool] | threading.Event | None = None,
          cache_dir: str | Path | None = None) -> Iterator[TrainEvent]:
    """Train a network; a generator of :class:`TrainEvent`.

    Parameters
    ----------
    config : TrainConfig
        The run. With ``resume``, the stored config is used, except ``steps``,
        ``epochs`` and ``workers`` (so a finished run can be extended).
    out : str or Path, optional
        Run folder for ``checkpoint.pt``, ``best.pt`` and ``log.csv``; None
        keeps everything in memory (no files, no resume).
    resume : bool
        Continue the run saved in ``out``.
    stop : callable or threading.Event, optional
        Polled after every step; when true, a checkpoint is saved and a
        ``"stopped"`` event ends the generator.
    cache_dir : str or Path, optional
        Keep converted APRs of fixed datasets on disk there (they are always
        cached in memory for the run).

    Raises
    ------
    FileExistsError
        ``out`` already holds a run and ``resume`` is false.
    FileNotFoundError
        ``resume`` without a checkpoint in ``out``.
    """
    out = Path(out) if out is not None else None
    should_stop = _as_stop(stop)
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    stored = None
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {out}")
        stored = load_checkpoint(ckpt_path)
        base = TrainConfig.from_dict(stored["train"]["config"])
        config = replace(base, steps=config.steps if config.steps is not None else base.steps,
                         epochs=config.epochs if config.epochs is not None else base.epochs,
                         workers=config.workers)
    elif ckpt_path is not None and ckpt_path.exists():
        raise FileExistsError(f"{out} already holds a training run; resume it or choose another output folder")
    config = config.validate()
    data = _setup_data(config)
    spec, n_classes = data.spec, len(data.class_names)

    torch.manual_seed(config.seed)
    model = build_model(config.model, n_classes=n_classes, in_channels=spec.network_channels, width=config.width,
                        dropout=config.dropout, spatial_dropout=config.spatial_dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    if config.streaming:
        steps_per_epoch = config.steps + 1  # one never-ending "epoch"
        total = config.steps
    else:
        steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        total = config.epochs * steps_per_epoch
        if config.steps is not None:
            total = min(total, config.steps)

    step, elapsed, best_val, history = 0, 0.0, math.inf, []
    if stored is not None:
        if stored["model"] != model.config:
            raise ValueError(f"the checkpoint's model {stored['model']} does not match the run's {model.config}")
        model.load_state_dict(stored["state_dict"])
        if stored.get("optimizer") is not None:
            optimizer.load_state_dict(stored["optimizer"])
        t = stored["train"]
        step, elapsed, best_val = int(t["step"]), float(t["elapsed"]), float(t.get("best_val_loss", math.inf))
        history = list(t.get("recent_errors", []))
        if "torch_rng" in t:
            torch.set_rng_state(t["torch_rng"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    log = _CSVLog(out / "log.csv" if out is not None else None, step if stored is not None else None)
    cache = APRCache(cache_dir) if spec.mode == "apr" else None
    lr = config.lr
    metrics: dict = {}

    def state(extra: dict | None = None) -> dict:
        t = {"config": config.to_dict(), "step": step, "total_steps": total, "epoch": step // steps_per_epoch,
             "elapsed": elapsed, "best_val_loss": best_val, "recent_errors": history[-config.last_window:],
             "metrics": metrics, "torch_rng": torch.get_rng_state()}
        t.update(extra or {})
        return t

    def save(path: Path, with_optimizer: bool = True) -> str | None:
        if out is None:
            return None
        save_checkpoint(path, model_config=model.config, state_dict=model.state_dict(),
                        class_names=data.class_names, input_spec=spec.to_dict(), train=state(),
                        optimizer=optimizer.state_dict() if with_optimizer else None)
        return str(path)

    def loader_for(source, batches, aug_seed=None, epoch=0):
        return make_loader(source, spec, batches, workers=config.workers, augment_seed=aug_seed, epoch=epoch,
                           cache=cache)

    def eval_loader(source):
        return loader_for(source, epoch_batches(len(source), config.batch_size, 0, 0, shuffle=False))

    def event(phase, loss, acc, step_time=0.0, n_conv=0, **kw) -> TrainEvent:
        ev = TrainEvent(phase, step, total, step // steps_per_epoch, loss, acc, lr, elapsed, step_time, n_conv, **kw)
        log.write(ev)
        return ev

    def recalibrate():
        if config.bn_batches <= 0:
            return
        if config.streaming:  # images far beyond any training stream
            batches = stream_batches(config.batch_size, _BN_STREAM_START, _BN_STREAM_START + config.bn_batches)
        else:
            batches = epoch_batches(len(data.train), config.batch_size, config.seed, 0)[: config.bn_batches]
        recalibrate_batchnorm(model, loader_for(data.train, batches))

    def validate_now():
        nonlocal best_val
        recalibrate()
        res = evaluate(model, eval_loader(data.val), n_classes)
        if res.loss < best_val:
            best_val = res.loss
            save(out / "best.pt", with_optimizer=False) if out is not None else None
            best_state[0] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return res

    best_state: list = [None]
    model.train()
    t_start = time.perf_counter() - elapsed
    finished = False
    try:
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            if config.streaming:
                batches = stream_batches(config.batch_size, step, total)
            else:
                batches = epoch_batches(len(data.train), config.batch_size, config.seed, epoch, skip)
                batches = batches[: total - step]
            loader = loader_for(data.train, batches, config.seed if config.augment else None, epoch)
            t0 = time.perf_counter()
            for batch in loader:
                logits = _forward(model, batch.inputs)
                loss = F.cross_entropy(logits, batch.labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                acc = float((logits.detach().argmax(1) == batch.labels).float().mean())
                step += 1
                history.append(1.0 - acc)
                del history[: -config.last_window]
                now = time.perf_counter()
                elapsed = now - t_start
                yield event("train", float(loss.detach()), acc, now - t0, batch.n_converted)
                t0 = time.perf_counter()
                end_of_epoch = not config.streaming and step % steps_per_epoch == 0
                if not config.streaming and ((config.eval_every and step % config.eval_every == 0)
                                             or (not config.eval_every and end_of_epoch) or step == total):
                    res = validate_now()
                    elapsed = time.perf_counter() - t_start
                    yield event("val", res.loss, res.accuracy, metrics={"val": res.to_dict()})
                    t0 = time.perf_counter()
                if out is not None and step < total and config.checkpoint_every and \
                        step % config.checkpoint_every == 0:
                    save(ckpt_path)
                if should_stop():
                    recalibrate()
                    path = save(ckpt_path)
                    yield event("stopped", None, None, checkpoint=path)
                    return
                if step >= total:
                    break
        # ----- final evaluation ---------------------------------------------------
        if config.streaming:
            errs = np.asarray(history[-config.last_window:], dtype=float)
            metrics = {"last_batches": len(errs), "error_mean": float(errs.mean()) if len(errs) else None,
                       "error_std": float(errs.std()) if len(errs) else None}
            recalibrate()
            final = save(ckpt_path)
        else:
            save(ckpt_path)  # the latest state with the optimizer, to extend the run later
            if best_state[0] is not None:
                model.load_state_dict(best_state[0])
            elif out is not None and (out / "best.pt").is_file():  # resumed after the best was found
                model.load_state_dict(load_checkpoint(out / "best.pt")["state_dict"])
            metrics = {"best_val_loss": best_val}
            for name, source in data.tests.items():
                res = evaluate(model, eval_loader(source), n_classes)
                metrics[name] = res.to_dict()
                elapsed = time.perf_counter() - t_start
                yield event(name, res.loss, res.accuracy, metrics={name: res.to_dict()})
            final = save(out / "best.pt", with_optimizer=False) if out is not None else None
        finished = True
        yield TrainEvent("done", step, total, step // max(steps_per_epoch, 1), None, None, lr, elapsed,
                         checkpoint=final, metrics=metrics)
    except GeneratorExit:
        if not finished and out is not None:
            save(ckpt_path)
        raise
    finally:
        log.close()


def run_training(config: TrainConfig, out=None, **kwargs) -> TrainEvent:
    """Run :func:`train` to the end and return its last event."""
    last = None
    for last in train(config, out, **kwargs):
        pass
    return last


def load_model(checkpoint: dict) -> torch.nn.Module:
    """Model (eval mode) with the weights of a loaded checkpoint dict."""
    model = model_from_config(checkpoint["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
