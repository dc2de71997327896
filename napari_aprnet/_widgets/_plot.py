"""Small QPainter plots for the dock widgets (no matplotlib needed).

:class:`LinePlot` draws up to two y axes (left and right) of line series over
a shared x axis, optionally log-scaled, with a vertical marker.
:class:`BarPlot` draws labelled horizontal bars of values in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["BarPlot", "LinePlot"]

_FG = QColor("#e6e6e6")
_GRID = QColor(255, 255, 255, 40)
_BG = QColor("#262930")


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-2):
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return list(np.linspace(lo, hi, n))


@dataclass
class _Series:
    xs: np.ndarray
    ys: np.ndarray
    color: str
    axis: str


def _y_ranges(pts) -> dict:
    """Padded (lo, hi) of the finite y values of each axis that has any."""
    ranges = {}
    for axis in ("left", "right"):
        ys = [s.ys[np.isfinite(s.ys)] for s in pts if s.axis == axis]
        ys = np.concatenate(ys) if ys else np.zeros(0)
        if ys.size:
            lo, hi = float(ys.min()), float(ys.max())
            if hi == lo:
                lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
            pad = 0.05 * (hi - lo)
            ranges[axis] = (lo - pad, hi + pad)
    return ranges


class _PlotBase(QWidget):
    def __init__(self, title: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def _begin(self) -> QPainter:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.fillRect(self.rect(), _BG)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        p.setFont(font)
        return p


class LinePlot(_PlotBase):
    """Line series against x, with a left and an optional right y axis.

    Parameters
    ----------
    title : str
        Text drawn above the plot.
    xlabel : str
        Label of the x axis.
    log_x : bool
        Log-scale the x axis (all x must be > 0).
    """

    def __init__(self, title: str = "", xlabel: str = "", log_x: bool = False,
                 parent: QWidget | None = None):
        super().__init__(title, parent)
        self.xlabel, self.log_x = xlabel, log_x
        self.series: dict[str, _Series] = {}
        self.marker: float | None = None

    def set_series(self, name: str, xs, ys, color: str = "#4fc3f7", axis: str = "left") -> None:
        """Set (or replace) the series ``name`` and repaint."""
        if axis not in ("left", "right"):
            raise ValueError(f"axis must be 'left' or 'right', got {axis!r}")
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if xs.shape != ys.shape:
            raise ValueError(f"x and y lengths differ: {xs.shape} vs {ys.shape}")
        self.series[name] = _Series(xs, ys, color, axis)
        self.update()

    def set_marker(self, x: float | None) -> None:
        """Draw a vertical marker at ``x`` (None removes it)."""
        self.marker = None if x is None else float(x)
        self.update()

    def clear(self) -> None:
        """Remove every series and the marker."""
        self.series.clear()
        self.marker = None
        self.update()

    def _xt(self, x: np.ndarray | float):
        return np.log10(x) if self.log_x else x

    def _draw_legend(self, p: QPainter, left: float, top: float, has_right: bool) -> None:
        fm = p.fontMetrics()
        h_text = fm.height()
        x_leg = left
        for name, s in self.series.items():
            p.setPen(QPen(QColor(s.color), 3))
            p.drawLine(QPointF(x_leg, top - h_text * 0.6), QPointF(x_leg + 14, top - h_text * 0.6))
            p.setPen(_FG)
            label = f"{name} ({'right' if s.axis == 'right' else 'left'})" if has_right else name
            p.drawText(QPointF(x_leg + 18, top - h_text * 0.3), label)
            x_leg += 30 + fm.horizontalAdvance(label)

    def _draw_y_ticks(self, p: QPainter, ranges: dict, box: QRectF, left: float, right: float) -> None:
        """Y ticks of both axes and the grid of the left one."""
        h_text = p.fontMetrics().height()
        for axis, (lo, hi) in ranges.items():
            for t in _ticks(lo, hi):
                y = box.bottom() - (t - lo) / (hi - lo) * box.height()
                if axis == "left":
                    p.setPen(_GRID)
                    p.drawLine(QPointF(box.left(), y), QPointF(box.right(), y))
                    p.setPen(_FG)
                    p.drawText(QRectF(0, y - h_text / 2, left - 4, h_text), Qt.AlignRight | Qt.AlignVCenter, _fmt(t))
                else:
                    p.setPen(_FG)
                    p.drawText(QRectF(box.right() + 4, y - h_text / 2, right - 4, h_text),
                               Qt.AlignLeft | Qt.AlignVCenter, _fmt(t))

    def _draw_series(self, p: QPainter, s: _Series, y_range: tuple, box: QRectF, xpix) -> None:
        lo, hi = y_range
        pen = QPen(QColor(s.color), 2)
        p.setPen(pen)
        prev = None
        for x, y in zip(s.xs, s.ys):
            if not (np.isfinite(y) and (x > 0 or not self.log_x)):
                prev = None
                continue
            pt = QPointF(xpix(x), box.bottom() - (y - lo) / (hi - lo) * box.height())
            if prev is not None:
                p.drawLine(prev, pt)
            p.drawEllipse(pt, 2.5, 2.5)
            prev = pt

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = self._begin()
        fm = p.fontMetrics()
        h_text = fm.height()
        has_right = any(s.axis == "right" for s in self.series.values())
        left, right = fm.horizontalAdvance("00000.0") + 8, (fm.horizontalAdvance("00000.0") + 8) if has_right else 12
        top, bottom = h_text * 2 + 6, h_text * 2 + 8
        box = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(_FG)
        p.drawText(QRectF(0, 2, self.width(), h_text), Qt.AlignHCenter, self.title)
        self._draw_legend(p, left, top, has_right)
        p.setPen(QPen(_FG, 1))
        p.drawRect(box)
        pts = [s for s in self.series.values() if len(s.xs)]
        if not pts:
            p.drawText(box, Qt.AlignCenter, "no data yet")
            p.end()
            return
        allx = np.concatenate([s.xs for s in pts])
        if self.log_x:
            allx = allx[allx > 0]
        xlo, xhi = (float(self._xt(allx.min())), float(self._xt(allx.max()))) if allx.size else (0.0, 1.0)
        if xhi == xlo:
            xlo, xhi = xlo - 0.5, xhi + 0.5

        def xpix(x):
            return box.left() + (self._xt(x) - xlo) / (xhi - xlo) * box.width()

        ranges = _y_ranges(pts)
        self._draw_y_ticks(p, ranges, box, left, right)
        # x ticks
        p.setPen(_FG)
        for t in _ticks(xlo, xhi):
            x = box.left() + (t - xlo) / (xhi - xlo) * box.width()
            value = 10**t if self.log_x else t
            p.drawText(QRectF(x - 40, box.bottom() + 2, 80, h_text), Qt.AlignHCenter, _fmt(value))
        p.drawText(QRectF(box.left(), box.bottom() + h_text + 2, box.width(), h_text), Qt.AlignHCenter,
                   self.xlabel + (" (log)" if self.log_x else ""))
        for s in pts:
            self._draw_series(p, s, ranges[s.axis], box, xpix)
        if self.marker is not None and (self.marker > 0 or not self.log_x):
            x = xpix(self.marker)
            p.setPen(QPen(QColor("#ffeb3b"), 2, Qt.DashLine))
            p.drawLine(QPointF(x, box.top()), QPointF(x, box.bottom()))
        p.end()


class BarPlot(_PlotBase):
    """Horizontal bars of values in [0, 1] with their labels and percentages."""

    def __init__(self, title: str = "", parent: QWidget | None = None):
        super().__init__(title, parent)
        self.labels: list[str] = []
        self.values = np.zeros(0)

    def set_bars(self, labels, values) -> None:
        """Show ``values`` (clipped to [0, 1]) labelled by ``labels``; the largest is highlighted."""
        values = np.asarray(values, dtype=float)
        if len(labels) != len(values):
            raise ValueError(f"{len(labels)} labels for {len(values)} values")
        self.labels, self.values = [str(s) for s in labels], values
        self.setMinimumHeight(40 + 22 * len(values))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = self._begin()
        fm = p.fontMetrics()
        h_text = fm.height()
        p.setPen(_FG)
        p.drawText(QRectF(0, 2, self.width(), h_text), Qt.AlignHCenter, self.title)
        if not len(self.values):
            p.drawText(self.rect(), Qt.AlignCenter, "no prediction yet")
            p.end()
            return
        label_w = max(fm.horizontalAdvance(s) for s in self.labels) + 10
        pct_w = fm.horizontalAdvance("100.0%") + 8
        top = h_text + 8
        row = max(h_text + 4, (self.height() - top - 4) / len(self.values))
        width = max(10, self.width() - label_w - pct_w - 8)
        best = int(np.argmax(self.values))
        for i, (label, v) in enumerate(zip(self.labels, self.values)):
            y = top + i * row
            p.setPen(_FG)
            p.drawText(QRectF(4, y, label_w - 8, row), Qt.AlignRight | Qt.AlignVCenter, label)
            frac = float(np.clip(v, 0, 1)) if np.isfinite(v) else 0.0
            p.fillRect(QRectF(label_w, y + 3, width * frac, row - 6), QColor("#ffb74d" if i == best else "#4fc3f7"))
            p.setPen(_GRID)
            p.drawRect(QRectF(label_w, y + 3, width, row - 6))
            p.setPen(_FG)
            p.drawText(QRectF(label_w + width + 4, y, pct_w, row), Qt.AlignLeft | Qt.AlignVCenter,
                       f"{100 * v:.1f}%")
        p.end()
