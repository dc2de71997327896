"""The local launcher: ``aprnet train --nproc N`` runs N training processes on this machine.

:func:`launch` spawns the processes, which join one process group (see
:class:`~napari_aprnet.training.distributed.Group`) through a file in a
temporary folder, and relays what rank 0 yields. The link between the
processes and the launcher (:class:`_Channel`) carries the messages, the
stop request and the flow control that pauses the ranks while the consumer
(a paused GUI) falls behind. A failing or dying process stops the others.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_module
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from napari_aprnet import _native
from napari_aprnet.training.distributed import Group

__all__ = ["launch", "DistributedError"]

_MAX_AHEAD = 2         # events rank 0 may run ahead of the consumer before all ranks wait for it
_POLL_S = 0.1
_STOP_GRACE_S = 300.0  # a stopped run finishes its step, recalibrates batch norm and saves
_USER_ERRORS = (ValueError, TypeError, OSError)


class DistributedError(RuntimeError):
    """A training process failed or died; the launcher stopped the others."""


@dataclass
class _Channel:
    """The link between launched processes and the launcher: messages, stop request, flow control."""

    queue: Any
    stop: Any      # multiprocessing Event: the launcher asks the ranks to stop
    sent: Any      # multiprocessing Value: events rank 0 sent
    consumed: Any  # multiprocessing Value: events the launcher's consumer took
    parent_pid: int = 0

    def send(self, payload) -> None:
        with self.sent.get_lock():
            self.sent.value += 1
        self.queue.put(("event", 0, _pack(payload)))

    def ahead(self) -> bool:
        return self.sent.value - self.consumed.value > _MAX_AHEAD

    def stop_requested(self) -> bool:
        return self.stop.is_set() or os.getppid() != self.parent_pid  # an orphan stops (and saves)

    def wait_for_consumer(self) -> None:
        while self.ahead() and not self.stop_requested():
            time.sleep(0.02)


def _pack(obj) -> bytes:
    """Plain pickle bytes: tensors travel as copies (torch's shared-memory handles die with their process)."""
    return pickle.dumps(obj)


def _limit_threads(nproc: int) -> None:
    """Share the cores: each process gets cores / nproc threads unless OMP_NUM_THREADS says otherwise."""
    n = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else \
        max(1, (os.cpu_count() or 1) // nproc)
    torch.set_num_threads(max(1, n))
    _native.set_num_threads(max(1, n))


def _error_message(exc: BaseException) -> tuple[str, Any]:
    """(text, the pickled exception or None) describing a failure of a rank."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return text, _pack(exc)
    except Exception:
        return text, None


def _child(rank: int, nproc: int, store: str, body, args: tuple, device, channel: _Channel) -> None:
    """Entry of a launched process: join the group, run ``body(group, *args)``, send rank 0's payloads."""
    _limit_threads(nproc)
    group = None
    try:
        group = Group(rank, nproc, rank, nproc, device, init_method=f"file://{store}", channel=channel)
        for payload in body(group, *args):
            if rank == 0:
                channel.send(payload)
        channel.queue.put(("exit", rank, None))
    except BaseException as exc:
        channel.queue.put(("error", rank, _error_message(exc)))
        sys.exit(1)
    finally:
        if group is not None:
            group.close()


def _failure(rank: int, nproc: int, detail: tuple[str, Any] | None, exitcode: int | None) -> BaseException:
    """The exception the launcher raises for a failed rank (a rank's own user error keeps its type)."""
    exc = None
    if detail is not None and detail[1] is not None:
        try:
            exc = pickle.loads(detail[1])
        except Exception:  # an exception class that does not unpickle: its text below still tells
            exc = None
    if isinstance(exc, _USER_ERRORS):
        return exc
    how = detail[0].rstrip() if detail is not None else (
        f"it died (killed by signal {-exitcode})" if exitcode is not None and exitcode < 0
        else f"it exited with code {exitcode} without reporting an error (killed, out of memory, or the "
             "re-import of a script failed: a script calling train(nproc=N) must guard its top level with "
             "`if __name__ == \"__main__\":`)")
    return DistributedError(f"training process {rank} of {nproc} failed; the others were stopped "
                            f"(a run folder keeps its last checkpoint: continue it with resume):\n{how}")


def _check_ended(procs, done: set, ended_at: dict) -> None:
    """Raise for a process that ended over a second ago without reporting its end (killed, crashed).

    Called only while no message is waiting: a report may sit behind events the consumer has not taken yet.
    """
    now = time.monotonic()
    for rank, p in enumerate(procs):
        if rank in done or p.exitcode is None:
            continue
        if now - ended_at.setdefault(rank, now) > 1.0:  # its last message would have arrived by now
            raise _failure(rank, len(procs), None, p.exitcode)


def _relay(procs, channel: _Channel, should_stop: Callable[[], bool]) -> Iterator:
    """Yield rank 0's payloads until every process ended; raise when one fails."""
    done: set = set()
    ended_at: dict = {}
    interrupted = False
    while len(done) < len(procs):
        try:
            if should_stop():
                channel.stop.set()
            kind, rank, payload = channel.queue.get(timeout=_POLL_S)
        except queue_module.Empty:
            _check_ended(procs, done, ended_at)
            continue
        except KeyboardInterrupt:  # first Ctrl-C: stop cleanly (the ranks save); second: abort
            if interrupted:
                raise
            interrupted = True
            channel.stop.set()
            continue
        if kind == "event":
            yield pickle.loads(payload)
            with channel.consumed.get_lock():
                channel.consumed.value += 1
        elif kind == "exit":
            done.add(rank)
        else:
            raise _failure(rank, len(procs), payload, None)


def _shutdown(procs, channel: _Channel, grace: float) -> None:
    """Ask the processes to stop, wait up to ``grace`` seconds (draining messages), then kill what is left."""
    channel.stop.set()
    deadline = time.monotonic() + grace
    try:
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            try:
                channel.queue.get(timeout=_POLL_S)
            except queue_module.Empty:
                pass
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            if p.pid is not None:  # started
                p.join(timeout=10)


def launch(body: Callable[..., Iterator], args: tuple, nproc: int, *, device: str | None = None,
           should_stop: Callable[[], bool] = lambda: False) -> Iterator:
    """Run ``body(group, *args)`` in ``nproc`` new local processes; yield what rank 0's ``body`` yields.

    ``body`` must be a module-level generator function (it is pickled by
    name). The processes join a gloo (CPU) or NCCL (``device="cuda"``) group
    through a file in a temporary folder. ``should_stop`` is polled while
    waiting for messages; when it says so (or on the first Ctrl-C) the ranks
    are asked to stop together after their current step. If the consumer of
    this generator falls behind (a paused GUI), the ranks wait for it between
    steps. A failing or dying process stops the others; then its error is
    raised (user errors such as ``ValueError`` keep their type, anything else
    becomes :class:`DistributedError`). Closing the generator stops the ranks
    cleanly (up to 5 minutes for the step, batch-norm recalibration and the
    checkpoint), then kills what is left.
    """
    if nproc < 2:
        raise ValueError(f"launch needs 2 or more processes, got {nproc}")
    ctx = mp.get_context("spawn")
    channel = _Channel(ctx.Queue(), ctx.Event(), ctx.Value("q", 0), ctx.Value("q", 0), os.getpid())
    store_dir = tempfile.mkdtemp(prefix="aprnet-dist-")
    store = os.path.join(store_dir, "store")
    procs = [ctx.Process(target=_child, args=(r, nproc, store, body, args, device, channel), name=f"aprnet-rank{r}")
             for r in range(nproc)]
    grace = _STOP_GRACE_S
    try:
        for p in procs:
            p.start()
        yield from _relay(procs, channel, should_stop)
        grace = 10.0  # every rank reported its end
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):  # a failure or a second Ctrl-C: no waiting
            grace = 0.0
        raise
    finally:
        _shutdown(procs, channel, grace)
        shutil.rmtree(store_dir, ignore_errors=True)
