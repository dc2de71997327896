"""Plots of the dock widgets, drawn with matplotlib's Qt canvas (napari's convention).

:class:`LinePlot`: line/point series over a shared x axis (optionally log),
a left and a right y axis, a vertical marker. :class:`BarPlot`: labelled
horizontal bars of values in [0, 1]. Both keep their data in plain attributes
(``series``, ``marker``, ``labels``, ``values``) and redraw lazily.

Drawing runs on the main thread, so it is kept cheap: the axes and lines are
made once and only their data change, margins are fixed in pixels (no layout
engine runs at each draw: matplotlib's constrained layout was 70 % of a
redraw), and log axes get plain tick labels (no mathtext).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

__all__ = ["BarPlot", "LinePlot", "running_mean"]

_FG, _BG, _GRID = "#e6e6e6", "#262930", "#4a4d55"
_DPI = 90
#: Room for tick labels and an axis label beside a y axis (pixels).
_Y_AXIS_PX = 58


def running_mean(ys, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (shorter at the start); NaNs ignored."""
    ys = np.asarray(ys, dtype=float)
    ok = np.isfinite(ys)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, ys, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(ys) + 1)
    lo = np.maximum(i - int(window), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c[i] - c[lo]) / (n[i] - n[lo])


def _plain(value: float, _pos=None) -> str:
    return f"{value:g}"


@dataclass
class _Series:
    xs: np.ndarray
    ys: np.ndarray
    color: str
    axis: str
    style: str = "-"
    alpha: float = 1.0
    label: str = ""


class _Canvas(FigureCanvasQTAgg):
    def __init__(self, title: str, height: float = 2.6):
        super().__init__(Figure(figsize=(4.0, height), dpi=_DPI, facecolor=_BG))
        self.setMinimumHeight(int(height * _DPI))
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.ax = self.figure.add_subplot(111)
        self._style(self.ax)
        self.ax.set_title(title, color=_FG, fontsize=9)
        self._empty = self.ax.text(0.5, 0.5, "", color=_FG, ha="center", va="center", transform=self.ax.transAxes)
        self._timer = QTimer(self)  # coalesces redraws: at most one per 150 ms on the main thread
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.redraw)

    def request_redraw(self) -> None:
        """Redraw soon (several changes in a row cost one redraw)."""
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run a requested redraw now instead of at its timer (Qt draws the figure right after this handler)."""
        if self._timer.isActive():
            self._timer.stop()
            self.redraw()

    def redraw(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def margins(self) -> tuple[int, int, int, int]:
        """Left, right, bottom and top margins around the axes, in pixels."""
        return _Y_AXIS_PX, 14, 34, 22

    def _place_axes(self) -> None:
        """Position the axes by :meth:`margins` (cheap; on resize and when the margins change)."""
        w, h = self.figure.bbox.width, self.figure.bbox.height
        if w < 2 or h < 2:
            return
        left, right, bottom, top = self.margins()
        x0, x1 = min(left / w, 0.45), max(1 - right / w, 0.55)
        y0, y1 = min(bottom / h, 0.45), max(1 - top / h, 0.55)
        self.figure.subplots_adjust(left=x0, right=x1, bottom=y0, top=y1)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._place_axes()

    def _style(self, ax) -> None:
        ax.set_facecolor(_BG)
        ax.tick_params(colors=_FG, labelsize=8)
        for spine in ax.spines.values():
            spine.set_color(_GRID)
        ax.yaxis.label.set_color(_FG)
        ax.xaxis.label.set_color(_FG)


class LinePlot(_Canvas):
    """Series against x with a left and an optional right y axis.

    Parameters
    ----------
    title : str
    xlabel : str
    log_x : bool
        Log-scale the x axis (x must be > 0).
    """

    def __init__(self, title: str = "", xlabel: str = "", log_x: bool = False, parent=None):
        super().__init__(title)
        self.xlabel, self.log_x = xlabel, log_x
        self.series: dict[str, _Series] = {}
        self.marker: float | None = None
        self.right = None  # the right y axis, made with the first series on it
        self._lines: dict[str, object] = {}
        self._legend_key: tuple = ()
        ax = self.ax
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, color=_GRID, linewidth=0.5)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_plain))
            ax.xaxis.set_minor_locator(NullLocator())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        self._marker_line = ax.axvline(1.0, color="#ffd54f", linewidth=1, linestyle="--", visible=False)
        self.redraw()

    def set_series(self, name: str, xs, ys, color: str = "#4fc3f7", axis: str = "left", style: str = "-",
                   alpha: float = 1.0, label: str | None = None) -> None:
        """Set (or replace) the series ``name`` (style "-" line, "o" points) and redraw."""
        if axis not in ("left", "right"):
            raise ValueError(f"axis must be 'left' or 'right', got {axis!r}")
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if xs.shape != ys.shape:
            raise ValueError(f"x and y lengths differ: {xs.shape} vs {ys.shape}")
        self.series[name] = _Series(xs, ys, color, axis, style, alpha, name if label is None else label)
        self.request_redraw()

    def set_marker(self, x: float | None) -> None:
        """Draw a vertical marker at ``x`` (None removes it)."""
        self.marker = None if x is None else float(x)
        self.request_redraw()

    def clear(self) -> None:
        """Remove every series and the marker."""
        self.series.clear()
        self.marker = None
        self.request_redraw()

    def margins(self) -> tuple[int, int, int, int]:
        left, right, bottom, top = super().margins()
        return left, _Y_AXIS_PX if self._right_used() else right, bottom, top

    def _right_used(self) -> bool:
        return any(s.axis == "right" for s in self.series.values())

    def _right_axis(self):
        if self.right is None:
            self.right = self.ax.twinx()
            self._style(self.right)
            self.right.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        return self.right

    def _line(self, name: str, s: _Series):
        """The Line2D of series ``name`` on its axis (made once; remade if it moved axis)."""
        a = self._right_axis() if s.axis == "right" else self.ax
        line = self._lines.get(name)
        if line is not None and line.axes is not a:
            line.remove()
            line = None
        if line is None:
            line = a.plot([], [])[0]
            self._lines[name] = line
        line.set_data(s.xs, s.ys)
        line.set(color=s.color, alpha=s.alpha, label=s.label, linestyle="none" if s.style == "o" else s.style,
                 marker="o" if s.style == "o" else "None", markersize=4, linewidth=1.4)
        return line

    def redraw(self) -> None:
        for name in [n for n in self._lines if n not in self.series]:
            self._lines.pop(name).remove()
        handles = [self._line(name, s) for name, s in self.series.items()]
        axes = {"left": self.ax, "right": self._right_axis() if self._right_used() else None}
        if self.right is not None:
            self.right.set_visible(axes["right"] is not None)
        for side, a in axes.items():
            if a is not None:
                self._limits(side, a)
        if self.marker is not None:
            self._marker_line.set_xdata([self.marker, self.marker])
        self._marker_line.set_visible(self.marker is not None)
        self._update_legend([h for h in handles if h.get_label() and not h.get_label().startswith("_")])
        self._empty.set_text("" if self.series else "no data yet")
        self._place_axes()
        self.draw_idle()

    def _limits(self, side: str, a) -> None:
        """Axis limits of ``side`` from its series: y from 0 for non-negative data, x over all series."""
        chosen = [s for s in self.series.values() if s.axis == side]
        ys = np.concatenate([s.ys[np.isfinite(s.ys)] for s in chosen]) if chosen else np.zeros(0)
        if len(ys) and ys.min() >= 0:  # counts, errors, ratios: never below zero
            a.set_ylim(bottom=0, top=max(float(ys.max()) * 1.08, 1e-9))
        elif len(ys):
            pad = 0.05 * (float(ys.max() - ys.min()) or 1.0)
            a.set_ylim(float(ys.min()) - pad, float(ys.max()) + pad)
        a.set_ylabel(", ".join(s.label for s in chosen if not s.label.startswith("_")), fontsize=8)
        xs = np.concatenate([s.xs[np.isfinite(s.xs)] for s in self.series.values()]) if self.series else []
        if side == "left" and len(xs):
            lo, hi = float(np.min(xs)), float(np.max(xs))
            if self.log_x and lo > 0:
                a.set_xlim(lo / 1.15, hi * 1.15)
            elif not self.log_x:
                a.set_xlim(lo - 0.5, hi + 0.5) if hi == lo else a.set_xlim(lo, hi)

    def _update_legend(self, handles: list) -> None:
        key = tuple((h.get_label(), id(h)) for h in handles)
        if key == self._legend_key:
            return
        self._legend_key = key
        if self.ax.get_legend() is not None:
            self.ax.get_legend().remove()
        if handles:
            self.ax.legend(handles=handles, fontsize=7, facecolor=_BG, edgecolor=_GRID, labelcolor=_FG, loc="best")


class BarPlot(_Canvas):
    """Horizontal bars of values in [0, 1] with labels and percentages; the largest highlighted."""

    def __init__(self, title: str = "", parent=None):
        super().__init__(title, height=2.4)
        self.labels: list[str] = []
        self.values = np.zeros(0)
        self.ax.set_xlim(0, 1.18)
        self.redraw()

    def set_bars(self, labels, values) -> None:
        """Show ``values`` (clipped to [0, 1]) labelled by ``labels``."""
        values = np.asarray(values, dtype=float)
        if len(labels) != len(values):
            raise ValueError(f"{len(labels)} labels for {len(values)} values")
        self.labels, self.values = [str(s) for s in labels], values
        self.request_redraw()

    def margins(self) -> tuple[int, int, int, int]:
        _, right, bottom, top = super().margins()
        return 12 + 6 * max((len(s) for s in self.labels), default=0), right, bottom, top

    def redraw(self) -> None:
        ax = self.ax
        for artist in list(ax.patches) + [t for t in ax.texts if t is not self._empty]:
            artist.remove()
        self._empty.set_text("" if len(self.values) else "no prediction yet")
        if not len(self.values):
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            v = np.clip(np.nan_to_num(self.values), 0, 1)
            best = int(np.argmax(v))
            y = np.arange(len(v))[::-1]
            ax.barh(y, v, color=["#ffb74d" if i == best else "#4fc3f7" for i in range(len(v))])
            ax.set_yticks(y, self.labels, fontsize=8)
            ax.set_ylim(-0.6, len(v) - 0.4)
            ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25", "50", "75", "100 %"])
            for yi, vi in zip(y, v):
                ax.text(vi + 0.01, yi, f"{100 * vi:.1f}%", color=_FG, va="center", fontsize=8)
        self._place_axes()
        self.draw_idle()
