"""The figures of a run that need its images besides its numbers: augmented training samples, test
samples and the misclassified gallery (the others are drawn from numbers alone, in plots.py)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from modular import galleries
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
