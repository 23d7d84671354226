"""Image grids: sample images and misclassified images, each with its class names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from modular.plots import new_figure, to_numpy


def _displayable(images: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """Raw uint8 N x H x W x 3 or normalized N x 3 x H x W -> N x H x W x 3 ready for imshow."""
    if mean is not None and std is not None:
        from modular.transforms import denormalize  # lazy: keeps albumentations/cv2 out of a plain import

        return np.asarray(denormalize(images, mean, std))
    array = to_numpy(images)
    if array.ndim == 3:  # a single image
        array = array[None]
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 1, -1)  # channels first -> channels last
    if array.dtype == np.uint8:
        return array
    array = array.astype(float)
    return array / 255.0 if array.max(initial=0.0) > 1.0 else np.clip(array, 0.0, 1.0)


def class_name(label: Any, classes: Sequence[str]) -> str:
    """A class index (int, numpy or tensor scalar) or an already-named label -> its name."""
    if isinstance(label, str):
        return label
    return classes[int(label)]


def _gallery(images: np.ndarray, titles: list[str], cols: int, cell: float, title: str) -> Figure:
    """Images in a grid of ``cols`` columns, one title each, axes hidden."""
    n = len(titles)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = new_figure(height=rows * (cell + 0.2 * lines) + 0.4, width=cols * cell)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_samples(images: Any, labels: Sequence[Any], classes: Sequence[str], title: str,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, n: int = 16) -> Figure:
    """The first ``n`` images in rows of 8 with their class names.

    ``images``: raw uint8 N x H x W x 3, or normalized N x 3 x H x W (tensor or array) with ``mean``/``std``.
    """
    n = min(n, len(labels), len(images))
    shown = _displayable(images[:n], mean, std)
    titles = [class_name(label, classes) for label in list(labels)[:n]]
    return _gallery(shown, titles, cols=8, cell=1.0, title=title)


def across_classes(labels: Sequence[Any], n: int = 16) -> np.ndarray:
    """Indices of ``n`` images taken from each class in turn (every class's first, then every class's
    second, ...): the first ``n`` of a set stored class by class would all be of one class."""
    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [m[k] for k in range(max((len(m) for m in members), default=0)) for m in members if k < len(m)]
    return np.asarray(order[:n], dtype=np.int64)


def plot_misclassified(images: Any, predicted: Sequence[Any], actual: Sequence[Any], classes: Sequence[str],
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       n: int = 20) -> Figure:
    """Up to ``n`` misclassified images, titled "pred: <predicted>\\ntrue: <actual>", in rows of 5."""
    n = min(n, len(predicted), len(actual), len(images))
    shown = _displayable(images[:n], mean, std)
    titles = [f"pred: {class_name(p, classes)}\ntrue: {class_name(a, classes)}"
              for p, a in zip(list(predicted)[:n], list(actual)[:n])]
    return _gallery(shown, titles, cols=5, cell=1.6, title=f"Misclassified test images ({n} shown)")
