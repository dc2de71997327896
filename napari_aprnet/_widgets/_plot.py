"""Plots of the dock widgets, drawn with matplotlib's Qt canvas (napari's convention).

:class:`LinePlot`: line/point series over a shared x axis (optionally log),
a left and a right y axis, a vertical marker. :class:`BarPlot`: labelled
horizontal bars of values in [0, 1]. Both keep their data in plain attributes
(``series``, ``marker``, ``labels``, ``values``) and redraw lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

__all__ = ["BarPlot", "LinePlot", "running_mean"]

_FG, _BG, _GRID = "#e6e6e6", "#262930", "#4a4d55"


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
        fig = Figure(figsize=(4.0, height), dpi=90, facecolor=_BG, layout="constrained")
        super().__init__(fig)
        self.title = title
        self.setMinimumHeight(int(height * 90))
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self._timer = QTimer(self)  # coalesces redraws: at most one per 150 ms on the main thread
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.redraw)

    def request_redraw(self) -> None:
        """Redraw soon (several changes in a row cost one redraw)."""
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fresh_axes(self):
        """Clear the figure and return one styled, titled axes."""
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        self._style(ax)
        ax.set_title(self.title, color=_FG, fontsize=9)
        return ax

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
        self.note = ""
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

    def redraw(self) -> None:
        ax = self._fresh_axes()
        ax.set_xlabel(self.xlabel, fontsize=8)
        if self.log_x:
            ax.set_xscale("log")
        ax.grid(True, color=_GRID, linewidth=0.5)
        axes = {"left": ax}
        if any(s.axis == "right" for s in self.series.values()):
            axes["right"] = ax.twinx()
            self._style(axes["right"])
        handles = []
        for s in self.series.values():
            a = axes[s.axis]
            if s.style == "o":
                h = a.plot(s.xs, s.ys, "o", color=s.color, alpha=s.alpha, markersize=4, label=s.label)[0]
            else:
                h = a.plot(s.xs, s.ys, s.style, color=s.color, alpha=s.alpha, linewidth=1.4, label=s.label)[0]
            if s.label and not s.label.startswith("_"):
                handles.append(h)
        for side, a in axes.items():
            ys = [s.ys[np.isfinite(s.ys)] for s in self.series.values() if s.axis == side]
            ys = np.concatenate(ys) if ys else np.zeros(0)
            if len(ys) and ys.min() >= 0:  # counts, errors, ratios: never below zero
                a.set_ylim(bottom=0, top=max(float(ys.max()) * 1.08, 1e-9))
            a.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
            names = [s.label for s in self.series.values() if s.axis == side and not s.label.startswith("_")]
            a.set_ylabel(", ".join(names), fontsize=8)
        if not self.log_x:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
        if self.marker is not None:
            ax.axvline(self.marker, color="#ffd54f", linewidth=1, linestyle="--")
        if handles:
            ax.legend(handles=handles, fontsize=7, facecolor=_BG, edgecolor=_GRID, labelcolor=_FG, loc="best")
        if not self.series:
            ax.text(0.5, 0.5, "no data yet", color=_FG, ha="center", va="center", transform=ax.transAxes)
        self.draw_idle()


class BarPlot(_Canvas):
    """Horizontal bars of values in [0, 1] with labels and percentages; the largest highlighted."""

    def __init__(self, title: str = "", parent=None):
        super().__init__(title, height=2.4)
        self.labels: list[str] = []
        self.values = np.zeros(0)
        self.redraw()

    def set_bars(self, labels, values) -> None:
        """Show ``values`` (clipped to [0, 1]) labelled by ``labels``."""
        values = np.asarray(values, dtype=float)
        if len(labels) != len(values):
            raise ValueError(f"{len(labels)} labels for {len(values)} values")
        self.labels, self.values = [str(s) for s in labels], values
        self.request_redraw()

    def redraw(self) -> None:
        ax = self._fresh_axes()
        if not len(self.values):
            ax.text(0.5, 0.5, "no prediction yet", color=_FG, ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            self.draw_idle()
            return
        v = np.clip(np.nan_to_num(self.values), 0, 1)
        best = int(np.argmax(v))
        y = np.arange(len(v))[::-1]
        ax.barh(y, v, color=["#ffb74d" if i == best else "#4fc3f7" for i in range(len(v))])
        ax.set_yticks(y, self.labels, fontsize=8)
        ax.set_xlim(0, 1.18)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25", "50", "75", "100 %"])
        for yi, vi in zip(y, v):
            ax.text(vi + 0.01, yi, f"{100 * vi:.1f}%", color=_FG, va="center", fontsize=8)
        self.draw_idle()
