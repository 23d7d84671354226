"""The LR range test through the pipeline, and the rule that turns its curve into LRMAX and LRMIN."""

from __future__ import annotations

import math

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch

from modular import pipeline
from modular.config import Config
from modular.data import synthetic_cifar10
from modular.lr_finder import RULE, SKIP_END, SKIP_START, LRFinderError, LRFindResult, choose_lr_max

ITERS = 30


@pytest.fixture(scope="module")
def range_tested():
    """(config, model state before, model afterwards, result) of one 30-step range test."""
    cfg = Config(batch_size=32, lr_find_iters=ITERS, device="cpu", precision="fp32")
    s = pipeline.setup(cfg, synthetic_cifar10(n_train=200, n_test=50, seed=3))
    model = pipeline.new_model(cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = pipeline.lr_range_test(s, model)
    return cfg, before, model, result


def test_range_test_returns_lrmax_and_lrmin(range_tested):
    cfg, _, _, result = range_tested
    assert isinstance(result, LRFindResult)
    assert math.isfinite(result.lr_max) and result.lr_max > result.lr_min > 0
    assert result.lr_min == pytest.approx(result.lr_max / cfg.div_factor, rel=1e-12)
    assert cfg.lr_find_start <= result.lr_max <= cfg.lr_find_end
    assert result.rule == RULE


def test_range_test_curve_and_choice(range_tested):
    cfg, _, _, result = range_tested
    lrs, losses = np.asarray(result.lrs), np.asarray(result.losses)
    assert SKIP_START + SKIP_END + 2 <= len(lrs) == len(losses) <= ITERS
    assert lrs[0] == pytest.approx(cfg.lr_find_start, rel=1e-9)
    assert (np.diff(lrs) > 0).all()
    # exponential steps: a constant ratio, reaching lr_find_end at the last planned step
    ratio = (cfg.lr_find_end / cfg.lr_find_start) ** (1 / (ITERS - 1))
    assert lrs[1:] / lrs[:-1] == pytest.approx(np.full(len(lrs) - 1, ratio), rel=1e-6)
    # LRMAX is the LR at the minimum smoothed loss, in the window the rule looks at
    assert result.lr_max == choose_lr_max(result.lrs, result.losses)[0]
    window = slice(SKIP_START, len(losses) - SKIP_END)
    assert result.lr_max == lrs[window][np.nanargmin(losses[window])]


def test_range_test_leaves_the_model_as_it_was(range_tested):
    _, before, model, _ = range_tested
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the range test changed {changed[:5]}"
    # BN buffers included, batch counters too
    assert any(k.endswith("running_var") for k in before) and any(k.endswith("num_batches_tracked") for k in before)


def made_up_curve(n: int = 60, minimum_at: int = 35):
    """Exponential LRs; a smooth loss with its minimum at index ``minimum_at`` that rises after it."""
    lrs = np.geomspace(1e-4, 10, n)
    x = np.log(lrs)
    loss = 2.3 - 1.5 * np.exp(-((x - x[minimum_at]) ** 2) / 4.0)
    loss[minimum_at + 1:] += np.linspace(0.01, 2.0, n - minimum_at - 1)  # diverging tail
    return lrs.tolist(), loss.tolist()


def test_choose_lr_max_picks_the_minimum_of_the_smoothed_loss():
    lrs, losses = made_up_curve(minimum_at=35)
    lr_max, steepest = choose_lr_max(lrs, losses)
    assert lr_max == lrs[35]
    # the library's suggestion (steepest descent) lies before the minimum
    assert steepest is not None and lrs[SKIP_START] <= steepest < lr_max


def test_choose_lr_max_ignores_the_noisy_start_and_the_last_points():
    lrs, losses = made_up_curve(minimum_at=35)
    losses = list(losses)
    losses[3] = 0.0                    # inside the first SKIP_START points: noise
    losses[-2] = 0.0                   # among the last SKIP_END points: ignored
    assert choose_lr_max(lrs, losses)[0] == lrs[35]


def test_choose_lr_max_stops_at_the_first_nan():
    lrs, losses = made_up_curve(minimum_at=45)
    losses = list(losses)
    losses[40:] = [float("nan")] * (len(losses) - 40)
    losses[30] = 0.5                   # the lowest point before the NaNs
    lr_max, _ = choose_lr_max(lrs, losses)
    assert lr_max == lrs[30]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_choose_lr_max_with_too_few_finite_points_says_what_to_change(bad):
    lrs, losses = made_up_curve()
    losses = list(losses)
    losses[8:] = [bad] * (len(losses) - 8)
    with pytest.raises(LRFinderError) as caught:
        choose_lr_max(lrs, losses)
    message = str(caught.value)
    assert "--lr-find-end" in message and "8 usable points" in message
    assert f"{lrs[8]:.3g}" in message  # where it diverged


def test_choose_lr_max_with_a_short_curve_raises():
    lrs, losses = made_up_curve(n=SKIP_START + SKIP_END + 1, minimum_at=12)
    with pytest.raises(LRFinderError, match="--lr-find-end"):
        choose_lr_max(lrs, losses)
