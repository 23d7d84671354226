"""Shared fixtures: small synthetic CIFAR-10 data, image trees on disk, md5-free torchvision batches.

Everything here is tiny (tens to a few hundred 32x32 images) so every test file runs in seconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Before any import of albumentations (no PyPI version check) or matplotlib (no display).
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["MPLBACKEND"] = "Agg"

import helpers  # noqa: E402,F401  (puts the project root, helpers.ROOT, on sys.path: custom_resnet.py and modular/)
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from modular.data import CifarData, channel_stats  # noqa: E402
from modular.tools.synthetic import synthetic_cifar10, write_image_tree  # noqa: E402

# Normalization constants whose value * 255 is never an integer, so no uint8 pixel normalizes to 0.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="session")
def norm():
    """(mean, std) per channel, fractions of 255."""
    return MEAN, STD


@pytest.fixture(scope="session")
def tiny_data() -> CifarData:
    """50 train / 20 test images, 5 and 2 per class, grouped by class."""
    return synthetic_cifar10(n_train=50, n_test=20, seed=0)


@pytest.fixture(scope="session")
def small_data() -> CifarData:
    """200 train / 50 test images (enough for batches of 64)."""
    return synthetic_cifar10(n_train=200, n_test=50, seed=1)


@pytest.fixture(scope="session")
def small_stats(small_data):
    return channel_stats(small_data.train_images)


@pytest.fixture(scope="session")
def image_tree(tiny_data, tmp_path_factory) -> Path:
    """``tiny_data`` written as tree/{train,test}/<class>/NNNN.png. Read-only: copy it to mutate."""
    return write_image_tree(tiny_data, tmp_path_factory.mktemp("tree") / "cifar10")


@pytest.fixture
def tree_copy(image_tree, tmp_path) -> Path:
    """A private, mutable copy of ``image_tree``."""
    return Path(shutil.copytree(image_tree, tmp_path / "cifar10"))


@pytest.fixture
def cifar10_no_md5(monkeypatch):
    """torchvision's CIFAR10 without md5 checks, so synthetic batches in its format load."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[name, None] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, None] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})
    return CIFAR10


@pytest.fixture(scope="session")
def grid_image() -> np.ndarray:
    """32x32x3 uint8 whose (R, G) pair is unique per pixel: R encodes the row, G the column.

    No value normalizes to exactly 0 with MEAN (mean * 255 is not an integer).
    """
    yy, xx = np.mgrid[0:32, 0:32]
    blue = np.random.default_rng(0).integers(0, 256, size=(32, 32))
    return np.stack([3 + 7 * yy, 3 + 7 * xx, blue], axis=-1).astype(np.uint8)


@pytest.fixture(scope="session")
def locate_window():
    """locate(output_tensor, image, mean, std) -> (y, x, flipped) of the 32x32 window of the
    reflect-padded (pad 4) image that the de-normalized output equals, or None."""

    def locate(output, image: np.ndarray, mean, std):
        values = (output.numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)) * 255.0
        restored = np.rint(values)
        assert np.allclose(values, restored, atol=1e-3), "de-normalized output is not whole pixel values"
        restored = restored.astype(np.int64)
        padded = np.pad(image.astype(np.int64), ((4, 4), (4, 4), (0, 0)), mode="reflect")
        for y in range(padded.shape[0] - 31):
            for x in range(padded.shape[1] - 31):
                window = padded[y:y + 32, x:x + 32]
                if np.array_equal(window, restored):
                    return y, x, False
                if np.array_equal(window[:, ::-1], restored):
                    return y, x, True
        return None

    return locate
