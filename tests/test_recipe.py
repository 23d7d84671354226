"""The recipe, pinned: every ingredient of the defaults as a literal, read off the objects the training
builds (not off Config alone), so changing any one of them makes a test here fail.

Page's recipe for this layout: SGD Nesterov 0.9, weight decay 5e-4 on every parameter, batch 512,
label smoothing 0.2, logits x 0.125, OneCycle linear in two phases peaking at the last step of epoch 5
of 24, from LRMAX/100 to LRMAX/100/1e4; the prescribed augmentation in its order.
"""

from __future__ import annotations

import albumentations as A
import cv2
import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from modular.config import Config
from modular.learner import Learner
from modular.schedule import one_cycle, planned_lrs
from modular.tools.synthetic import synthetic_cifar10

DEFAULTS = Config()


@pytest.fixture(scope="module")
def learner():
    """The defaults' Learner over 1,100 synthetic images (only the device is changed)."""
    return Learner(DEFAULTS.replace(device="cpu", workers=0), synthetic_cifar10(n_train=1100, n_test=20, seed=0),
                   log=lambda *_: None)


def test_sgd_nesterov_with_weight_decay_on_every_parameter(learner):
    optimizer = learner.optimizer
    assert type(optimizer) is torch.optim.SGD
    [group] = optimizer.param_groups  # one group: every parameter (BN and biases too) gets the same decay
    assert {id(p) for p in group["params"]} == {id(p) for p in learner.model.parameters()}
    assert (group["momentum"], group["nesterov"], group["weight_decay"], group["dampening"]) == (0.9, True, 5e-4, 0)


def test_adam_the_originals_optimizer_with_its_own_decay():
    adam = Learner(DEFAULTS.replace(device="cpu", workers=0, optimizer="adam"),
                   synthetic_cifar10(n_train=20, n_test=10, seed=0), log=lambda *_: None)
    assert type(adam.optimizer) is torch.optim.Adam
    [group] = adam.optimizer.param_groups
    assert (group["weight_decay"], group["betas"], group["amsgrad"]) == (1e-4, (0.9, 0.999), False)


def test_loss_label_smoothing_and_logit_scale(learner):
    criterion, model = learner.criterion, learner.model
    assert type(criterion) is torch.nn.CrossEntropyLoss and criterion.label_smoothing == 0.2
    assert model.logit_scale == 0.125
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        unscaled = model.fc(torch.flatten(model.pool(model.layer3(model.layer2(model.layer1(model.prep(x))))), 1))
        assert torch.allclose(model(x), unscaled * 0.125)


def test_batch_of_512_shuffled_for_training(learner):
    loader = learner.train_loader
    assert loader.batch_size == 512 and not loader.drop_last
    assert len(loader) == 3  # 1100 images: 512 + 512 + 76, the last partial batch kept
    assert loader.sampler.shuffle and not learner.test_loader.sampler.shuffle


def test_one_cycle_shape():
    steps = 98  # 50,000 images in batches of 512
    lrs = np.asarray(planned_lrs(DEFAULTS, 0.4, steps))
    assert DEFAULTS.epochs == 24 and lrs.size == 24 * steps
    peak = int(np.argmax(lrs))
    assert peak == 5 * steps - 1 and lrs[peak] == pytest.approx(0.4)  # the last step of epoch 5
    assert lrs[0] == pytest.approx(0.4 / 100)
    assert lrs[-1] == pytest.approx(0.4 / 100 / 1e4, abs=1e-9) and lrs.min() >= 0
    # linear in both phases: constant differences up and down, and no third phase
    assert np.diff(lrs[:peak + 1]) == pytest.approx(np.full(peak, (0.4 - 0.004) / peak))
    assert np.diff(lrs[peak:]) == pytest.approx(np.full(lrs.size - 1 - peak, (0.4 / 1e6 - 0.4) / (lrs.size - 1 - peak)))
    scheduler = one_cycle(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4), DEFAULTS, 0.4, steps)
    assert not scheduler.cycle_momentum  # momentum stays 0.9 throughout


def test_augmentation_order_and_parameters(learner):
    mean, std = tuple(learner.facts.mean), tuple(learner.facts.std)  # the training set's own statistics
    steps = learner.train_transform.transforms
    assert [type(t) for t in steps] == [A.Normalize, A.PadIfNeeded, A.RandomCrop, A.HorizontalFlip, A.CoarseDropout,
                                       ToTensorV2]
    normalize, pad, crop, flip, cutout, _ = steps
    assert (normalize.mean, normalize.std, normalize.max_pixel_value) == (mean, std, 255.0)
    assert (pad.min_height, pad.min_width, pad.border_mode) == (40, 40, cv2.BORDER_REFLECT_101)
    assert (crop.height, crop.width, flip.p) == (32, 32, 0.5)
    assert (cutout.num_holes_range, cutout.hole_height_range, cutout.hole_width_range) == ((1, 1), (8, 8), (8, 8))
    assert (cutout.fill, cutout.p) == (0, 1.0)  # 0 after Normalize is the dataset mean; on every image
    test = learner.test_transform.transforms
    assert [type(t) for t in test] == [A.Normalize, ToTensorV2] and test[0].mean == mean


def test_every_lever_is_off_by_default(learner):
    """The levers of modular/recipe.py change nothing until adopted: every BN scale trains, no BN bias
    gradient is scaled, no moving average, no validation split, no multi-view TTA."""
    bns = [m for m in learner.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.weight.requires_grad and not bn.bias._backward_hooks for bn in bns)
    assert learner.ema is None and learner.evaluated_model is learner.model
    assert len(learner.data.test_labels) == 20  # the test set, not a held-out split
    cfg = learner.cfg
    assert (cfg.whiten_init, cfg.dirac_init, cfg.frozen_bn_scale, cfg.bn_bias_lr_factor, cfg.ema_decay,
            cfg.val_split, cfg.multiview_tta) == (False, False, False, 1.0, None, None, False)
