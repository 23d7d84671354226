"""Top-3 classes for image files of any size, with the trained weights."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modular.transforms import test_transforms
from modular.weights import TrainedModel

SIZE = 32  # CIFAR-10's images: anything else is resized to this


class ImageError(ValueError):
    """An image file that cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]             # (class, probability), most likely first
    resized_from: tuple[int, int] | None      # (width, height) when the file was not 32x32

    def __str__(self) -> str:
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.top)
        resized = f" (resized from {self.resized_from[0]}x{self.resized_from[1]} to {SIZE}x{SIZE})" if self.resized_from else ""
        return f"{self.path}: {ranked}{resized}"


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int] | None]:
    """RGB uint8 H x W x 3 at 32x32, and the original (width, height) if it had to be resized."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            original = image.size
            if original != (SIZE, SIZE):
                image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8), (original if original != (SIZE, SIZE) else None)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; check the path") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: not a readable image ({type(error).__name__}); pass a PNG, JPEG or other "
                         "file Pillow opens") from None


@torch.no_grad()
def predict_files(trained: TrainedModel, paths: Iterable[str], top: int = 3) -> Iterator[Prediction | ImageError]:
    """One Prediction per readable file, one ImageError per unreadable one, in the order given."""
    normalize = test_transforms(trained.mean, trained.std)
    for path in paths:
        try:
            image, resized_from = read_image(path)
        except ImageError as error:
            yield error
            continue
        probabilities = torch.softmax(trained.model(normalize(image=image)["image"][None]), 1)[0]
        best = torch.topk(probabilities, top)
        yield Prediction(str(path), [(trained.classes[i], float(p)) for p, i in zip(best.values, best.indices)],
                         resized_from)
