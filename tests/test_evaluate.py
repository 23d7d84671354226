"""predict(): plain cross-entropy beside the training criterion, and flip TTA in two forward passes."""

from __future__ import annotations

import helpers  # noqa: F401  (environment and sys.path)
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
    result = full_evaluation(model, batches, runtime, [str(i) for i in range(10)])
    assert model.calls == 2 * len(batches)
    assert {"test_acc", "test_loss", "test_ce", "tta_test_acc"} <= set(result.to_dict())
