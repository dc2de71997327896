"""BackgroundTask.in_turns (issue 13, stalls): steps in separate event-loop turns, Qt timers run between
them, and a full garbage collection that is due runs alone, not inside a step. Run under Xvfb with pytest-qt."""
from __future__ import annotations

import gc

import pytest

WAIT = 10_000


@pytest.fixture
def task(qapp):
    from magicgui.widgets import Label, ProgressBar

    from napari_aprnet._widgets._task import BackgroundTask

    return BackgroundTask("Job", ProgressBar(), Label())


@pytest.fixture
def ticks(qapp):
    """Events list; a 1 ms QTimer appends "tick" to it whenever the event loop runs its timers."""
    from qtpy.QtCore import QTimer

    events: list[str] = []
    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(lambda: events.append("tick") if events[-1:] != ["tick"] else None)
    timer.start()
    yield events
    timer.stop()


def _busy(ms: float) -> None:
    import time

    t = time.perf_counter()
    while time.perf_counter() - t < ms / 1000:
        pass


def test_timers_run_between_steps(task, ticks, qtbot):
    for name in "abc":
        task.in_turns(lambda name=name: (_busy(30), ticks.append(name)))
    assert task.running
    qtbot.waitUntil(lambda: not task.running, timeout=WAIT)
    steps = [e for e in ticks if e != "tick"]
    assert steps == ["a", "b", "c"]
    for first, second in ("ab", "bc"):  # a timer ran after each step, before the next
        assert "tick" in ticks[ticks.index(first):ticks.index(second)]


def test_work_a_step_posts_does_not_join_the_next_step(task, qtbot):
    """A step that posts work (as matplotlib's draw_idle does): due timers run between that work and the next step."""
    from qtpy.QtCore import QTimer

    events: list[str] = []
    ticker = QTimer()
    ticker.setInterval(10)

    def on_tick():
        events.append("tick")
        if events.count("tick") == 1:  # start right after a tick: the ticker is next due in 10 ms
            task.in_turns(lambda: QTimer.singleShot(0, lambda: (_busy(30), events.append("posted"))),
                          lambda: events.append("b"))

    ticker.timeout.connect(on_tick)
    ticker.start()
    try:
        qtbot.waitUntil(lambda: "b" in events, timeout=WAIT)
    finally:
        ticker.stop()
    assert events.index("posted") < events.index("b")
    assert "tick" in events[events.index("posted"):events.index("b")]


def test_a_due_full_collection_runs_in_a_turn_of_its_own(task, ticks, qtbot, monkeypatch):
    from napari_aprnet._widgets import _task

    due = iter([True])  # due at the first step only
    monkeypatch.setattr(_task, "full_collection_near", lambda: next(due, False))

    def on_gc(phase, info):
        if phase == "stop" and info["generation"] == 2:
            ticks.append("full gc")

    gc.callbacks.append(on_gc)
    try:
        task.in_turns(lambda: ticks.append("a"), lambda: ticks.append("b"))
        assert "full gc" not in ticks  # nothing runs before the event loop does
        qtbot.waitUntil(lambda: not task.running, timeout=WAIT)
    finally:
        gc.callbacks.remove(on_gc)
    assert [e for e in ticks if e != "tick"] == ["full gc", "a", "b"]
    assert "tick" in ticks[ticks.index("full gc"):ticks.index("a")]


def test_full_collection_near_follows_the_collector_state(monkeypatch):
    from napari_aprnet._widgets._task import full_collection_near

    old = gc.get_threshold()
    monkeypatch.setattr(gc, "get_count", lambda: (0, 0, old[2] - 1))
    assert full_collection_near()  # one generation-1 collection away from a full one
    monkeypatch.setattr(gc, "get_count", lambda: (0, 0, old[2] - 2))
    assert not full_collection_near()
    monkeypatch.setattr(gc, "get_count", lambda: (0, 0, old[2] + 5))
    assert full_collection_near()
    enabled = gc.isenabled()
    gc.disable()
    try:
        assert not full_collection_near()  # no automatic collections at all
    finally:
        if enabled:
            gc.enable()
