"""Top-3 classes for image files of any size, with the trained weights (read by modular/tools/images.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from modular.tools.images import ImageError, read_image
from modular.tools.report import OFFICIAL_MEAN, OFFICIAL_STD
from modular.tools.weights import TrainedModel
from modular.transforms import test_transforms

__all__ = ["ImageError", "Prediction", "predict_files", "unofficial_training_note"]


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]             # (class, probability), most likely first
    steps: tuple[str, ...] = ()               # what the reader did to the file (crop, resize, ...), in order

    def __str__(self) -> str:
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.top)
        return f"{self.path}: {ranked}" + (f" ({'; '.join(self.steps)})" if self.steps else "")


def unofficial_training_note(trained: TrainedModel) -> str | None:
    """One line when ``trained`` was not trained on the official CIFAR-10 training set (None when it was), told
    by the channel statistics its inputs are normalized with: a subset or a lossy copy (JPEG) has others."""
    if ([round(x, 4) for x in trained.mean], [round(x, 4) for x in trained.std]) == (list(OFFICIAL_MEAN), list(OFFICIAL_STD)):
        return None
    mean = ", ".join(f"{x:.4f}" for x in trained.mean)
    return (f"note: {trained.source} was not trained on the official CIFAR-10 training set (its channel mean {mean}, "
            f"the official {', '.join(f'{x:.4f}' for x in OFFICIAL_MEAN)}): a subset, a lossy copy such as JPEG, or "
            "other images")


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
