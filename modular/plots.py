"""Charts (training curves, the range test, the schedule, the confusion matrix) and the figure
helpers every plotting module shares: functions that take plain data and return a matplotlib ``Figure``.

Nothing here calls ``plt.show`` or keeps state: figures are ``matplotlib.figure.Figure`` objects made
outside pyplot, so they work headless (Agg), never pile up in pyplot, and, returned from a notebook
cell, are displayed exactly once (the tools write them to PNG files: modular/tools/figure_files.py).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

WIDTH = 8.0  # inches; at dpi 110 about 880 px, readable at README width
# Shown in a notebook a figure is drawn at its own dpi: 80 gives 640 px across, readable in a notebook's
# column, and keeps the saved notebook small (the tools write files at 110 dpi)
INLINE_DPI = 80


class _Figure(Figure):
    """A Figure that renders as PNG when returned from a notebook cell, with or without ``%matplotlib inline``.

    A figure made outside pyplot is only shown by the inline backend once ``%matplotlib inline`` has
    registered its formatter (importing pyplot is not enough); that formatter, when present, takes
    precedence over this method, so the figure appears once either way.
    """

    def _repr_png_(self) -> bytes:
        """The PNG a notebook shows and saves: at the figure's dpi (INLINE_DPI), in 256 colours, which at
        this size looks the same and takes a third of the bytes (a notebook keeps every figure in its file)."""
        from PIL import Image

        drawn, reduced = io.BytesIO(), io.BytesIO()
        self.savefig(drawn, format="png", bbox_inches="tight")
        Image.open(drawn).convert("RGB").quantize(256).save(reduced, format="png", optimize=True)
        return reduced.getvalue()


def new_figure(height: float, width: float = WIDTH) -> Figure:
    """A new figure outside pyplot (no global state, no auto-display), shown in a notebook at INLINE_DPI."""
    return _Figure(figsize=(width, height), dpi=INLINE_DPI, layout="constrained")


def to_numpy(x: Any) -> np.ndarray:
    """Tensor or array-like -> numpy array (no torch import needed)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def plot_history(history: Sequence[Mapping[str, float]]) -> Figure:
    """Loss and accuracy per epoch, train and test, side by side; the best test accuracy marked.

    Rows as ``train.fit`` records them: epoch (from 1), train_loss, train_acc, test_loss, test_acc,
    test_ce (null where it was not measured); accuracies in percent. The losses are the
    training criterion (label smoothing included); the test's plain cross-entropy is drawn beside them.
    """
    epochs = np.array([row["epoch"] for row in history])
    fig = new_figure(height=3.6)
    loss_ax, acc_ax = fig.subplots(1, 2)

    loss_ax.plot(epochs, [row["train_loss"] for row in history], "o-", ms=3, label="train (label-smoothed)")
    loss_ax.plot(epochs, [row["test_loss"] for row in history], "o-", ms=3, label="test (label-smoothed)")
    loss_ax.plot(epochs, np.array([row["test_ce"] for row in history], float), "s--", ms=3,
                 label="test, plain cross-entropy")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss")

    train_acc = np.array([row["train_acc"] for row in history], float)
    test_acc = np.array([row["test_acc"] for row in history], float)
    acc_ax.plot(epochs, train_acc, "o-", ms=3, label="train")
    acc_ax.plot(epochs, test_acc, "o-", ms=3, label="test")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    if len(test_acc):
        best = int(np.nanargmax(test_acc))
        acc_ax.plot(epochs[best], test_acc[best], "*", color="crimson", ms=14, zorder=5,
                    label=f"best test {test_acc[best]:.2f}% (epoch {epochs[best]})")

    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) <= 30:
            ax.set_xticks(epochs[:: max(1, math.ceil(len(epochs) / 12))])
    return fig


def _vline(ax: Axes, x: float, label: str, color: str, y_frac: float) -> None:
    """A dashed vertical line at ``x`` with ``label`` written beside it at ``y_frac`` of the axis height."""
    ax.axvline(x, color=color, ls="--", lw=1.2)
    ax.annotate(label, xy=(x, y_frac), xycoords=("data", "axes fraction"), xytext=(4, 0),
                textcoords="offset points", color=color, fontsize=9, va="center",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], raw_losses: Sequence[float], lr_max: float,
                   lr_min: float | None = None, rule: str = "", diverged_lr: float | None = None,
                   steepest_lr: float | None = None) -> Figure:
    """The LR range test on a log LR axis: the raw loss (light) and the smoothed loss the rule reads,
    the point of divergence, LRMAX, LRMIN and torch-lr-finder's steepest-descent suggestion, each
    labelled; ``rule`` as caption. Takes a range-test record as keywords (null, where a loss was not
    finite or not kept, is not drawn)."""
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    fig = new_figure(height=4.2)
    ax = fig.subplots()
    ax.plot(lr, np.asarray(raw_losses, dtype=float), color="tab:blue", lw=0.8, alpha=0.3, label="raw loss (per batch)")
    ax.plot(lr, loss, color="tab:blue", lw=1.6, label="smoothed loss")
    ax.set_xscale("log")
    ax.set(title="LR range test", xlabel="learning rate (log scale)", ylabel="loss")
    finite = loss[np.isfinite(loss)]
    if finite.size:  # the run ends by diverging: keep the interesting part in view
        low, high = finite.min(), min(finite.max(), 2.0 * finite[0] - finite.min())
        # the raw curve before divergence too, to see where LRMAX falls on it
        raw = np.asarray(raw_losses, dtype=float)[lr <= (diverged_lr or lr[-1])]
        low = min(low, np.nanmin(raw[np.isfinite(raw)], initial=low))
        if high > low:
            pad = 0.08 * (high - low)
            ax.set_ylim(low - pad, high + pad)
    if diverged_lr is not None:
        ax.axvspan(diverged_lr, lr[-1], color="grey", alpha=0.12, label="diverged: ignored by the rule")
        _vline(ax, diverged_lr, f"diverged at {diverged_lr:.2g}", "dimgrey", 0.62)
    if steepest_lr is not None:
        _vline(ax, steepest_lr, f"steepest descent\n(torch-lr-finder) {steepest_lr:.2g}", "darkorange", 0.35)
    _vline(ax, lr_max, f"LRMAX = {lr_max:.3g}", "crimson", 0.9)
    if lr_min is not None:
        _vline(ax, lr_min, f"LRMIN = {lr_min:.3g}", "darkgreen", 0.8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    if rule:
        fig.text(0.5, 0, textwrap.fill(rule, 110), ha="center", va="top", fontsize=8.5, style="italic")
    return fig


def plot_lr_schedule(lr_per_step: Sequence[float], steps_per_epoch: int, peak_epoch: int | None = None) -> Figure:
    """The LR of every step against epochs; the peak marked and annotated.

    Step ``i`` is drawn at ``(i + 1) / steps_per_epoch``: the LR used by the last step of epoch ``e``
    sits at ``x = e`` (OneCycle's peak is the last step of the peak epoch).
    """
    lr = np.asarray(lr_per_step, dtype=float)
    x = (np.arange(lr.size) + 1) / steps_per_epoch
    fig = new_figure(height=3.6)
    ax = fig.subplots()
    ax.plot(x, lr, color="tab:blue", lw=1.5)
    ax.set(title="Learning-rate schedule (per step)", xlabel="epoch", ylabel="learning rate")
    ax.set_xlim(0, max(x[-1] if lr.size else 1.0, 1.0))
    ax.set_ylim(bottom=0)
    if lr.size:
        peak = int(np.argmax(lr))
        epoch = peak_epoch if peak_epoch is not None else x[peak]
        ax.plot(x[peak], lr[peak], "o", color="crimson", ms=7, zorder=5)
        ax.axvline(x[peak], color="crimson", ls=":", lw=1)
        label = f"peak LR {lr[peak]:.3g}\nat epoch {epoch:g}" + (f" (step {peak + 1})" if peak_epoch is None else "")
        right = x[peak] < 0.6 * x[-1]
        ax.annotate(label, xy=(x[peak], lr[peak]), xytext=(16 if right else -16, 6), textcoords="offset points",
                    ha="left" if right else "right", va="bottom", fontsize=9, color="crimson",
                    bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "crimson", "lw": 0.8},
                    arrowprops={"arrowstyle": "->", "color": "crimson"})
        ax.set_ylim(0, lr[peak] * 1.3)  # room for the annotation above the peak
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- evaluation

def plot_confusion_matrix(matrix: Any, classes: Sequence[str]) -> Figure:
    """Counts with true class in rows and predicted class in columns, written in the cells."""
    counts = to_numpy(matrix)
    k = len(classes)
    fig = new_figure(height=7.0)
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    threshold = counts.max(initial=0) / 2
    integral = np.allclose(counts, np.round(counts))
    for (i, j), value in np.ndenumerate(counts):
        text = f"{round(float(value)):d}" if integral else f"{value:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if value > threshold else "black")
    return fig


def plot_per_class_accuracy(per_class_acc: Mapping[str, float] | Sequence[float], classes: Sequence[str]) -> Figure:
    """Horizontal bars of accuracy per class (in percent), the value written at each bar's end.

    A mapping is read in the order of ``classes``; a list is aligned with ``classes``.
    """
    if isinstance(per_class_acc, Mapping):
        values = [per_class_acc[name] for name in classes]
    else:
        values = list(per_class_acc)
    acc = np.asarray(values, dtype=float)
    fig = new_figure(height=0.38 * len(classes) + 1.2)
    ax = fig.subplots()
    positions = np.arange(len(classes))
    bars = ax.barh(positions, acc, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in acc], padding=3, fontsize=9)
    ax.set_yticks(positions, classes)
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, 112)
    ax.set(xlabel="accuracy (%)", title="Test accuracy per class")
    ax.grid(axis="x", alpha=0.3)
    return fig
