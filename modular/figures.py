"""Every figure of a finished run, by name, as drawn into its run folder and the README's images/: from
the run record, plus the images it points into (the data) and the training transform for the
augmented samples. No loader is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from modular import galleries, plots
from modular.data import CifarData
from modular.evaluate import gallery_sample


def augmented_samples(data: CifarData, train_transform, mean, std, n: int = 16) -> Figure:
    """``n`` training images, one class after another, through the training transform."""
    shown = galleries.across_classes(data.train_labels, n)
    images = np.stack([train_transform(image=data.train_images[i])["image"].numpy() for i in shown])
    return galleries.plot_samples(images, data.train_labels[shown], data.classes, "augmented training images",
                                  mean=mean, std=std)


def sample_of_test_images(data: CifarData, n: int = 16) -> Figure:
    shown = galleries.across_classes(data.test_labels, n)  # the test set is stored class by class
    return galleries.plot_samples(data.test_images[shown], data.test_labels[shown], data.classes, "test images")


def misclassified_gallery(data: CifarData, wrong: list[dict[str, int]]) -> Figure:
    """Up to 20 of the misclassified test images (``evaluate.gallery_sample``), predicted and true class."""
    shown = gallery_sample(wrong)
    return galleries.plot_misclassified(data.test_images[[w["index"] for w in shown]], [w["predicted"] for w in shown],
                                        [w["actual"] for w in shown], data.classes)


def run_figures(record: dict, data: CifarData, train_transform) -> dict[str, Figure]:
    """All but the sample grids are drawn from the record alone (the misclassified gallery also looks up
    its test images by index in ``data``, the test set the record names)."""
    classes = record["classes"]
    figures = {
        "train_samples": augmented_samples(data, train_transform, record["mean"], record["std"]),
        "test_samples": sample_of_test_images(data),
        "loss_accuracy": plots.plot_history(record["history"]),
        "one_cycle_lr": plots.plot_lr_schedule(record["lr_per_step"], record["steps_per_epoch"], record["peak_epoch"]),
        "misclassified": misclassified_gallery(data, record["misclassified"]),
        "confusion_matrix": plots.plot_confusion_matrix(record["confusion_matrix"], classes),
        "per_class_accuracy": plots.plot_per_class_accuracy(record["per_class_acc"], classes),
    }
    if record.get("lr_find"):
        figures["lr_range_test"] = plots.plot_lr_finder(**record["lr_find"])
    return figures


def save_run_figures(record: dict, data: CifarData, train_transform, folder: str | Path) -> list[Path]:
    """Every figure of a run as <folder>/<name>.png."""
    return [plots.save_figure(fig, Path(folder) / f"{name}.png")
            for name, fig in run_figures(record, data, train_transform).items()]
