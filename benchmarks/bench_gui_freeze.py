"""Main-thread stalls of the napari widgets while results arrive (issue 13, "freezes").

A 10 ms QTimer records the gap between its ticks while a widget works; a
gap over 10 ms is a stall of the main thread (the GUI cannot repaint or react).
Cases: Convert adds the result layers of a 2048x2048 image and of a
64x1024x1024 stack; Tune E sweeps a 3D stack. Reports the largest stall and
the stalls over 200 ms (the goal) per case.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_gui_freeze.py [--small] [--out F]
        [--before B.json --markdown results/gui_freeze.md]

Each case also records the main thread's wall and CPU time in every call that
adds a layer (``viewer.add_image`` / ``add_labels``, napari's own layer and
visual set-up) and in every event-loop turn the widget shows results in
(``BackgroundTask.in_turns``): the parts of the stalls the widgets choose.

It also records Python's full (generation 2) garbage collections on the main
thread (``full_gcs``, wall / CPU ms each; with napari, vispy and torch
loaded each walks about 0.3 M objects) and whether one fell in the largest
gap (``largest_gap_full_gc``): a collection landing on a result turn made
the Tune E stall (see results/gui_freeze.md).

``--trace`` prints, for each case, the Qt event deliveries (receiver class,
event type, wall and CPU ms; top level, 1 ms or more) within its largest gap:
which turn, paint or layout request the stall is made of.

``--before`` takes the JSON of an earlier run (e.g. of the previous version,
with its package first on ``PYTHONPATH``) and ``--markdown`` writes both
side by side. ``--profile N`` prints the N most expensive functions (cumulative
time, cProfile of the main thread only) of each case: what the stalls are made of.

Run it on an otherwise idle machine: on a loaded one the timer's gaps also
count the time the scheduler gives to other processes.
"""
from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from pathlib import Path

PLUGIN = "napari-aprnet"


class StallMeter:
    """Gaps between the ticks of a 10 ms QTimer, in ms, while running.

    Also the main thread's own CPU time within each gap (``time.thread_time``):
    on a machine shared with other jobs a wall-clock gap also counts the time
    the scheduler gave to other processes; the CPU time does not (it is what
    the main thread itself spent, close to the gap of an idle machine, less
    any waits for the GIL).
    """

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms
        self.gaps: list[float] = []
        self.cpu_gaps: list[float] = []
        self.gap_ends: list[float] = []
        self.full_gcs: list[tuple[float, float, float]] = []  # (start, wall ms, CPU ms) on the main thread
        self._last = None
        self._last_cpu = None
        self._gc_start = (0.0, 0.0)
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if self._last is not None:
            self.gaps.append((now - self._last) * 1000)
            self.cpu_gaps.append((cpu - self._last_cpu) * 1000)
            self.gap_ends.append(now)
        self._last, self._last_cpu = now, cpu

    def _on_gc(self, phase: str, info: dict) -> None:
        if info["generation"] != 2 or threading.current_thread() is not threading.main_thread():
            return
        if phase == "start":
            self._gc_start = (time.perf_counter(), time.thread_time())
        else:
            t, c = self._gc_start
            self.full_gcs.append((t, (time.perf_counter() - t) * 1000, (time.thread_time() - c) * 1000))

    def start(self) -> None:
        self.gaps, self.cpu_gaps, self.gap_ends, self.full_gcs, self._last = [], [], [], [], None
        gc.callbacks.append(self._on_gc)
        self.timer.start()

    def largest_gap(self, cpu: bool = False) -> tuple[float, float]:
        """Start and end (``time.perf_counter``) of the largest gap (in CPU time: ``cpu``), (0, 0) without one."""
        if not self.gaps:
            return 0.0, 0.0
        k = max(range(len(self.gaps)), key=(self.cpu_gaps if cpu else self.gaps).__getitem__)
        return self.gap_ends[k] - self.gaps[k] / 1000, self.gap_ends[k]

    def stop(self) -> dict:
        self.timer.stop()
        gc.callbacks.remove(self._on_gc)
        stalls = [g - self.interval for g in self.gaps]
        start, end = self.largest_gap()
        in_largest = any(start <= t <= end for t, _, _ in self.full_gcs) if self.gaps else False
        return {"max_stall_ms": round(max(stalls, default=0.0), 1),
                "stalls_over_200ms": [round(s, 1) for s in stalls if s > 200],
                "max_cpu_ms": round(max(self.cpu_gaps, default=0.0), 1),
                "cpu_over_200ms": [round(c, 1) for c in self.cpu_gaps if c > 200],
                "full_gcs": [[round(w, 1), round(c, 1)] for _, w, c in self.full_gcs],
                "largest_gap_full_gc": in_largest,
                "ticks": len(self.gaps)}


class CallTimer:
    """Wall and main-thread CPU time (ms) of the viewer's add-layer calls and of the widgets' result turns.

    Wraps ``ViewerModel.add_image`` / ``add_labels`` and the steps given to
    ``BackgroundTask.in_turns`` (class attributes, for this process only).
    """

    def __init__(self):
        from napari.components import ViewerModel

        from napari_aprnet._widgets._task import BackgroundTask

        self.adds: list[dict] = []
        self.turns: list[dict] = []
        for kind in ("image", "labels"):
            method = getattr(ViewerModel, f"add_{kind}")
            setattr(ViewerModel, f"add_{kind}", self._timed_add(method, kind))
        in_turns = BackgroundTask.in_turns
        BackgroundTask.in_turns = lambda task, *steps: in_turns(task, *(self._timed_turn(s) for s in steps))

    def _timed_add(self, method, kind: str):
        def add(viewer, data=None, **kwargs):
            t, c = time.perf_counter(), time.thread_time()
            out = method(viewer, data, **kwargs)
            self.adds.append({"kind": kind, "name": kwargs.get("name"),
                              "wall_ms": round((time.perf_counter() - t) * 1000, 1),
                              "cpu_ms": round((time.thread_time() - c) * 1000, 1)})
            return out
        return add

    def _timed_turn(self, step):
        def turn():
            t, c = time.perf_counter(), time.thread_time()
            try:
                step()
            finally:
                self.turns.append({"wall_ms": round((time.perf_counter() - t) * 1000, 1),
                                   "cpu_ms": round((time.thread_time() - c) * 1000, 1)})
        return turn

    def take(self) -> dict:
        out = {"adds": self.adds, "turns": self.turns}
        self.adds, self.turns = [], []
        return out


def tracing_app():
    """Create the QApplication (before napari does) as one that records its top-level event deliveries.

    While ``app.recording`` is true, each delivery of 1 ms or more that is not
    nested in another is appended to ``app.records`` as ``(start, wall ms, CPU
    ms, receiver class, event type)``.
    """
    import sys

    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtWidgets import QApplication

    names = {int(getattr(QEvent, n)): n for n in dir(QEvent) if isinstance(getattr(QEvent, n), QEvent.Type)}

    class TracingApp(QApplication):
        def __init__(self, argv):
            super().__init__(argv)
            self.depth, self.recording, self.records = 0, False, []

        def notify(self, receiver, event):
            if not self.recording or self.depth:
                self.depth += 1
                try:
                    return super().notify(receiver, event)
                finally:
                    self.depth -= 1
            t, c, kind = time.perf_counter(), time.thread_time(), int(event.type())
            self.depth += 1
            try:
                return super().notify(receiver, event)
            finally:
                self.depth -= 1
                wall = (time.perf_counter() - t) * 1000
                if wall >= 1:
                    self.records.append((t, wall, (time.thread_time() - c) * 1000, type(receiver).__name__,
                                         names.get(kind, str(kind))))

    for attribute in ("AA_EnableHighDpiScaling", "AA_UseHighDpiPixmaps"):  # as napari sets them for Qt5
        if hasattr(Qt.ApplicationAttribute, attribute):
            QApplication.setAttribute(getattr(Qt.ApplicationAttribute, attribute))
    return TracingApp(sys.argv[:1])


def _print_trace(app, meter: StallMeter) -> None:
    for which, (start, end) in {"wall": meter.largest_gap(), "CPU": meter.largest_gap(cpu=True)}.items():
        print(f"event deliveries in the largest gap in {which} time ({(end - start) * 1000:.1f} ms wall):")
        for t, wall, cpu, receiver, kind in app.records:
            if t < end and t + wall / 1000 > start:
                print(f"  +{(t - start) * 1000:7.1f} ms: {wall:7.1f} ms wall {cpu:7.1f} ms CPU  {receiver} {kind}")


def _run(viewer, widget, start, meter: StallMeter, timeout: float = 1800, profile: int = 0, app=None) -> dict:
    import cProfile
    import pstats

    from qtpy.QtWidgets import QApplication

    t_settle = time.perf_counter()
    while time.perf_counter() - t_settle < 1.0:  # the new dock widget settles first: not part of a result
        QApplication.processEvents()
        time.sleep(0.005)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    if app is not None:
        app.records, app.recording = [], True
    meter.start()
    t0 = time.perf_counter()
    start()
    while (widget.task.running or time.perf_counter() - t0 < 0.2) and time.perf_counter() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.001)
    for _ in range(50):  # layers drawn after the job's last signal
        QApplication.processEvents()
        time.sleep(0.002)
    out = meter.stop()
    if app is not None:
        app.recording = False
        _print_trace(app, meter)
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> int:
    import napari

    from napari_aprnet.samples import fluorescence_blobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="4x smaller sides (a quick check)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--before", type=Path, default=None, help="JSON of an earlier run to compare with")
    parser.add_argument("--markdown", type=Path, default=None, help="write a markdown table here")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest main-thread functions")
    parser.add_argument("--cases", default="", help="comma-separated case prefixes to run (default: all)")
    parser.add_argument("--trace", action="store_true", help="print the Qt event deliveries in the largest gap")
    args = parser.parse_args(argv)
    app = tracing_app() if args.trace else None
    k = 4 if args.small else 1
    cases = {
        f"convert {2048 // k}x{2048 // k}": ("Convert to APR", fluorescence_blobs((2048 // k, 2048 // k), 60, seed=1)),
        f"convert {64 // k}x{1024 // k}x{1024 // k}":
            ("Convert to APR", fluorescence_blobs((64 // k, 1024 // k, 1024 // k), 80, seed=2)),
        f"tune E {64 // k}x{256 // k}x{256 // k}, 4 E":
            ("Tune E", fluorescence_blobs((64 // k, 256 // k, 256 // k), 20, seed=3)),
    }
    meter = StallMeter()
    calls = CallTimer()
    results = {}
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    for name, (widget_name, image) in cases.items():
        if wanted and not any(name.startswith(c) for c in wanted):
            continue
        viewer = napari.Viewer(show=True)
        layer = viewer.add_image(image, name="image")
        _, w = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
        w.image.value = layer
        if widget_name == "Tune E":
            res = _run(viewer, w, lambda w=w, layer=layer: w.run(layer, "0.05:0.4:4"), meter,
                       profile=args.profile, app=app)
        else:
            w.auto_update.value = False
            res = _run(viewer, w, lambda w=w, layer=layer: w.convert(layer), meter, profile=args.profile,
                       app=app)
        res.update(calls.take())
        res["status"] = str(w.status.value)
        res["layers"] = [lyr.name for lyr in viewer.layers]
        results[name] = res
        print(f"{name}: {res}", flush=True)
        viewer.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown is not None:
        before = json.loads(args.before.read_text()) if args.before else {}
        args.markdown.write_text(_markdown(results, before))
    return 0


def _markdown(after: dict, before: dict) -> str:
    import os
    import platform

    lines = ["# Main-thread stalls while widget results arrive (issue 13)", "",
             f"machine: {platform.machine()} ({os.cpu_count()} cores), OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, Xvfb; run with `nice -n 19` on a machine shared with "
             f"other jobs (load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end): a wall-clock "
             "stall also counts the time the scheduler gives to other processes; 'CPU' is the most CPU time the "
             "main thread itself spent within one gap. Goal: no stall over 200 ms.", "",
             "| case | before: max stall / CPU (ms) | before: > 200 ms (wall / CPU) | after: max stall / CPU (ms) | "
             "after: > 200 ms (wall / CPU) | after: wall (s) |", "|---|---|---|---|---|---|"]
    adds = ["", "Main-thread time in the add-layer calls (`viewer.add_image` / `add_labels`), wall / CPU (ms):", "",
            "| case | layer | before | after |", "|---|---|---|---|"]
    for name, res in after.items():
        b = before.get(name)
        old = (f"{b['max_stall_ms']} / {b['max_cpu_ms']} | {len(b['stalls_over_200ms'])} / "
               f"{len(b['cpu_over_200ms'])}") if b else "- | -"
        lines.append(f"| {name} | {old} | {res['max_stall_ms']} / {res['max_cpu_ms']} | "
                     f"{len(res['stalls_over_200ms'])} / {len(res['cpu_over_200ms'])} | {res['wall_s']} |")
        old_adds = {a["name"]: a for a in (b or {}).get("adds", [])}
        for a in res.get("adds", []):
            o = old_adds.get(a["name"])
            adds.append(f"| {name} | {a['name']} | {_call(o) if o else '-'} | {_call(a)} |")
    return "\n".join(lines + adds) + "\n"


def _call(call: dict) -> str:
    return f"{call['kind']}: {call['wall_ms']} / {call['cpu_ms']}"


if __name__ == "__main__":
    raise SystemExit(main())
