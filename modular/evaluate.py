"""Accuracy, loss, per-class accuracy, the confusion matrix, misclassified images and flip TTA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modular.progress import track


@dataclass
class Predictions:
    logits: np.ndarray      # N x classes, float32
    labels: np.ndarray      # N, int64
    loss: float             # the criterion (the training loss, label smoothing included), per sample
    cross_entropy: float    # plain cross-entropy, per sample: the "test loss" a reader expects
    tta_logits: np.ndarray | None = None  # log of the mean softmax of each image and its mirror
    multiview_logits: np.ndarray | None = None  # ... and of its one-pixel shifts (``multiview_probabilities``)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        """Percent of correct predictions."""
        return 100.0 * float((self.predicted == self.labels).mean())

    @property
    def tta_accuracy(self) -> float:
        """Percent correct with flip TTA (``predict(..., flip_tta=True)`` only)."""
        return 100.0 * float((self.tta_logits.argmax(1) == self.labels).mean())

    @property
    def multiview_accuracy(self) -> float:
        """Percent correct with multi-view TTA (``predict(..., multiview=True)`` only)."""
        return 100.0 * float((self.multiview_logits.argmax(1) == self.labels).mean())


def mirror_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The mean softmax of each image and its mirror image."""
    return (F.softmax(model(images).float(), 1) + F.softmax(model(torch.flip(images, dims=[3])).float(), 1)) / 2


def multiview_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Half the mirror pair's mean softmax, half that of the two one-pixel shifts (up-left and down-right,
    reflect-padded) with their mirrors: airbench's six views."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
    return (mirror_probabilities(model, images) + sum(mirror_probabilities(model, s) for s in shifted) / 2) / 2


@torch.no_grad()
def predict(model: torch.nn.Module, loader, runtime, criterion: torch.nn.Module | None = None,
            flip_tta: bool = False, log: Callable[[str], None] | None = None, multiview: bool = False) -> Predictions:
    """Logits for every sample of ``loader`` in order, with the mean ``criterion`` (default: plain
    cross-entropy) and the mean plain cross-entropy. ``flip_tta`` also runs each mirrored image
    once and keeps the log of the two softmaxes' mean (two forward passes per batch in all).
    ``multiview`` adds the six views of ``multiview_probabilities``. ``log``: show progress
    (``progress.track``); None, as after every epoch, shows none."""
    criterion = criterion or torch.nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    outputs, mirrored_outputs, multiview_outputs, labels = [], [], [], []
    loss_sum = torch.zeros((), device=runtime.device)
    ce_sum = torch.zeros((), device=runtime.device)
    batches = loader if log is None else track(loader, "evaluation", len(loader), "batches", log)
    try:
        for images, targets in batches:
            images, targets = runtime.to_device(images), targets.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = model(images).float()
                if flip_tta:
                    mirrored = model(torch.flip(images, dims=[3])).float()
                    tta = torch.log((F.softmax(logits, 1) + F.softmax(mirrored, 1)) / 2)
                    mirrored_outputs.append(tta.cpu())
                if multiview:
                    multiview_outputs.append(torch.log(multiview_probabilities(model, images)).cpu())
            loss_sum += criterion(logits, targets) * len(targets)  # batch mean x size = batch sum
            ce_sum += F.cross_entropy(logits, targets, reduction="sum")
            outputs.append(logits.cpu())
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    n = max(sum(len(t) for t in labels), 1)
    tta_logits = torch.cat(mirrored_outputs).numpy() if flip_tta else None
    multiview_logits = torch.cat(multiview_outputs).numpy() if multiview else None
    return Predictions(torch.cat(outputs).numpy(), torch.cat(labels).numpy(), float(loss_sum) / n, float(ce_sum) / n,
                       tta_logits, multiview_logits)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: np.ndarray, classes) -> dict[str, float]:
    totals = matrix.sum(1)
    return {name: 100.0 * float(matrix[i, i]) / max(int(totals[i]), 1) for i, name in enumerate(classes)}


def misclassified(labels: np.ndarray, predicted: np.ndarray) -> list[dict[str, int]]:
    """Every wrong test prediction: its index in the test set, predicted and true class."""
    wrong = np.flatnonzero(predicted != labels)
    return [{"index": int(i), "predicted": int(predicted[i]), "actual": int(labels[i])} for i in wrong]


def gallery_sample(wrong: list[dict[str, int]], n: int = 20) -> list[dict[str, int]]:
    """Up to ``n`` misclassified images spread over the test set (it is ordered by class): the ones the
    misclassified gallery and the Grad-CAM figure show."""
    return wrong[:: max(1, len(wrong) // n)][:n]


@dataclass
class Evaluation:
    """Everything the run record holds about the test set (accuracies in percent); ``to_dict`` gives
    the record's fields."""
    test_acc: float
    test_loss: float                 # the training criterion (label smoothing included)
    test_ce: float                   # plain cross-entropy
    tta_test_acc: float              # flip TTA, reported apart
    per_class_acc: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: true class; columns: predicted class
    misclassified: list[dict[str, int]]
    images: int
    multiview_tta_acc: float | None = None  # multi-view TTA (cfg.multiview_tta), reported apart

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items()
                if name != "images" and not (name == "multiview_tta_acc" and value is None)}

    def __str__(self) -> str:
        return (f"test accuracy {self.test_acc:.2f}%, flip TTA {self.tta_test_acc:.2f}% (not counted); test loss "
                f"{self.test_loss:.4f}, cross-entropy {self.test_ce:.4f}; {self.images:,} test images")


def full_evaluation(model, loader, runtime, classes, criterion=None,
                    log: Callable[[str], None] | None = print, multiview: bool = False) -> Evaluation:
    """The test set through ``model`` once, and once mirrored (flip TTA), and in six views if ``multiview``;
    progress through ``log`` (None: none)."""
    plain = predict(model, loader, runtime, criterion, flip_tta=True, log=log, multiview=multiview)
    matrix = confusion_matrix(plain.labels, plain.predicted, len(classes))
    return Evaluation(plain.accuracy, plain.loss, plain.cross_entropy, plain.tta_accuracy,
                      per_class_accuracy(matrix, classes), matrix.tolist(), misclassified(plain.labels, plain.predicted),
                      len(plain.labels), plain.multiview_accuracy if multiview else None)
