"""Data-parallel training over several processes with ``torch.distributed``: the loop's contexts.

The training loop (:mod:`.loop`) talks to one of two contexts:

- :class:`Local`: one process; every hook is the plain single-process step
  (no process group, results bit-identical to a loop without hooks).
- :class:`Group`: one rank of a process group (gloo on CPU, NCCL when every
  process trains on a GPU). Each global batch is split into contiguous shares
  (:func:`split_bounds`: the shares of all ranks, concatenated, are the
  batch), each rank converts and trains on its share, batch norm uses the
  statistics of the whole batch (:mod:`napari_aprnet.nn.syncbn`) and the
  gradients are summed by one explicit ``all_reduce`` per step, each rank's
  loss weighted by its share of the global batch; so N processes take the
  steps of one process with the same seed and global batch.

Why an explicit all-reduce and not ``DistributedDataParallel``: the inputs
(:class:`~napari_aprnet.nn.APRBatch`) are not tensors, so DDP could not move
or inspect them, and it would add a module wrapper (other state-dict keys)
and per-bucket gradient hooks whose overlap of communication with the
backward pass a CPU run does not gain from. One flat all-reduce of all
gradients (plus the step's loss, score and count) is one collective per
step, weights unequal shares exactly and is timed as the communication time
(:attr:`Group.comm_time`). A tiny all-reduce before each step agrees on the
global batch size (the loss weights), on stopping and on pausing, so that
every rank stops at the same step.

Rank 0 alone writes checkpoints and the log (the others run with no output
folder); evaluation is split over the ranks and the outputs gathered, so
every rank computes the same metrics. :mod:`.launcher` starts N local
processes (``aprnet train --nproc N``); :func:`torchrun_world` detects a
``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``). Collectives time out after ``APRNET_DIST_TIMEOUT`` seconds
(default 600).
"""
from __future__ import annotations

import datetime
import os
import signal
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from napari_aprnet.nn import convert_sync_batchnorm
from napari_aprnet.training.evaluate import evaluate

__all__ = ["Local", "Group", "split_bounds", "torchrun_world", "resolve_device", "TIMEOUT_ENV"]

TIMEOUT_ENV = "APRNET_DIST_TIMEOUT"
_DEFAULT_TIMEOUT_S = 600.0


def split_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank``'s share of ``n`` items (contiguous, sizes differ by at most one)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def torchrun_world() -> tuple[int, int, int, int] | None:
    """``(rank, world_size, local_rank, local_world_size)`` of a ``torchrun`` launch of 2+ processes, else None."""
    env = os.environ
    if "RANK" not in env or int(env.get("WORLD_SIZE", "1")) < 2:
        return None
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start the processes with "
                         "torchrun (or set MASTER_ADDR and MASTER_PORT)")
    world = int(env["WORLD_SIZE"])
    return int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))


def resolve_device(requested: str | None, local_rank: int = 0, local_world: int = 1) -> torch.device | None:
    """The device of one process: None (CPU, today's path), or ``cuda:local_rank``.

    ``requested`` is ``"cpu"`` (or None), ``"cuda"`` (one GPU per process on
    this machine, else an error) or ``"auto"`` (CUDA when every process on this
    machine gets a GPU, else the CPU). All processes of a run must end up on
    the same kind of device (one backend): on machines of which only some
    have GPUs, give ``"cpu"`` or ``"cuda"`` rather than ``"auto"``.
    """
    if requested not in (None, "cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {requested!r}")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and n_gpus < local_world:
        raise ValueError(f"device 'cuda' needs one GPU per process: {local_world} process(es) on this machine, "
                         f"{n_gpus} GPU(s) visible; use device 'cpu' or fewer processes")
    if requested == "cuda" or (requested == "auto" and n_gpus >= local_world):
        return torch.device("cuda", local_rank)
    return None


class _Recorder:
    """A tally that keeps each batch's outputs and targets (CPU), to be gathered and tallied on every rank."""

    def __init__(self):
        self.parts: list = []

    def tally(self) -> "_Recorder":
        return self

    def add(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.parts.append((outputs.detach().cpu(), targets.cpu()))

    def result(self) -> list:
        return self.parts


class Local:
    """One training process: the hooks of the loop, each the plain single-process step.

    Parameters
    ----------
    device : str, optional
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"`` (see :func:`resolve_device`).
    """

    rank, world_size, is_main = 0, 1, True

    def __init__(self, device: str | None = None):
        self.device = resolve_device(device)
        self.comm_time = 0.0

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this process's device (and, in a group, synchronised)."""
        return model if self.device is None else model.to(self.device)

    def seed(self, seed: int, step: int) -> None:
        """Seed the random stream of this rank (dropout); rank 0 keeps the single-process stream."""

    def shard(self, batches: Sequence[Sequence[int]], allow_empty: bool = False) -> list:
        """This rank's share of each index batch."""
        return list(batches)

    def begin_step(self, n_local: int) -> int:
        """Start a step on ``n_local`` images; returns the global batch size."""
        return n_local

    def scale(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        """The local loss weighted so that the ranks' gradients sum to the global batch's."""
        return loss

    def reduce(self, model: torch.nn.Module, loss: float, acc: float, n_local: int) -> tuple[float, float]:
        """Sum the gradients over the ranks; the global batch's loss and score."""
        return loss, acc

    def stop_rule(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """The stop test the loop polls after each step (in a group: the ranks' agreed decision)."""
        return should_stop

    def evaluate(self, model, loader, n_classes: int, task):
        """:func:`~napari_aprnet.training.evaluate.evaluate` over this rank's shares, combined over the ranks."""
        return evaluate(model, loader, n_classes, task=task)

    def broadcast_state(self, model: torch.nn.Module) -> None:
        """Make every rank's weights and buffers those of rank 0."""

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 and its result (or exception) given to every rank."""
        return fn()

    def close(self) -> None:
        """Leave the process group."""


class Group(Local):
    """One rank of a process group (see the module docstring).

    Parameters
    ----------
    rank, world_size, local_rank, local_world : int
        This process's place among all processes and among those on its machine.
    device : str, optional
        As for :class:`Local`; CUDA processes use NCCL, CPU processes gloo.
    init_method : str
        ``"env://"`` (torchrun: ``MASTER_ADDR``/``MASTER_PORT``) or ``"file://..."`` (the local launcher).
    channel : optional
        The local launcher's link (stop requests, flow control); None under torchrun.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, local_world: int, device: str | None = None,
                 *, init_method: str = "env://", channel=None):
        self.rank, self.world_size, self.is_main = int(rank), int(world_size), int(rank) == 0
        self.device = resolve_device(device, local_rank, local_world)
        self.comm_time = 0.0
        self.channel = channel
        self.signalled = False
        self._stop = False
        self._user_stop: Callable[[], bool] = lambda: False
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, _DEFAULT_TIMEOUT_S)))
        backend = "gloo"
        if self.device is not None:
            torch.cuda.set_device(self.device)
            backend = "nccl"
        dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world_size,
                                timeout=timeout)
        self._handlers = self._catch_signals((signal.SIGINT,) if channel is not None else
                                             (signal.SIGINT, signal.SIGTERM))

    def _catch_signals(self, signums) -> dict:
        """Ctrl-C (and torchrun's SIGTERM) become a stop request, agreed by all ranks at the next step."""
        def handler(*_):
            self.signalled = True
        old = {}
        for s in signums:
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: the caller's stop callable is the only stop
                pass
        return old

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = convert_sync_batchnorm(super().setup_model(model))
        self.broadcast_state(model)
        return model

    def seed(self, seed: int, step: int) -> None:
        if self.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank, step]).generate_state(1)[0]))

    def shard(self, batches: Sequence[Sequence[int]], allow_empty: bool = False) -> list:
        out = []
        for b in batches:
            if len(b) < self.world_size and not allow_empty:
                raise ValueError(f"a batch of {len(b)} image(s) cannot be shared by {self.world_size} processes "
                                 "(each needs at least one for batch norm); use a batch size and a number of "
                                 "training images whose remainder is 0 or at least the number of processes")
            lo, hi = split_bounds(len(b), self.rank, self.world_size)
            if hi > lo:
                out.append(list(b[lo:hi]))
        return out

    def begin_step(self, n_local: int) -> int:
        requested = self.signalled or self._user_stop() or (self.channel is not None
                                                             and self.channel.stop_requested())
        ahead = self.channel is not None and self.channel.ahead()
        flags = self._tensor([float(n_local), float(requested), float(ahead)])
        t0 = time.perf_counter()
        dist.all_reduce(flags)
        n_global, stop, wait = flags.tolist()
        self.comm_time = time.perf_counter() - t0
        self._stop = stop > 0
        if wait > 0 and self.channel is not None:
            self.channel.wait_for_consumer()
        return int(n_global)

    def scale(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        return loss * (n_local / n_global)

    def reduce(self, model: torch.nn.Module, loss: float, acc: float, n_local: int) -> tuple[float, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        extra = params[0].grad.new_tensor([loss * n_local, acc * n_local, float(n_local)])
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [extra])
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        loss_sum, acc_sum, n = flat[-3:].tolist()
        self.comm_time += time.perf_counter() - t0
        a = 0
        for p in params:
            p.grad.copy_(flat[a:a + p.numel()].view_as(p))
            a += p.numel()
        return loss_sum / n, acc_sum / n

    def stop_rule(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        self._user_stop = should_stop
        return lambda: self._stop

    def evaluate(self, model, loader, n_classes: int, task):
        parts = evaluate(model, loader, n_classes, task=_Recorder())
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, parts)
        tally = task.tally()
        for rank_parts in gathered:
            for outputs, targets in rank_parts:
                tally.add(outputs, targets)
        return tally.result()

    def broadcast_state(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)

    def from_main(self, fn: Callable[[], Any]) -> Any:
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:  # every rank raises it
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        for s, handler in self._handlers.items():
            signal.signal(s, handler)
        self._handlers = {}
        if dist.is_initialized():
            dist.destroy_process_group()
