"""predict(): plain cross-entropy beside the training criterion, and flip TTA in two forward passes;
full_evaluation(): the figures a run records, on a model whose predictions are known."""

from __future__ import annotations

import math

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modular.device import select_runtime
from modular.evaluate import full_evaluation, predict


class CountingModel(torch.nn.Module):
    """A linear model on flattened images that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(3)]


def test_cross_entropy_is_plain_and_loss_is_the_criterion(batches):
    model, runtime = CountingModel(), select_runtime("cpu", "fp32")
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    got = predict(model, batches, runtime, smoothed)
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(images)
    assert got.cross_entropy == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert got.loss == pytest.approx(float(smoothed(logits, labels)), rel=1e-5)
    assert got.loss != pytest.approx(got.cross_entropy, rel=1e-3)


def test_flip_tta_takes_two_forward_passes_per_batch(batches):
    model, runtime = CountingModel(), select_runtime("cpu", "fp32")
    got = predict(model, batches, runtime, flip_tta=True)
    assert model.calls == 2 * len(batches)
    images = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        want = torch.log((F.softmax(model(images), 1) + F.softmax(model(torch.flip(images, dims=[3])), 1)) / 2)
    assert torch.allclose(torch.from_numpy(got.tta_logits), want, atol=1e-5)
    assert got.tta_accuracy == pytest.approx(100.0 * float((want.argmax(1) == torch.cat([b[1] for b in batches])).float().mean()))


def test_full_evaluation_runs_the_test_set_once_with_its_mirror(batches):
    model, runtime = CountingModel(), select_runtime("cpu", "fp32")
    full_evaluation(model, batches, runtime, [str(i) for i in range(10)], log=None)
    assert model.calls == 2 * len(batches)


class LookupModel(torch.nn.Module):
    """Predicts the class written in every pixel of an image (logit 5 for it, 0 for the others), so its
    predictions, and their mirrors', are known beforehand."""

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].long(), 10).float() * 5.0


# 12 test images over 3 batches: the true class, and the class the model predicts
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 9, 9]
PREDICTED = [0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 9, 0]


def test_full_evaluation_gives_the_figures_counted_by_hand():
    images = torch.tensor(PREDICTED, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 8, 8)
    labels = torch.tensor(LABELS)
    batches = [(images[i:i + 5], labels[i:i + 5]) for i in range(0, 12, 5)]
    classes = [f"c{i}" for i in range(10)]
    result = full_evaluation(LookupModel(), batches, select_runtime("cpu", "fp32"), classes, log=None)
    assert result.images == 12
    assert result.test_acc == pytest.approx(100 * 8 / 12)            # 8 of the 12 right
    assert result.tta_test_acc == pytest.approx(result.test_acc)     # a mirrored image predicts the same class
    ce = math.log(math.exp(5) + 9) - 5 * 8 / 12                     # -log softmax: 8 right at logit 5, 4 wrong at 0
    assert result.test_ce == pytest.approx(ce, rel=1e-5)
    assert result.test_loss == pytest.approx(ce, rel=1e-5)           # no criterion given: plain cross-entropy
    matrix = np.zeros((10, 10), int)
    for actual, predicted in zip(LABELS, PREDICTED):
        matrix[actual, predicted] += 1
    assert result.confusion_matrix == matrix.tolist()                # rows true, columns predicted
    assert sum(map(sum, result.confusion_matrix)) == 12
    assert result.per_class_acc == pytest.approx({**{name: 0.0 for name in classes}, "c0": 100 * 2 / 3, "c1": 50.0,
                                                  "c2": 75.0, "c3": 100.0, "c9": 50.0})
    assert result.misclassified == [{"index": 2, "predicted": 1, "actual": 0}, {"index": 4, "predicted": 2, "actual": 1},
                                    {"index": 8, "predicted": 3, "actual": 2}, {"index": 11, "predicted": 0, "actual": 9}]
    assert result.to_dict()["test_acc"] == result.test_acc and "images" not in result.to_dict()
