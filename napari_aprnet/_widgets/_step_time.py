"""The expected training time of the Train widget: a few steps of its settings timed in the background.

No table of constants: the seconds per step depend on the network, image
size, batch, E and the machine (and its load), so they are measured here, on
this machine, once the settings have rested for a second, and kept per
setting. The timing runs in a separate process
(``python -m napari_aprnet.training.timing``, see
:func:`napari_aprnet.training.timing.time_training_steps`): it cannot race
the widget's own torch threads, and cancelling it (a new setting, Start,
closing) kills it at once.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QProcess, QTimer
from qtpy.QtWidgets import QApplication

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
    """Seconds per training step of the widget's settings, timed in a child process.

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
        self.process: QProcess | None = None
        self._key: tuple | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._start)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.cancel)

    @property
    def running(self) -> bool:
        """True while a timing process runs."""
        return self.process is not None

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
        return "estimating the time (timing a few steps in a background process)"

    def cancel(self) -> None:
        """Stop a pending or running timing (e.g. when training starts); its result is dropped."""
        self._timer.stop()
        self._key = None
        process, self.process = self.process, None
        if process is not None:
            process.finished.disconnect()
            process.kill()
            process.waitForFinished(2000)

    def _start(self) -> None:
        try:
            made = self.make_config()
        except RuntimeError:  # the widget was closed meanwhile
            return
        if made is None or made[1] in self.seconds:
            return
        config, key = made
        self._key = key
        process = QProcess()
        process.setProcessChannelMode(QProcess.SeparateChannels)
        process.finished.connect(lambda *_: self._ended(process, key))
        self.process = process
        process.start(sys.executable, ["-m", "napari_aprnet.training.timing", json.dumps(config.to_dict()),
                                       str(TIMED_STEPS)])

    def _ended(self, process: QProcess, key: tuple) -> None:
        if process is not self.process:
            return
        self.process, self._key = None, None
        out = bytes(process.readAllStandardOutput()).decode(errors="replace").strip().splitlines()
        try:
            self.seconds[key] = float(out[-1])
        except (IndexError, ValueError):
            err = bytes(process.readAllStandardError()).decode(errors="replace").strip().splitlines()
            self.failed[key] = err[-1] if err else f"exit code {process.exitCode()}"
        try:
            self.changed()
        except RuntimeError:  # the widget was closed meanwhile
            pass
