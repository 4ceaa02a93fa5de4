"""PNG plots and text tables of results. matplotlib is imported only when drawing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgetl.core.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The confusion matrix's largest side in inches (at 110 dpi: 1,760 pixels), and its smallest class-name font.
CONFUSION_MAX_INCHES = 16.0
MIN_LABEL_POINTS = 5.0


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_history(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> None:
    """Learning curves (loss and accuracy, train and val) over the epochs of all stages."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = list(range(1, len(rows) + 1))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            ys = [r.get(prefix + metric) for r in rows]
            if any(y not in (None, "") for y in ys):
                ax.plot(x, [float(y) if y not in (None, "") else float("nan") for y in ys], style,
                        label=(prefix or "train_") + metric, markersize=3)
        stages = [r.get("stage") for r in rows]
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(i + 0.6, ax.get_ylim()[1], "fine-tune", va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike[str],
                   title: str = "Confusion matrix") -> None:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(matrix, dtype=float)
    n = len(class_names)
    # Half an inch a class, up to CONFUSION_MAX_INCHES: the image's memory grows with its area, and 100 classes
    # at half an inch (a 5,800-pixel square) took 860 MB and 6.5 s to draw, the whole of a run's save step.
    size = min(max(4.0, 0.5 * n + 2), CONFUSION_MAX_INCHES)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    # Class names as large as a cell allows (10 pt at most); below MIN_LABEL_POINTS, every k-th name only.
    cell_points = 72 * (size - 2) / max(n, 1)
    font = min(10.0, 0.8 * cell_points)
    step = max(1, int(np.ceil(MIN_LABEL_POINTS / max(font, 1e-9))))
    font = max(font, MIN_LABEL_POINTS) if step > 1 else font
    ticks = list(range(0, n, step))
    names = [class_names[i] for i in ticks]
    # Upright names need a cell's height each, slanted ones more: upright beyond the 30 classes that get counts.
    ax.set_xticks(ticks, names, rotation=45 if n <= 30 else 90, ha="right" if n <= 30 else "center", fontsize=font)
    ax.set_yticks(ticks, names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        high = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > high else "black")
    _save(fig, path)


@dataclass
class BarPanel:
    """One horizontal bar chart of a figure per model; marks (e.g. p90) drawn as ticks over the bars."""

    title: str
    values: Sequence[float]
    marks: Sequence[float] | None = None
    marks_label: str = ""
    xlim: tuple[float, float] | None = None


def plot_bar_panels(names: Sequence[str], panels: Sequence[BarPanel], path: str | os.PathLike[str],
                    title: str = "") -> None:
    """Side-by-side bar charts sharing one list of names (top to bottom), written as a PNG."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(names) + 2.2), squeeze=False)
    y = np.arange(len(names))
    for ax, panel in zip(axes[0], panels, strict=True):
        ax.barh(y, panel.values, color="#4C72B0")
        if panel.marks is not None:
            ax.plot(panel.marks, y, "k|", markersize=12, label=panel.marks_label)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(y, list(names) if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_title(panel.title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if panel.xlim is not None:
            ax.set_xlim(*panel.xlim)
        for yi, v in zip(y, panel.values, strict=True):
            ax.text(v, yi, f" {v:,.0f}" if v >= 1000 else f" {v:.3g}", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_run(run: str | os.PathLike[str], rows: Sequence[dict[str, Any]], metrics: dict[str, Any],
             class_names: Sequence[str], title: str) -> list[str]:
    """A run directory's plots: learning curves, and the test (else val) confusion matrix.

    Returns:
        The file names written, for the manifest.
    """
    from pathlib import Path

    run = Path(run)
    out = []
    if rows:
        plot_history(rows, run / "learning_curves.png", title=f"{title}: learning curves")
        out.append("learning_curves.png")
    chosen = metrics.get("test") or metrics.get("val")
    if chosen:
        which = "test" if metrics.get("test") else "val"
        plot_confusion(chosen["confusion_matrix"], class_names, run / "confusion_matrix.png",
                       title=f"{title}: {which} confusion matrix (accuracy {chosen['accuracy']:.3f})")
        out.append("confusion_matrix.png")
    return out


@dataclass
class TradeoffPoint:
    """One model in an accuracy-against-latency plot."""

    name: str
    latency_ms: float
    accuracy: float
    accuracy_err: float = 0.0  # drawn as an error bar
    size_mb: float = 1.0  # drawn as the marker's area
    within: bool = True  # inside the budget (filled) or outside (hollow, grey)
    front: bool = False  # on the Pareto front (joined by a line)
    chosen: bool = False  # the recommended one (a star)


def plot_tradeoff(points: Sequence[TradeoffPoint], path: str | os.PathLike[str], *, max_latency_ms: float | None = None,
                  title: str = "", latency_label: str = "latency (ms)") -> None:
    """Accuracy against latency, marker area by size in MB, the Pareto front joined and the latency budget drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max((p.size_mb for p in points), default=1.0) or 1.0
    for p in points:
        area = 40 + 600 * p.size_mb / biggest
        color = "#4C72B0" if p.within else "#999999"
        ax.errorbar(p.latency_ms, p.accuracy, yerr=p.accuracy_err, fmt="none", ecolor=color, alpha=0.5, capsize=2)
        ax.scatter([p.latency_ms], [p.accuracy], s=area, facecolors=color if p.within else "none", edgecolors=color,
                   alpha=0.7, zorder=3)
        if p.chosen:
            ax.scatter([p.latency_ms], [p.accuracy], s=220, marker="*", color="#DD8452", zorder=4,
                       label="recommended")
        ax.annotate(f"{p.name} ({p.size_mb:.2f} MB)", (p.latency_ms, p.accuracy), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)
    front = sorted((p for p in points if p.front), key=lambda p: p.latency_ms)
    if len(front) > 1:
        ax.plot([p.latency_ms for p in front], [p.accuracy for p in front], "--", color="#55A868", linewidth=1,
                label="Pareto front within the budget")
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, color="#C44E52", linestyle=":", label=f"latency budget {max_latency_ms:g} ms")
    ax.set_xlabel(latency_label)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy against latency (marker area: file size; hollow: outside the budget)", fontsize=9)
    _save(fig, path)
