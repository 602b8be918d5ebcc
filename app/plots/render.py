"""Drawing, and nothing else: NumPy arrays in, PNG or SVG bytes out (matplotlib, Agg).

matplotlib is not thread-safe (the font cache, text layout and rcParams are shared by every
figure), so each render holds one process-wide lock; callers run these functions in a worker
thread, never on the event loop. Figures are built with the object API (`Figure`), not pyplot,
so nothing is registered globally and nothing needs closing.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when the first plot is drawn, not when the API starts
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# Model evaluations per axis for the 0.5 contour: 40,000 rows, smooth enough at any size we draw.
GRID = 200
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"  # matplotlib's tab:blue and tab:orange
# Class 0 and class 1, as the tutorial's two clouds; their predicted regions in a light tint.
CLASS_COLOURS = ("#1f77b4", "#ff7f0e")
REGION_COLOURS = ("#dce9f5", "#ffe8d4")
LINE_COLOUR = "#000000"

_lock = threading.Lock()


class Format(StrEnum):
    png = "png"
    svg = "svg"

    @property
    def media_type(self) -> str:
        return "image/png" if self is Format.png else "image/svg+xml"


@dataclass(frozen=True)
class AxesBox:
    """Where one plot area landed: its data limits, and its box in the image's own units (PNG
    pixels, SVG points) measured from the top-left corner. Clients map a pixel to data with it
    (and the tests check that the decision line is drawn where the model says)."""

    xlim: tuple[float, float]
    ylim: tuple[float, float]
    box: tuple[float, float, float, float]  # left, top, right, bottom

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates → image coordinates (y grows downwards)."""
        left, top, right, bottom = self.box
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    def as_dict(self) -> dict[str, list[float]]:
        return {"xlim": list(self.xlim), "ylim": list(self.ylim), "box": list(self.box)}


@dataclass(frozen=True)
class Image:
    body: bytes
    format: Format
    axes: list[AxesBox]


def history(hist: Mapping[str, Sequence[float | None]], metrics: Sequence[str], width: int,
            height: int, fmt: Format, title: str = "") -> Image:
    """One panel per metric: the training curve and, where the history has it, `val_<metric>`,
    against epochs 1..n (as Keras's progress bar counts them). Epochs without a value (no
    validation that epoch) are gaps."""
    epochs = max((len(v) for v in hist.values()), default=0)
    xs = np.arange(1, epochs + 1)
    with _lock:
        from matplotlib.ticker import MaxNLocator

        fig = _figure(width, height)
        cols = min(len(metrics), 3)
        rows = math.ceil(len(metrics) / cols)
        panels = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(panels, metrics, strict=False):
            for key, label, colour, style in ((name, "training", TRAIN_COLOUR, "-"),
                                              (f"val_{name}", "validation", VAL_COLOUR, "--")):
                if key in hist:
                    ax.plot(xs, _finite(hist[key], epochs), style, marker="o", markersize=4,
                            color=colour, label=label)
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        for ax in panels[len(metrics):]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title)
        return _save(fig, fmt, list(panels[:len(metrics)]))


def boundary(xy: np.ndarray, classes: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
             width: int, height: int, fmt: Format, *, labels: tuple[str, str] = ("x", "y"),
             title: str = "") -> Image:
    """The tutorial's picture: the points coloured by class, the regions the model assigns to
    each class, and the decision line where its output is 0.5 (for the linear model,
    w1·x + w2·y + b = 0.5), drawn as the 0.5 contour of the model evaluated on a grid."""
    xlim, ylim = limits(xy)
    xx, yy = np.meshgrid(np.linspace(*xlim, GRID), np.linspace(*ylim, GRID))
    # The model runs before the lock is taken: other renders keep drawing meanwhile.
    zz = np.ma.masked_invalid(predict(np.column_stack([xx.ravel(), yy.ravel()]))
                              .astype(np.float64).reshape(xx.shape))
    with _lock:
        from matplotlib.lines import Line2D

        fig = _figure(width, height)
        ax = fig.add_subplot()
        lo, hi = (float(zz.min()), float(zz.max())) if zz.count() else (0.5, 0.5)
        # contourf needs increasing, finite levels: the two regions either side of 0.5.
        ax.contourf(xx, yy, zz, levels=[min(lo, 0.5) - 1, 0.5, max(hi, 0.5) + 1],
                    colors=list(REGION_COLOURS))
        for cls in (0, 1):
            mask = classes == bool(cls)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=10, color=CLASS_COLOURS[cls], linewidths=0,
                       label=f"class {cls}")
        handles, _ = ax.get_legend_handles_labels()
        if lo < 0.5 < hi:  # a line exists in view (matplotlib warns on an empty contour)
            ax.contour(xx, yy, zz, levels=[0.5], colors=LINE_COLOUR, linewidths=2)
            handles.append(Line2D([], [], color=LINE_COLOUR, linewidth=2,
                                  label="output = 0.5"))
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.legend(handles=handles, loc="upper right")
        if title:
            ax.set_title(title)
        return _save(fig, fmt, [ax])


def limits(xy: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The points' extent plus 5% either side (a unit span around a single value)."""
    out = []
    for column in range(2):
        values = xy[:, column][np.isfinite(xy[:, column])] if len(xy) else np.empty(0)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
        pad = (hi - lo) * 0.05 if hi > lo else 0.5
        out.append((lo - pad, hi + pad))
    return out[0], out[1]


def _finite(values: Sequence[float | None], epochs: int) -> np.ndarray:
    """None, NaN and ±inf become gaps (NaN); short lists are padded to `epochs`."""
    ys = np.full(epochs, np.nan)
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v):
            ys[i] = v
    return ys


def _figure(width: int, height: int) -> Figure:
    from matplotlib.figure import Figure

    # Constrained layout fits titles, labels and legends into the asked size.
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")


def _save(fig: Figure, fmt: Format, axes: list[Axes]) -> Image:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend the process has selected
    buf = io.BytesIO()
    # No date in SVGs and a fixed salt for their element ids: the same plot, the same bytes.
    with matplotlib.rc_context({"svg.hashsalt": "keras-jobs"}):
        fig.savefig(buf, format=fmt.value, dpi=DPI,
                    metadata={"Date": None} if fmt is Format.svg else None)
    # Positions are final once drawn (constrained layout runs during the draw).
    width, height = fig.get_size_inches() * (DPI if fmt is Format.png else 72)
    boxes = []
    for ax in axes:
        pos = ax.get_position()
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        boxes.append(AxesBox(xlim=(float(x0), float(x1)), ylim=(float(y0), float(y1)),
                             box=(float(pos.x0 * width), float((1 - pos.y1) * height),
                                  float(pos.x1 * width), float((1 - pos.y0) * height))))
    return Image(buf.getvalue(), fmt, boxes)
