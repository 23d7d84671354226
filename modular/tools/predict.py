"""Top-3 classes for image files of any size, with the trained weights (read by modular/tools/images.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from modular.tools.images import ImageError, read_image
from modular.tools.weights import TrainedModel
from modular.transforms import test_transforms

__all__ = ["ImageError", "Prediction", "predict_files"]


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]             # (class, probability), most likely first
    steps: tuple[str, ...] = ()               # what the reader did to the file (crop, resize, ...), in order

    def __str__(self) -> str:
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.top)
        return f"{self.path}: {ranked}" + (f" ({'; '.join(self.steps)})" if self.steps else "")


@torch.no_grad()
def predict_files(trained: TrainedModel, paths: Iterable[str], top: int = 3) -> Iterator[Prediction | ImageError]:
    """One Prediction per readable file, one ImageError per unreadable one, in the order given."""
    normalize = test_transforms(trained.mean, trained.std)
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as error:
            yield error
            continue
        probabilities = torch.softmax(trained.model(normalize(image=image.pixels)["image"][None]), 1)[0]
        best = torch.topk(probabilities, top)
        yield Prediction(str(path), [(trained.classes[i], float(p)) for p, i in zip(best.values, best.indices)],
                         image.steps)
