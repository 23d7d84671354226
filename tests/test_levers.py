"""The levers of modular/recipe.py and the validation split: each does what its Config setting says,
off by default, and each can fail (a broken lever breaks its test)."""

from __future__ import annotations

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
from torch import nn

from custom_resnet import CustomResNet, Residual
from modular import learner as learner_module
from modular.checkpoint import find_checkpoint, load_checkpoint
from modular.config import Config, ConfigError
from modular.data import channel_stats, load_data
from modular.evaluate import multiview_probabilities
from modular.learner import Learner
from modular.recipe import (
    WHITENING_EPS,
    dirac_residual_convs,
    freeze_bn_scales,
    patch_covariance,
    speed_up_bn_biases,
    update_ema,
    whiten_prep_conv,
)
from modular.tools.synthetic import synthetic_cifar10, write_image_tree
from modular.tools.weights import evaluated_weights

FAST = dict(device="cpu", precision="fp32", workers=0, batch_size=16, max_lr=0.05)


def quiet(*_):
    pass


# --------------------------------------------------------------------------------------------
# The validation split
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_tree(synthetic_cifar10(n_train=200, n_test=30, seed=4), tmp_path_factory.mktemp("tree"))


def test_the_validation_split_holds_out_balanced_training_images_and_leaves_the_test_set_alone(tree):
    full = load_data(Config(data_dir=str(tree)))
    split = load_data(Config(data_dir=str(tree), val_split=50))
    assert len(split.test_labels) == 50 and len(split.train_labels) == 150
    assert np.bincount(split.test_labels).tolist() == [5] * 10  # class-balanced
    held_out = {image.tobytes() for image in split.test_images}
    assert held_out <= {image.tobytes() for image in full.train_images}  # drawn from the training set...
    assert not held_out & {image.tobytes() for image in split.train_images}  # ...and no longer trained on
    assert not held_out & {image.tobytes() for image in full.test_images}  # the test set is not used
    assert "validation split of 50" in split.source and "validation split of 50" in split.kind


def test_the_validation_split_is_the_same_for_every_seed(tree):
    one, other = (load_data(Config(data_dir=str(tree), val_split=50, seed=seed)) for seed in (0, 7))
    assert np.array_equal(one.test_images, other.test_images) and np.array_equal(one.train_labels, other.train_labels)


def test_a_validation_split_larger_than_a_class_names_the_flag(tree):
    with pytest.raises(ConfigError, match="--val-split"):
        load_data(Config(data_dir=str(tree), val_split=500))


def test_a_run_on_the_validation_split_says_so_in_its_record_and_log(tree, tmp_path):
    from modular.tools.train_command import train

    cfg = Config(data_dir=str(tree), val_split=50, epochs=1, output_dir=str(tmp_path / "out"), **FAST)
    lines = []
    record = train(cfg, log=lines.append)
    assert record["config"]["val_split"] == 50 and record["test_images"] == 50
    assert "validation split of 50" in record["data_source"] and "validation split" in record["test_set"]["kind"]
    assert any(" / 50 validation images" in line for line in lines)
    assert lines[-1].startswith(f"validation accuracy {record['test_acc']:.2f}%")
    assert not any("test images" in line or "test acc" in line for line in lines)  # the epoch table says "val acc"


# --------------------------------------------------------------------------------------------
# Initialisation: whitening and Dirac
# --------------------------------------------------------------------------------------------

def test_whitening_init_decorrelates_the_training_patches_with_filters_of_both_signs():
    data = synthetic_cifar10(n_train=300, n_test=10, seed=1)
    mean, std = channel_stats(data.train_images)
    model = CustomResNet()
    untouched = model.prep[0].weight[54:].detach().clone()
    whiten_prep_conv(model, data.train_images, mean, std)
    weight = model.prep[0].weight.detach().double().reshape(64, 27)
    first = weight[:27]
    assert torch.equal(weight[27:54], -first) and torch.equal(model.prep[0].weight[54:], untouched)
    covariance = patch_covariance(data.train_images, mean, std)
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)
    # the 27 filters' outputs on the patches: uncorrelated, each with variance lambda / (lambda + eps)
    assert torch.allclose(first @ covariance @ first.T, torch.diag(eigenvalues / (eigenvalues + WHITENING_EPS)), atol=1e-6)
    assert model.prep[0].weight.requires_grad and not model.prep[0].bias[:54].any()


def test_dirac_init_makes_every_residual_conv_the_identity_and_no_other():
    model = CustomResNet().eval()
    dirac_residual_convs(model)
    for block in (m for m in model.modules() if isinstance(m, Residual)):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2
        for conv in convs:
            probe = torch.randn(2, conv.in_channels, 8, 8)
            assert torch.equal(conv(probe), probe)
    assert not torch.allclose(model.layer1[0][0].weight, torch.nn.init.dirac_(torch.empty_like(model.layer1[0][0].weight)))


# --------------------------------------------------------------------------------------------
# Frozen BN scales, fast BN biases
# --------------------------------------------------------------------------------------------

def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def test_frozen_bn_scales_stay_at_one_while_their_biases_train():
    torch.manual_seed(0)
    model = CustomResNet()
    freeze_bn_scales(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    biases = [bn.bias.detach().clone() for bn in bns]
    run_steps(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad for bn in bns)
    assert all(not torch.equal(bn.bias, before) for bn, before in zip(bns, biases))


def test_fast_bn_biases_step_as_a_group_with_the_lr_times_k_and_weight_decay_over_k():
    """The gradient hook on one LR is the same SGD update as a parameter group at k x the LR with weight decay / k."""
    k, lr, wd = 64.0, 0.01, 5e-4
    torch.manual_seed(0)
    hooked = CustomResNet()
    grouped = CustomResNet()
    grouped.load_state_dict(hooked.state_dict())
    speed_up_bn_biases(hooked, k)
    run_steps(hooked, torch.optim.SGD(hooked.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd))
    bn_biases = {id(m.bias) for m in grouped.modules() if isinstance(m, nn.BatchNorm2d)}
    rest = [p for p in grouped.parameters() if id(p) not in bn_biases]
    fast = [p for p in grouped.parameters() if id(p) in bn_biases]
    run_steps(grouped, torch.optim.SGD([{"params": rest}, {"params": fast, "lr": lr * k, "weight_decay": wd / k}],
                                       lr=lr, momentum=0.9, nesterov=True, weight_decay=wd))
    for (name, a), b in zip(hooked.named_parameters(), grouped.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_fast_bn_biases_are_refused_with_adam():
    with pytest.raises(ConfigError, match="--optimizer sgd"):
        Config(optimizer="adam", bn_bias_lr_factor=64).validate()


def test_the_learner_applies_the_levers_its_config_turns_on_and_none_by_default():
    data = synthetic_cifar10(n_train=64, n_test=10, seed=0)
    plain = Learner(Config(**FAST), data, log=quiet).model
    levered = Learner(Config(**FAST, frozen_bn_scale=True, dirac_init=True, whiten_init=True), data, log=quiet).model
    assert all(m.weight.requires_grad for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(m.weight.requires_grad for m in levered.modules() if isinstance(m, nn.BatchNorm2d))
    identity = nn.init.dirac_(torch.empty_like(levered.layer1[1][0][0].weight))
    assert torch.equal(levered.layer1[1][0][0].weight, identity)
    assert not torch.equal(plain.layer1[1][0][0].weight, identity)
    assert not torch.equal(plain.prep[0].weight, levered.prep[0].weight)


def test_a_learner_given_weights_skips_the_initialisation_levers_but_keeps_the_training_ones(monkeypatch):
    """Loaded weights replace an initialisation: computing the whitening would only cost time."""
    from modular import recipe
    from modular.checkpoint import Weights

    data = synthetic_cifar10(n_train=64, n_test=10, seed=0)
    trained = Learner(Config(**FAST), data, log=quiet)
    weights = Weights(trained.model.state_dict(), trained.facts.mean, trained.facts.std, "given")

    def must_not_run(*_):
        raise AssertionError("an initialisation lever ran under loaded weights")

    monkeypatch.setattr(recipe, "whiten_prep_conv", must_not_run)
    monkeypatch.setattr(recipe, "dirac_residual_convs", must_not_run)
    cfg = Config(**FAST, whiten_init=True, dirac_init=True, frozen_bn_scale=True)
    given = Learner(cfg, data, start=weights, log=quiet).model
    assert torch.equal(given.prep[0].weight, trained.model.prep[0].weight)
    assert not any(m.weight.requires_grad for m in given.modules() if isinstance(m, nn.BatchNorm2d))


# --------------------------------------------------------------------------------------------
# EMA of the weights
# --------------------------------------------------------------------------------------------

def test_the_moving_average_starts_as_the_model_and_moves_every_n_steps_with_its_decay_per_step(monkeypatch):
    """Against an average kept by hand over the same steps: a copy of the initial weights, then
    ema = rho * ema + (1 - rho) * weights every ``ema_every`` steps, rho = decay ** ema_every (the decay
    is per training step, as in Page's update_ema); BN statistics included."""
    cfg = Config(**FAST, epochs=1, ema_decay=0.9, ema_every=3)
    learner = Learner(cfg, synthetic_cifar10(n_train=112, n_test=10, seed=0), log=quiet)  # 7 steps of 16
    kept = {k: v.detach().clone().double() for k, v in learner.model.state_dict().items() if v.is_floating_point()}
    seen = []

    def update_and_keep(ema, model):
        update_ema(ema, model)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                kept[k] = 0.9 ** 3 * kept[k] + (1 - 0.9 ** 3) * v.detach().double()
        seen.append(len(learner.lr_per_step))

    monkeypatch.setattr(learner_module, "update_ema", update_and_keep)
    learner.fit_one_cycle()
    assert len(seen) == 2 and int(learner.ema.n_averaged) == 2  # after steps 3 and 6 of 7
    averaged = learner.evaluated_model.state_dict()
    for k, v in kept.items():
        assert torch.allclose(averaged[k].double(), v, atol=1e-6), k
    assert not torch.equal(averaged["fc.weight"], learner.model.state_dict()["fc.weight"])


def test_a_run_with_the_moving_average_evaluates_and_ships_it(tmp_path):
    from modular.evaluate import predict

    out = tmp_path / "out"
    cfg = Config(**FAST, epochs=1, ema_decay=0.5, ema_every=1, output_dir=str(out))
    learner = Learner(cfg, synthetic_cifar10(n_train=64, n_test=20, seed=0), log=quiet)
    result = learner.fit_one_cycle()
    assert result.model is learner.ema.module
    ema_acc = predict(learner.ema.module, learner.test_loader, learner.runtime, learner.criterion).accuracy
    assert result.history[-1]["test_acc"] == ema_acc
    saved = load_checkpoint(out / "checkpoint.pt")
    shipped = evaluated_weights(saved)
    assert all(torch.equal(shipped[k], v) for k, v in learner.ema.module.state_dict().items())
    assert evaluated_weights({**saved, "ema": None}) is saved["model"]


def test_resuming_a_run_with_the_moving_average_gives_the_same_bits(tmp_path, monkeypatch):
    data = synthetic_cifar10(n_train=64, n_test=20, seed=0)
    reference = Config(**FAST, epochs=3, ema_decay=0.8, ema_every=2, output_dir=str(tmp_path / "reference"))
    Learner(reference, data, log=quiet).fit_one_cycle()

    stopped = reference.replace(output_dir=str(tmp_path / "stopped"))
    save = learner_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(learner_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        Learner(stopped, data, log=quiet).fit_one_cycle()
    monkeypatch.undo()
    Learner(stopped, data, find_checkpoint(stopped, resume=True), log=quiet).fit_one_cycle()

    mine, theirs = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("stopped", "reference"))
    assert mine["epoch"] == theirs["epoch"] == 3
    for part in ("model", "ema"):
        assert mine[part].keys() == theirs[part].keys()
        assert all(torch.equal(mine[part][k], theirs[part][k]) for k in mine[part]), part


# --------------------------------------------------------------------------------------------
# Multi-view TTA
# --------------------------------------------------------------------------------------------

class Recorder(nn.Module):
    """Logits that depend on the image's top-left pixel; remembers every batch it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images):
        self.seen.append(images.clone())
        return torch.stack([images[:, 0, 0, 0], images[:, 0, 0, -1]], 1)


def test_multiview_tta_averages_the_mirror_pair_and_the_two_one_pixel_shifts():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) / 100
    model = Recorder()
    probabilities = multiview_probabilities(model, images)
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    views = [images, images.flip(3), padded[:, :, :4, :4], padded[:, :, :4, :4].flip(3),
             padded[:, :, 2:, 2:], padded[:, :, 2:, 2:].flip(3)]
    assert len(model.seen) == 6 and all(torch.equal(a, b) for a, b in zip(model.seen, views))
    soft = [torch.softmax(Recorder()(v), 1) for v in views]
    expected = (soft[0] + soft[1]) / 4 + (soft[2] + soft[3] + soft[4] + soft[5]) / 8
    assert torch.allclose(probabilities, expected)


def test_multiview_tta_is_reported_apart_only_when_asked():
    data = synthetic_cifar10(n_train=32, n_test=20, seed=0)
    off = Learner(Config(**FAST), data, log=quiet).evaluate()
    on = Learner(Config(**FAST, multiview_tta=True), data, log=quiet).evaluate()
    assert off.multiview_tta_acc is None and "multiview_tta_acc" not in off.to_dict()
    assert 0 <= on.multiview_tta_acc <= 100 and on.test_acc == off.test_acc  # the headline stays the plain one
