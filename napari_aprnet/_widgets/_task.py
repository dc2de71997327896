"""Background jobs of the dock widgets: a generator in a worker thread, with progress, cancel and results.

The results are shown on the main thread; :meth:`BackgroundTask.in_turns`
spreads that work over several event-loop turns so the GUI repaints and
reacts between the parts (e.g. one layer added per turn).
"""
from __future__ import annotations

import gc
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

__all__ = ["BackgroundTask", "Progress", "TaskError", "notify"]

#: Delay (ms) before each step of :meth:`BackgroundTask.in_turns`. A zero delay posts an event, and Qt
#: runs posted events back to back before any due timer: two steps then stall the timers as one.
TURN_DELAY_MS = 1


def _after_posted_work(callback: Callable[[], None]) -> None:
    """Run ``callback`` in a turn of its own, after the work already posted and the timers then due.

    A step often posts work of its own (matplotlib's ``draw_idle``, a Qt
    layout request): that runs as a posted event right after the step. A timer
    armed by the step would be due by then and run straight after it, so the
    posted work and the next step would stall the GUI as one. Arming the timer
    from a posted event of our own, queued behind that work, lets every timer
    that fell due meanwhile (a repaint, an animation, user input) run first.
    """
    QTimer.singleShot(0, lambda: QTimer.singleShot(TURN_DELAY_MS, callback))


def notify(message: str, level: str = "error") -> None:
    """Show a napari notification (``level`` is "error", "warning" or "info")."""
    {"error": show_error, "warning": show_warning, "info": show_info}[level](message)


class TaskError(Exception):
    """A ``RuntimeError`` raised inside a background job, re-raised as a plain ``Exception``.

    superqt's workers treat a ``RuntimeError`` as "the worker was deleted" and
    then emit neither ``errored`` nor ``finished``; re-raising keeps the
    widget informed.
    """


def _guarded(func: Callable[..., Generator], args: tuple, kwargs: dict, cancel: threading.Event):
    """Run the job generator; a cancellation ends it quietly, RuntimeErrors become TaskError."""
    from napari_aprnet._native import CancelledError

    try:
        return (yield from func(*args, cancel=cancel, **kwargs))
    except CancelledError:
        return None
    except RuntimeError as exc:
        raise TaskError(str(exc) or type(exc).__name__) from exc


def _unless_deleted(handler: Callable, cancel: threading.Event,
                    fallback: Callable[[], None] | None = None) -> Callable:
    """Wrap a worker signal handler: if the widget was closed meanwhile, cancel the job quietly."""

    def wrapped(*args: Any) -> None:
        try:
            handler(*args)
        except RuntimeError as exc:
            if "has been deleted" not in str(exc):
                raise
            cancel.set()
            if fallback is not None:
                fallback()

    return wrapped


def full_collection_near() -> bool:
    """True when one of Python's next generation-1 garbage collections may start a full one.

    A full (generation 2) collection walks every object of the process: with
    napari, vispy and torch loaded, 0.1-0.2 s on the main thread. Adding a
    napari layer allocates enough to run one generation-1 collection, so a
    full one due now would land on top of the next step. False when automatic
    collection is off or has no generation-2 threshold (Python 3.14's
    incremental collector).
    """
    threshold = gc.get_threshold()[2]
    return gc.isenabled() and threshold > 0 and gc.get_count()[2] >= threshold - 1


class Progress(dict):
    """A progress message yielded by a background generator: ``Progress(done, total, text)``."""

    def __init__(self, done: float, total: float, text: str = "", **extra: Any):
        super().__init__(done=done, total=total, text=text, **extra)


class BackgroundTask:
    """Run one generator at a time in a napari ``thread_worker`` with progress and cancel.

    The generator function receives a ``threading.Event`` as its ``cancel``
    keyword (set when the user cancels); it should pass ``cancel.is_set`` to
    long core calls and yield often. Yielded :class:`Progress` objects drive
    the progress bar and status text; anything else goes to ``on_yield``.

    Parameters
    ----------
    name : str
        Short name used in messages ("Conversion", "Training", ...).
    progress : ProgressBar
    status : Label
    cancel_button : PushButton, optional
        Enabled while a task runs; clicking it cancels.
    quit_on_cancel : bool
        Also abort the worker at its next yield (default). False lets the
        generator see the cancel event and finish on its own (e.g. to save).
    """

    def __init__(self, name: str, progress: ProgressBar, status: Label,
                 cancel_button: PushButton | None = None, quit_on_cancel: bool = True):
        self.name, self.progress, self.status, self.cancel_button = name, progress, status, cancel_button
        self.quit_on_cancel = quit_on_cancel
        self.worker = None
        self.cancel_event = threading.Event()
        self.cancel_text = f"{name}: cancelling..."
        self.error: BaseException | None = None
        self._turns: deque[Callable[[], None]] = deque()  # see in_turns
        self._after_turns: Callable[[], None] | None = None
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        """True while a worker is alive or its results are still being shown (:meth:`in_turns`)."""
        return self.worker is not None or bool(self._turns)

    def in_turns(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` one per event-loop turn, after the current handler.

        The GUI repaints, handles input and runs its timers between two
        steps, so no single stall holds them all (e.g. adding two napari
        layers); work a step posts (a plot's deferred redraw) runs before the
        next step, with the timers that fell due meanwhile in between. A full
        garbage collection that is due (:func:`full_collection_near`) runs in
        a turn of its own before the next step, not inside it. The task
        counts as running until the last step ran, and ``on_finish`` waits
        for it. If the widget is deleted meanwhile, the remaining steps are
        dropped.
        """
        start = not self._turns
        self._turns.extend(steps)
        if start and self._turns:
            _after_posted_work(self._next_turn)

    def _next_turn(self) -> None:
        if not self._turns:
            return
        if full_collection_near():
            gc.collect()
            _after_posted_work(self._next_turn)
            return
        step = self._turns.popleft()
        try:
            step()
        except RuntimeError as exc:
            self._turns.clear()
            if "has been deleted" not in str(exc):  # else: the widget or viewer was closed meanwhile
                raise
        finally:
            if self._turns:
                _after_posted_work(self._next_turn)
            elif self._after_turns is not None:
                after, self._after_turns = self._after_turns, None
                after()

    def start(self, func: Callable[..., Generator], *args: Any,
              on_yield: Callable[[Any], None] | None = None,
              on_return: Callable[[Any], None] | None = None,
              on_finish: Callable[[], None] | None = None, **kwargs: Any):
        """Start ``func(*args, cancel=event, **kwargs)`` in a worker thread; return the worker."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise RuntimeError(f"{self.name} is already running")
        self.cancel_event = threading.Event()
        self.error = None
        # _ignore_errors: errors reach ``errored`` below only; otherwise they are also re-raised on the
        # main thread (a second notification with a traceback, and an abort outside napari.run)
        worker = create_worker(_guarded, func, args, kwargs, self.cancel_event, _start_thread=False,
                               _ignore_errors=True)

        def yielded(value):
            if self.cancel_event.is_set() and isinstance(value, Progress):
                return  # keep "stopping..." on screen
            if isinstance(value, Progress):
                self._show_progress(value)
            elif on_yield is not None:
                on_yield(value)

        def errored(exc):
            if self.cancel_event.is_set():  # the core raised because we cancelled
                return
            self.error = exc
            self.status.value = f"{self.name} failed: {exc}"
            notify(f"{self.name} failed: {exc}")

        def returned(value):
            if on_return is not None and not self.cancel_event.is_set():
                on_return(value)

        def finished():
            if self._turns:  # results still being shown: finish after the last step
                self._after_turns = on_finished
                return
            self.worker = None
            if self.cancel_button is not None:
                self.cancel_button.enabled = False
            self.progress.max = max(self.progress.max, 1)
            if self.cancel_event.is_set() and self.error is None:
                self.status.value = f"{self.name} cancelled"
            elif self.error is None:
                self.progress.value = self.progress.max
            if on_finish is not None:
                on_finish()

        def finished_after_close():
            self.worker = None

        worker.yielded.connect(_unless_deleted(yielded, self.cancel_event))
        worker.errored.connect(_unless_deleted(errored, self.cancel_event))
        worker.returned.connect(_unless_deleted(returned, self.cancel_event))
        on_finished = _unless_deleted(finished, self.cancel_event, finished_after_close)
        worker.finished.connect(on_finished)
        self.worker = worker
        if self.cancel_button is not None:
            self.cancel_button.enabled = True
        self.progress.max, self.progress.value = 0, 0  # busy until the first progress message
        self.status.value = f"{self.name} running..."
        worker.start()
        return worker

    def _show_progress(self, p: Progress) -> None:
        total = int(p["total"])
        self.progress.max = max(total, 0)
        if total > 0:
            self.progress.value = int(min(p["done"], total))
        if p["text"]:
            self.status.value = p["text"]

    def cancel(self, *_: Any) -> None:
        """Ask the running task to stop (takes effect at its next poll or yield)."""
        if self.worker is not None:
            self.cancel_event.set()
            self.status.value = self.cancel_text
            if self.quit_on_cancel:
                self.worker.quit()
            if getattr(self.worker, "is_paused", False):  # a paused worker must run to see the request
                self.worker.resume()
