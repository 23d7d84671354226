"""Every figure of a finished run, by name, as drawn into its run folder and the README's images/."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from modular import galleries, plots
from modular.evaluate import gallery_sample
from modular.prepare import Prepared


def run_figures(record: dict, prepared: Prepared) -> dict[str, Figure]:
    """All but the two sample grids are drawn from the record alone (the misclassified gallery also
    looks up its test images by index)."""
    classes = record["classes"]
    data = prepared.data
    images, labels = next(iter(prepared.train_loader))
    wrong = gallery_sample(record["misclassified"])
    shown = galleries.across_classes(data.test_labels, 16)  # the test set is stored class by class
    found = {
        "train_samples": galleries.plot_samples(images[:16], labels[:16].numpy(), classes,
                                                "augmented training images", mean=prepared.mean, std=prepared.std),
        "test_samples": galleries.plot_samples(data.test_images[shown], data.test_labels[shown], classes, "test images"),
        "loss_accuracy": plots.plot_history(record["history"]),
        "one_cycle_lr": plots.plot_lr_schedule(record["lr_per_step"], record["steps_per_epoch"], record["peak_epoch"]),
        "misclassified": galleries.plot_misclassified(
            data.test_images[[w["index"] for w in wrong]], [w["predicted"] for w in wrong],
            [w["actual"] for w in wrong], classes),
        "confusion_matrix": plots.plot_confusion_matrix(record["confusion_matrix"], classes),
        "per_class_accuracy": plots.plot_per_class_accuracy(record["per_class_acc"], classes),
    }
    if record.get("lr_find"):
        found["lr_range_test"] = plots.plot_lr_finder(**record["lr_find"])
    return found


def save_run_figures(record: dict, prepared: Prepared, folder: str | Path) -> list[Path]:
    """Every figure of a run as <folder>/<name>.png."""
    return [plots.save_figure(fig, Path(folder) / f"{name}.png") for name, fig in run_figures(record, prepared).items()]
