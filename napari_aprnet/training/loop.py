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

Several processes (``nproc``, or a ``torchrun`` launch) train data parallel:
``_Run`` calls the hooks of its context (:class:`~.distributed.Local` for one
process, :class:`~.distributed.Group` for a rank of several) to shard the
batches, weight the loss, sum the gradients and agree on stopping.
"""
from __future__ import annotations

import csv
import io
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from napari_aprnet.bundled import resolve_checkpoint
from napari_aprnet.data import AnnotatedImages, APRCache, epoch_batches, make_loader, stream_batches
from napari_aprnet.io._atomic import atomic_write_bytes
from napari_aprnet.models import build_model
from napari_aprnet.training.checkpoint import load_checkpoint, save_checkpoint
from napari_aprnet.training.config import CSV_FIELDS, EvalResult, TrainConfig, TrainEvent
from napari_aprnet.training.data_setup import _setup_data
from napari_aprnet.training.distributed import Group, Local, torchrun_world
from napari_aprnet.training.evaluate import _forward, recalibrate_batchnorm
from napari_aprnet.training.launcher import launch
from napari_aprnet.training.tasks import task_for

__all__ = ["train", "run_training", "build_network"]

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


def build_network(config: TrainConfig, spec, n_classes: int) -> torch.nn.Module:
    """The (untrained) network of a validated run ``config`` with input ``spec`` and ``n_classes`` outputs."""
    if config.model_spec.family == "unet":
        extra = {"ndim": spec.ndim, "depth": config.depth}
    else:
        extra = {"dropout": config.dropout, "spatial_dropout": config.spatial_dropout}
    return build_model(config.model_spec, n_classes=n_classes, in_channels=spec.network_channels, width=config.width,
                       **extra)


class _Run:
    """The state of one training run; :meth:`events` is the step loop, in small methods."""

    def __init__(self, config: TrainConfig, out: Path | None, stored: dict | None, cache_dir,
                 dist: Local | None = None, annotations=None):
        self.config, self.out, self.stored = config, out, stored
        self.dist = dist if dist is not None else Local()
        self.ckpt_path = out / "checkpoint.pt" if out is not None else None
        self.data = _setup_data(config, annotations)
        self.spec, self.n_classes = self.data.spec, len(self.data.class_names)
        self.task = task_for(config.task, self.n_classes, config.dice_weight, config.loss_weighting)
        torch.manual_seed(config.seed)
        network = build_network(config, self.spec, self.n_classes)
        if config.init_from is not None and stored is None:
            _load_start_weights(network, config.init_from)
        self.model = self.dist.setup_model(network)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.streaming:
            self.steps_per_epoch = config.steps + 1  # one never-ending "epoch"
            self.total = config.steps
        else:
            self.steps_per_epoch = math.ceil(len(self.data.train) / config.batch_size)
            self.total = config.epochs * self.steps_per_epoch
            if config.steps is not None:
                self.total = min(self.total, config.steps)
        self.step, self.elapsed, self.best_val, self.history = 0, 0.0, math.inf, []
        if stored is not None:
            self._restore(stored)
        self.dist.seed(config.seed, self.step)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        self.log = _CSVLog(out / "log.csv" if out is not None else None, self.step if stored is not None else None)
        # streaming images are seen once: caching their APRs would only grow memory
        self.cache = APRCache(cache_dir) if self.spec.mode == "apr" and not config.streaming else None
        self.lr = config.lr
        self.metrics: dict = {}
        self.best_state = None
        self.t_start = 0.0

    def _restore(self, stored: dict) -> None:
        if stored["model"] != self.model.config:
            raise ValueError(f"the checkpoint's model {stored['model']} does not match the run's {self.model.config}")
        self.model.load_state_dict(stored["state_dict"])
        if stored.get("optimizer") is not None:
            self.optimizer.load_state_dict(stored["optimizer"])
        t = stored["train"]
        self.step, self.elapsed = int(t["step"]), float(t["elapsed"])
        self.best_val = float(t.get("best_val_loss", math.inf))
        self.history = list(t.get("recent_errors", []))
        if "torch_rng" in t:
            torch.set_rng_state(t["torch_rng"])

    # ----- checkpoints, loaders, events -----
    def state(self) -> dict:
        c = self.config
        return {"config": c.to_dict(), "step": self.step, "total_steps": self.total,
                "epoch": self.step // self.steps_per_epoch, "elapsed": self.elapsed, "best_val_loss": self.best_val,
                "recent_errors": self.history[-c.last_window:], "metrics": self.metrics,
                "torch_rng": torch.get_rng_state()}

    def save(self, path: Path, with_optimizer: bool = True) -> str | None:
        if self.out is None:
            return None
        save_checkpoint(path, model_config=self.model.config, state_dict=self.model.state_dict(),
                        class_names=self.data.class_names, input_spec=self.spec.to_dict(), train=self.state(),
                        optimizer=self.optimizer.state_dict() if with_optimizer else None)
        return str(path)

    def loader_for(self, source, batches, aug_seed=None, epoch=0, eval_only=False):
        """A loader over this process's shares of the index ``batches``."""
        return make_loader(source, self.spec, self.dist.shard(batches, allow_empty=eval_only),
                           workers=self.config.workers, augment_seed=aug_seed, epoch=epoch, cache=self.cache,
                           targets=self.task.targets, item_target=self.task.item_target, device=self.dist.device)

    def evaluate(self, source) -> EvalResult:
        batches = epoch_batches(len(source), self.config.batch_size, 0, 0, shuffle=False)
        return self.dist.evaluate(self.model, self.loader_for(source, batches, eval_only=True), self.n_classes,
                                  self.task)

    def event(self, phase, loss, acc, step_time=0.0, n_conv=0, **kw) -> TrainEvent:
        ev = TrainEvent(phase, self.step, self.total, self.step // self.steps_per_epoch, loss, acc, self.lr,
                        self.elapsed, step_time, n_conv, **kw)
        self.log.write(ev)
        return ev

    # ----- evaluation during the run -----
    def recalibrate(self) -> None:
        c = self.config
        if c.bn_batches <= 0:
            return
        if c.streaming:  # images far beyond any training stream
            batches = stream_batches(c.batch_size, _BN_STREAM_START, _BN_STREAM_START + c.bn_batches)
        else:
            batches = epoch_batches(len(self.data.train), c.batch_size, c.seed, 0)[: c.bn_batches]
        recalibrate_batchnorm(self.model, self.loader_for(self.data.train, batches))

    def validate_now(self) -> EvalResult:
        self.recalibrate()
        res = self.evaluate(self.data.val)
        if res.loss < self.best_val:
            self.best_val = res.loss
            if self.out is not None:
                self.save(self.out / "best.pt", with_optimizer=False)
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return res

    # ----- the loop -----
    def _epoch_loader(self):
        c = self.config
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        if c.streaming:
            batches = stream_batches(c.batch_size, self.step, self.total)
        else:
            batches = epoch_batches(len(self.data.train), c.batch_size, c.seed, epoch, skip)
            batches = batches[: self.total - self.step]
        return self.loader_for(self.data.train, batches, c.seed if c.augment else None, epoch)

    def _train_step(self, batch) -> tuple[float, float]:
        n_global = self.dist.begin_step(len(batch))
        outputs = _forward(self.model, batch.inputs)
        loss = self.task.loss(outputs, batch.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.dist.scale(loss, len(batch), n_global).backward()
        acc = self.task.score(outputs, batch.targets)
        loss_value, acc = self.dist.reduce(self.model, float(loss.detach()), acc, len(batch))
        self.optimizer.step()
        self.step += 1
        self.history.append(1.0 - acc)
        del self.history[: -self.config.last_window]
        return loss_value, acc

    def _validation_due(self) -> bool:
        c, step = self.config, self.step
        if c.streaming:
            return False
        end_of_epoch = step % self.steps_per_epoch == 0
        return bool((c.eval_every and step % c.eval_every == 0) or (not c.eval_every and end_of_epoch)
                    or step == self.total)

    def _steps(self, should_stop) -> Iterator[TrainEvent]:
        """Train until the total; a ``"stopped"`` event (and ``self.stopped``) when ``should_stop`` says so."""
        c = self.config
        while self.step < self.total:
            t0 = time.perf_counter()
            for batch in self._epoch_loader():
                loss, acc = self._train_step(batch)
                now = time.perf_counter()
                self.elapsed = now - self.t_start
                yield self.event("train", loss, acc, now - t0, batch.n_converted, comm_time=self.dist.comm_time)
                t0 = time.perf_counter()
                if self._validation_due():
                    res = self.validate_now()
                    self.elapsed = time.perf_counter() - self.t_start
                    yield self.event("val", res.loss, res.score, metrics={"val": res.to_dict()})
                    t0 = time.perf_counter()
                if self.out is not None and self.step < self.total and c.checkpoint_every and \
                        self.step % c.checkpoint_every == 0:
                    self.save(self.ckpt_path)
                if should_stop():  # at once: no batch norm re-estimation, the checkpoint is for resuming
                    path = self.save(self.ckpt_path)
                    self.stopped = True
                    yield self.event("stopped", None, None, checkpoint=path)
                    return
                if self.step >= self.total:
                    break

    def _tests(self) -> Iterator[TrainEvent]:
        """Evaluate the model on every test set, into ``self.metrics``."""
        for name, source in self.data.tests.items():
            res = self.evaluate(source)
            self.metrics[name] = res.to_dict()
            self.elapsed = time.perf_counter() - self.t_start
            yield self.event(name, res.loss, res.score, metrics={name: res.to_dict()})

    def _final(self) -> Iterator[TrainEvent]:
        """The final evaluation; sets ``self.final`` (the checkpoint path)."""
        c, out = self.config, self.out
        if c.streaming:  # error = 1 - the task's score (classification: accuracy; segmentation: IoU)
            errs = np.asarray(self.history[-c.last_window:], dtype=float)
            self.metrics = {"last_batches": len(errs), "error_mean": float(errs.mean()) if len(errs) else None,
                            "error_std": float(errs.std()) if len(errs) else None}
            self.recalibrate()
            yield from self._tests()  # streams of segmentation images have a test set of fresh images
            self.final = self.save(self.ckpt_path)
            return
        self.save(self.ckpt_path)  # the latest state with the optimizer, to extend the run later
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif out is not None and (out / "best.pt").is_file():  # resumed after the best was found
            self.model.load_state_dict(load_checkpoint(out / "best.pt")["state_dict"])
        self.dist.broadcast_state(self.model)  # only rank 0 can read best.pt
        self.metrics = {"best_val_loss": self.best_val}
        yield from self._tests()
        self.final = self.save(out / "best.pt", with_optimizer=False) if out is not None else None

    def events(self, should_stop) -> Iterator[TrainEvent]:
        should_stop = self.dist.stop_rule(should_stop)
        self.model.train()
        self.t_start = time.perf_counter() - self.elapsed
        self.stopped = False
        finished = False
        try:
            yield from self._steps(should_stop)
            if self.stopped:
                return
            yield from self._final()
            finished = True
            yield TrainEvent("done", self.step, self.total, self.step // max(self.steps_per_epoch, 1), None, None,
                             self.lr, self.elapsed, checkpoint=self.final, metrics=self.metrics)
        except GeneratorExit:
            if not finished and self.out is not None:
                self.save(self.ckpt_path)
            raise
        finally:
            self.log.close()


def _load_start_weights(model: torch.nn.Module, path: str) -> None:
    """Start ``model`` from the weights of the checkpoint at ``path`` (``init_from``: fine-tuning)."""
    stored = load_checkpoint(resolve_checkpoint(path))
    if stored["model"] != model.config:
        differ = sorted(k for k in set(stored["model"]) | set(model.config)
                        if stored["model"].get(k) != model.config.get(k))
        theirs = ", ".join(f"{k} {stored['model'].get(k)}" for k in differ)
        ours = ", ".join(f"{k} {model.config.get(k)}" for k in differ)
        raise ValueError(f"the checkpoint {path} holds another network ({theirs}) than this run ({ours}); "
                         "train with the checkpoint's network settings, or start afresh")
    model.load_state_dict(stored["state_dict"])


def _prepare(config: TrainConfig, out: Path | None, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and, with ``resume``, the stored checkpoint (checks the output folder)."""
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
    return config, stored


def _rank_events(group: Group, config: TrainConfig, out: Path | None, resume: bool, cache_dir,
                 stop=None, annotations=None) -> Iterator[TrainEvent]:
    """One process of a run of several: rank 0 reads the checkpoint and writes the files; all train."""
    config, stored = group.from_main(lambda: _prepare(config, out, resume))
    run = _Run(config.validate(), out if group.is_main else None, stored, cache_dir, group, annotations)
    yield from run.events(_as_stop(stop))


def _torchrun_events(world, config, out, resume, stop, cache_dir, device, annotations) -> Iterator[TrainEvent]:
    """This process's part of a ``torchrun`` launch; only rank 0 yields events."""
    group = Group(*world, device)
    try:
        for event in _rank_events(group, config, out, resume, cache_dir, stop, annotations):
            if group.is_main:
                yield event
    finally:
        group.close()


def train(config: TrainConfig, out: str | Path | None = None, *, resume: bool = False,
          stop: Callable[[], bool] | threading.Event | None = None,
          cache_dir: str | Path | None = None, nproc: int = 1, device: str | None = None,
          annotations: AnnotatedImages | None = None) -> Iterator[TrainEvent]:
    """Train a network; a generator of :class:`TrainEvent`.

    Parameters
    ----------
    config : TrainConfig
        The run. With ``resume``, the stored config is used, except ``steps``,
        ``epochs`` and ``workers`` (so a finished run can be extended).
        ``batch_size`` is the global batch, shared by all processes.
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
    nproc : int
        Train with this many local processes (data parallel, see
        :mod:`napari_aprnet.training.distributed`); the events are rank 0's.
        Started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set), every
        process calls this with ``nproc=1`` and joins the launch; only
        rank 0 yields events and writes files.
    device : {"cpu", "cuda", "auto"}, optional
        Where each process trains (default the CPU; ``"cuda"``: one GPU per
        process, NCCL between processes).
    annotations : AnnotatedImages, optional
        The images and drawn labels of a run with ``data="annotations"``
        (also when resuming it: they are not stored in the run folder).

    Raises
    ------
    FileExistsError
        ``out`` already holds a run and ``resume`` is false.
    FileNotFoundError
        ``resume`` without a checkpoint in ``out``.
    DistributedError
        One of several processes failed or died (the others are stopped).
    """
    out = Path(out) if out is not None else None
    world = torchrun_world()
    if int(nproc) < 1 or (world is not None and int(nproc) > 1):
        raise ValueError(f"nproc must be >= 1, and 1 under torchrun (which starts the processes), got {nproc}")
    if world is not None:
        yield from _torchrun_events(world, config, out, resume, stop, cache_dir, device, annotations)
    elif nproc > 1:
        if not resume and config.validate().batch_size < nproc:
            raise ValueError(f"the global batch of {config.batch_size} images cannot be shared by {nproc} "
                             "processes; use a batch size of at least the number of processes")
        yield from launch(_rank_events, (config, out, resume, cache_dir, None, annotations), int(nproc), device=device,
                          should_stop=_as_stop(stop))
    else:
        config, stored = _prepare(config, out, resume)
        run = _Run(config.validate(), out, stored, cache_dir, Local(device), annotations)
        yield from run.events(_as_stop(stop))


def run_training(config: TrainConfig, out=None, **kwargs) -> TrainEvent:
    """Run :func:`train` to the end and return its last event."""
    last = None
    for last in train(config, out, **kwargs):
        pass
    return last
