"""The expected training time of the Train widget: a few steps of its settings timed in the background.

No table of constants: the seconds per step depend on the network, image
size, batch, E and the machine (and its load), so they are measured here, on
this machine, with :func:`napari_aprnet.training.timing.time_training_steps`
once the settings have rested for a second, and kept per setting.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

__all__ = ["StepTimeEstimate", "duration_text"]

#: Steps timed per setting (after one warm-up step).
TIMED_STEPS = 2


def duration_text(seconds: float) -> str:
    """``"about 40 s"``, ``"about 12 min"``, ``"about 3.5 h"``."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


class StepTimeEstimate:
    """Seconds per training step of the widget's settings, timed in a worker thread.

    Parameters
    ----------
    make_config : callable
        The widget's current :class:`TrainConfig` and a hashable key of what
        sets the step time, or None when nothing should be timed (e.g. a
        folder dataset, or training is running).
    changed : callable
        Called on the main thread when a timing ended (to refresh the line).
    delay_ms : int
        Quiet time after the last settings change before timing starts.
    """

    def __init__(self, make_config: Callable[[], tuple[Any, tuple] | None], changed: Callable[[], None],
                 delay_ms: int = 1000):
        self.make_config, self.changed = make_config, changed
        self.seconds: dict[tuple, float] = {}
        self.failed: dict[tuple, str] = {}
        self.worker = None
        self._key: tuple | None = None
        self._stop = threading.Event()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._start)

    def text(self, steps: int, key: tuple | None) -> str:
        """The expected time of ``steps`` steps for ``key`` (timing it soon if not known yet)."""
        if key is None:
            return ""
        if key in self.seconds:
            per = self.seconds[key]
            return (f"{duration_text(steps * per)} here ({per:.2f} s per step, timed on this machine "
                    "in one process)")
        if key in self.failed:
            return f"time unknown (timing a step failed: {self.failed[key]})"
        if self._key != key:
            self.cancel()
            self._timer.start()
        return "estimating the time (timing a few steps in the background)..."

    def cancel(self) -> None:
        """Stop a pending or running timing (e.g. when training starts); its result is dropped."""
        self._timer.stop()
        self._stop.set()
        self._key = None

    def _start(self) -> None:
        from napari_aprnet.training.timing import time_training_steps

        try:
            made = self.make_config()
        except RuntimeError:  # the widget was closed meanwhile
            return
        if made is None or made[1] in self.seconds:
            return
        config, key = made
        if self.worker is not None:  # the previous one is still stopping: try again later
            self._timer.start()
            return
        self._key, self._stop = key, threading.Event()
        stop = self._stop
        worker = create_worker(time_training_steps, config, TIMED_STEPS, stop, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(lambda sec: self._ended(key, stop, sec, None))
        worker.errored.connect(lambda exc: self._ended(key, stop, None, str(exc) or type(exc).__name__))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def _ended(self, key: tuple, stop: threading.Event, seconds: float | None, error: str | None) -> None:
        if stop.is_set():
            return
        if seconds is not None:
            self.seconds[key] = seconds
        else:
            self.failed[key] = error or "no training step ran"
        self._key = None
        try:
            self.changed()
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _finished(self) -> None:
        self.worker = None
