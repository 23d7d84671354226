"""A synthetic CIFAR-10 made at run time (no internet), and a data set written as an image-folder tree: the
notebook's quick mode (ERA_QUICK=1, which CI runs) trains on them, as do the tests and the benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modular.config import CIFAR10_CLASSES
from modular.data import CifarData


def synthetic_cifar10(n_train: int = 500, n_test: int = 100, seed: int = 0) -> CifarData:
    """A learnable stand-in: each class has its own colour and stripe pattern, plus noise.

    Images are grouped by class (every source then yields the same order), and the patterns
    survive flips, crops and cutout, so a few training steps beat chance.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    colours = rng.uniform(0.2, 0.8, size=(10, 3))
    angles = np.linspace(0, np.pi, 10, endpoint=False)
    patterns = np.stack([np.sin(2 * np.pi * (3 + c % 3) * (np.cos(a) * yy + np.sin(a) * xx))
                         for c, a in enumerate(angles)])

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), -(-n // 10))[:n]
        base = colours[labels][:, None, None, :] + 0.25 * patterns[labels][..., None]
        noise = rng.normal(0, 0.08, size=(n, 32, 32, 3))
        return (np.clip(base + noise, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)

    train, test = make(n_train), make(n_test)
    return CifarData(*train, *test, CIFAR10_CLASSES, f"synthetic (seed {seed})", "synthetic")


def write_image_tree(data: CifarData, root: str | os.PathLike, suffix: str = ".png") -> Path:
    """Write ``data`` as root/{train,test}/<class>/NNNN<suffix> (PNG is lossless)."""
    from PIL import Image

    root = Path(root)
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        counters = dict.fromkeys(range(len(data.classes)), 0)
        for name in data.classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for image, label in zip(images, labels):
            Image.fromarray(image).save(root / split / data.classes[label] / f"{counters[label]:04d}{suffix}")
            counters[label] += 1
    return root
