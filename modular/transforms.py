"""The prescribed augmentation, albumentations 2.x.

train: Normalize -> PadIfNeeded(40, reflect) -> RandomCrop(32) -> HorizontalFlip -> CoarseDropout(one 8x8 hole) -> ToTensorV2
test:  Normalize -> ToTensorV2

The cutout hole is filled with 0, which after Normalize *is* the dataset mean (the original
filled with the raw means after Normalize: mean + 0.49 std, a light grey).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

# albumentations asks PyPI for a newer version when it is imported, unless NO_ALBUMENTATIONS_UPDATE says not
# to: offline that import waits for the network and warns. The variable is its only switch, read once at import,
# so it is set for that import alone and the environment left as it was.
_SWITCH_GIVEN = "NO_ALBUMENTATIONS_UPDATE" in os.environ
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

if not _SWITCH_GIVEN:
    del os.environ["NO_ALBUMENTATIONS_UPDATE"]

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def train_transforms(mean: Sequence[float], std: Sequence[float], cutout_p: float = 1.0,
                     cutout_size: int = 8, seed: int | None = None) -> A.Compose:
    """The training pipeline; ``mean``/``std`` are per-channel fractions of 255."""
    pipeline = A.Compose([
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        # reflect padding, as in the original pipeline and Page's recipe (2.x's default is constant)
        A.PadIfNeeded(min_height=40, min_width=40, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=32, width=32),
        A.HorizontalFlip(p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cutout_size, cutout_size),
                        hole_width_range=(cutout_size, cutout_size), fill=0, p=cutout_p),
        ToTensorV2(),
    ], strict=True)
    if seed is not None:
        reseed(pipeline, seed)
    return pipeline


def reseed(transform: A.Compose, seed: int) -> None:
    """Seed every step of ``transform`` from ONE shared generator pair.

    ``Compose.set_random_seed`` gives each step its own generator with the same seed, so the
    flip's first draw equals the crop's: the first image was flipped exactly when its crop
    started near the top. A shared stream keeps the steps independent.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def test_transforms(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """The test pipeline: normalize only."""
    return A.Compose([
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ], strict=True)


def denormalize(images, mean: Sequence[float], std: Sequence[float]):
    """Undo Normalize on N x 3 x H x W (or 3 x H x W) tensors or arrays -> values in [0, 1], channels last."""
    array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, float)
    array = np.moveaxis(array, -3, -1)
    return np.clip(array * np.asarray(std) + np.asarray(mean), 0.0, 1.0)

