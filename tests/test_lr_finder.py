"""The LR range test through the Learner, and the rule that turns its curve into LRMAX and LRMIN."""

from __future__ import annotations

import json
import math

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
from helpers import ROOT

from modular.config import Config
from modular.learner import Learner
from modular.lr_finder import FLAT_WIDTH, MIN_POINTS, RULE, SMOOTH_F, LRFinderError, LRFindResult, choose_lr_max, smooth
from modular.tools.synthetic import synthetic_cifar10

ITERS = 30


@pytest.fixture(scope="module")
def range_tested():
    """(config, model state before, model afterwards, result) of one 30-step range test."""
    cfg = Config(batch_size=32, lr_find_iters=ITERS, device="cpu", precision="fp32")
    learner = Learner(cfg, synthetic_cifar10(n_train=200, n_test=50, seed=3))
    before = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    result = learner.lr_find()
    return cfg, before, learner.model, result


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
    assert MIN_POINTS < len(lrs) == len(losses) == len(result.raw_losses) <= ITERS
    assert lrs[0] == pytest.approx(cfg.lr_find_start, rel=1e-9)
    assert (np.diff(lrs) > 0).all()
    # exponential steps: a constant ratio, reaching lr_find_end at the last planned step
    ratio = (cfg.lr_find_end / cfg.lr_find_start) ** (1 / (ITERS - 1))
    assert lrs[1:] / lrs[:-1] == pytest.approx(np.full(len(lrs) - 1, ratio), rel=1e-6)
    # the raw curve is recorded, and the smoothed one is the library's smoothing of it
    raw = np.asarray(result.raw_losses)
    assert not np.allclose(raw, losses)
    assert losses[1:] == pytest.approx(SMOOTH_F * raw[1:] + (1 - SMOOTH_F) * losses[:-1], nan_ok=True)
    # LRMAX is the LR at the smoothed minimum before the point of divergence
    choice = choose_lr_max(result.lrs, result.losses, stopped_early=len(lrs) < ITERS)
    assert (result.lr_max, result.diverged_lr) == (choice.lr_max, choice.diverged_lr)
    assert result.lr_max < result.diverged_lr
    assert result.lr_max == lrs[np.argmin(losses[:choice.diverged_index])]


def test_range_test_leaves_the_model_as_it_was(range_tested):
    _, before, model, _ = range_tested
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the range test changed {changed[:5]}"
    # BN buffers included, batch counters too
    assert any(k.endswith("running_var") for k in before) and any(k.endswith("num_batches_tracked") for k in before)


def made_up_curve(n: int = 100, minimum_at: int = 70, depth: float = 0.26, start: float = 2.3):
    """Exponential LRs from 1e-4 to 10 and a smooth bounded loss like the recorded JPEG curve:
    flat, down to ``start - depth`` at index ``minimum_at``, up past the start, then down again."""
    lrs = np.geomspace(1e-4, 10, n)
    x = np.log(lrs)
    loss = start - depth * np.exp(-((x - x[minimum_at]) ** 2) / 4.0)
    after = np.arange(n) > minimum_at
    bump = np.exp(-((x - x[minimum_at] - 1.6) ** 2) / 0.8)            # the blow-up, ~5x past the minimum
    loss[after] += 1.5 * depth * bump[after]
    return lrs, loss


def test_rule_on_the_recorded_jpeg_curve():
    """The smoothed curve of the JPEG headline run (results/jpeg-seed0.json): minimum 2.047 at LR 0.433,
    a blow-up to 2.35 at LR 2, then a second dip to 2.18 at LR 10."""
    found = json.loads((ROOT / "results" / "jpeg-seed0.json").read_text())["lr_find"]
    choice = choose_lr_max(found["lrs"], found["losses"])
    assert choice.lr_max == pytest.approx(0.4329, rel=1e-3)
    assert choice.diverged_lr == pytest.approx(1.097, rel=1e-3)   # 2.188 > 2.047 + (2.306 - 2.047) / 2
    assert choice.steepest_lr == pytest.approx(found["steepest_lr"])  # the library's 3.13, in the diverged region


def test_a_second_dip_below_the_minimum_after_divergence_is_ignored():
    lrs, loss = made_up_curve()
    loss[92:] = np.linspace(loss[91], 1.5, 8)          # after the blow-up the loss falls far below the true minimum
    assert np.argmin(loss) > 90
    choice = choose_lr_max(lrs.tolist(), loss.tolist())
    assert choice.min_index == 70 and choice.lr_max == lrs[70]
    assert 70 < choice.diverged_index < 90


def test_a_curve_that_never_diverges_says_raise_the_end():
    lrs = np.geomspace(1e-4, 1e-2, 100)
    loss = np.linspace(2.3, 1.9, 100)                  # still falling at the end of the range
    with pytest.raises(LRFinderError, match="never diverged up to LR 0.01.*raise --lr-find-end"):
        choose_lr_max(lrs.tolist(), loss.tolist())


def test_a_curve_that_diverges_at_once_says_lower_the_end():
    lrs = np.geomspace(1e-4, 10, 100)
    loss = 2.3 + np.linspace(0, 3, 100)                # climbs from the first step
    with pytest.raises(LRFinderError, match="diverged almost at once.*--lr-find-end or raise --lr-find-iters"):
        choose_lr_max(lrs.tolist(), loss.tolist())


def test_flat_noise_at_the_start_is_not_divergence():
    """The recorded curve's first points wobble 0.0007 above the starting loss: no divergence."""
    lrs, loss = made_up_curve()
    loss[3:8] += 0.001
    assert choose_lr_max(lrs.tolist(), loss.tolist()).lr_max == lrs[70]


def test_noisy_raw_curve_smoothed_then_chosen():
    rng = np.random.default_rng(0)
    lrs, clean = made_up_curve()
    noiseless = choose_lr_max(lrs.tolist(), smooth(clean.tolist()))
    assert 70 < noiseless.min_index <= 76                # the smoothing's lag: a few points right of the raw minimum
    for _ in range(20):
        raw = clean + rng.normal(0, 0.03, clean.size)  # per-batch noise, as a batch of 512 gives
        choice = choose_lr_max(lrs.tolist(), smooth(raw.tolist()))
        assert abs(choice.min_index - noiseless.min_index) <= 3 and choice.min_index < choice.diverged_index


def test_smooth_is_torch_lr_finders_exponential_average():
    assert smooth([1.0, 0.0, 0.0]) == pytest.approx([1.0, 0.95, 0.9025])
    assert smooth([]) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_counts_as_divergence(bad):
    lrs, loss = made_up_curve(minimum_at=70)
    loss = loss.tolist()
    loss[60:] = [bad] * 40                             # diverged before the curve's own minimum
    choice = choose_lr_max(lrs.tolist(), loss)
    assert choice.diverged_index == 60 and choice.min_index == 59


def test_the_librarys_early_stop_counts_as_divergence():
    lrs, loss = made_up_curve(minimum_at=70)
    cut = 73                                           # torch-lr-finder stopped here (loss > 5x its best)
    choice = choose_lr_max(lrs[:cut].tolist(), loss[:cut].tolist(), stopped_early=True)
    assert choice.diverged_index == cut - 1 and choice.min_index == 70
    with pytest.raises(LRFinderError, match="never diverged"):
        choose_lr_max(lrs[:cut].tolist(), loss[:cut].tolist())


def test_nan_within_the_first_points_says_what_to_change():
    lrs, loss = made_up_curve()
    loss = loss.tolist()
    loss[8:] = [float("nan")] * (len(loss) - 8)
    with pytest.raises(LRFinderError) as caught:
        choose_lr_max(lrs.tolist(), loss)
    assert "--lr-find-end" in str(caught.value) and f"{lrs[8]:.3g}" in str(caught.value)


def test_the_steepest_rule_takes_the_librarys_suggestion_even_in_the_diverged_region():
    """--lr-rule steepest reads LRMAX as the original did; on the recorded JPEG curve that is 3.13,
    past the divergence the default rule stops at."""
    found = json.loads((ROOT / "results" / "jpeg-seed0.json").read_text())["lr_find"]
    default = choose_lr_max(found["lrs"], found["losses"])
    steepest = choose_lr_max(found["lrs"], found["losses"], rule="steepest")
    assert steepest.lr_max == steepest.steepest_lr == pytest.approx(found["steepest_lr"])
    assert steepest.lr_max > default.diverged_lr == steepest.diverged_lr


def test_the_steepest_rule_needs_no_divergence():
    lrs = np.geomspace(1e-4, 1e-2, 100)
    loss = 2.3 - 0.4 / (1 + np.exp(-(np.arange(100) - 50) / 4))  # steepest fall at point 50, never rises
    choice = choose_lr_max(lrs.tolist(), loss.tolist(), rule="steepest")
    assert choice.lr_max == pytest.approx(lrs[50]) and choice.diverged_lr is None
    with pytest.raises(LRFinderError, match="too few"):
        choose_lr_max(lrs[:12].tolist(), [float("nan")] * 12, rule="steepest")


def test_range_test_under_the_steepest_rule_records_it():
    from modular.lr_finder import STEEPEST_RULE

    cfg = Config(batch_size=32, lr_find_iters=ITERS, device="cpu", precision="fp32", lr_rule="steepest")
    result = Learner(cfg, synthetic_cifar10(n_train=200, n_test=50, seed=3)).lr_find()
    assert result.rule == STEEPEST_RULE and result.lr_max == result.steepest_lr
    assert result.lr_min == pytest.approx(result.lr_max / cfg.div_factor)


def committed_curves():
    """(file name, optimizer, recorded LRMAX, the choice the rule makes now, the LRs) for every range test under results/."""
    for path in sorted((ROOT / "results").glob("*.json")):
        record = json.loads(path.read_text())
        if not record.get("lr_find") or record["config"].get("lr_rule", "minimum") != "minimum":
            continue
        found, cfg = record["lr_find"], record["config"]
        stopped = len(found["lrs"]) < cfg["lr_find_iters"]
        yield (path.name, cfg["optimizer"], found["lr_max"], choose_lr_max(found["lrs"], found["losses"], stopped),
               found["lrs"])


def test_the_rule_on_every_committed_curve():
    """SGD keeps its picks (the headline's seeds and the five-seed study); on Adam's wide valley the rule takes the
    steepest descent before it, inside the 2.5e-4..5.5e-2 where the 25 published Adam runs of this recipe reached
    90-93%; the runs of earlier rules recorded the valley's left end or its minimum."""
    seen = {"sgd": 0, "adam": 0}
    for name, optimizer, recorded, choice, lrs in committed_curves():
        seen[optimizer] += 1
        if optimizer == "sgd":
            assert choice.lr_max == pytest.approx(recorded, rel=0.10), name
        else:
            assert 2.5e-4 <= choice.lr_max <= 5.5e-2, (name, choice.lr_max)
            assert choice.lr_max < lrs[choice.valley_start], name
            # a run of today's rule recorded the same pick; one of an earlier rule, the valley or its minimum
            assert recorded == choice.lr_max or recorded >= lrs[choice.valley_start], (name, recorded)
    assert seen["sgd"] >= 6 and seen["adam"] >= 2


def test_a_wide_flat_valley_gives_the_steepest_descent_before_it_and_a_narrow_one_its_minimum():
    lrs = np.geomspace(1e-4, 10, 100)
    x = np.log10(lrs)
    # falls fastest at LR 0.001, reaches 1.95 by LR 0.01, then lies flat (0.001 per decade lower) to its minimum
    # near LR 0.3, then blows up
    loss = 2.3 - 0.35 / (1 + np.exp(-4 * (x + 3))) - 0.001 * (x + 2)
    loss[x > -0.5] += 3 * (x[x > -0.5] + 0.5) ** 2
    choice = choose_lr_max(lrs.tolist(), loss.tolist())
    assert lrs[choice.min_index] / lrs[choice.valley_start] > FLAT_WIDTH
    assert 0.0008 < choice.lr_max < 0.0013 and choice.lr_max < lrs[choice.valley_start]
    narrow = 2.3 - 0.35 / (1 + np.exp(-8 * (x + 1.2))) - 0.001 * (x + 0.8)  # falls fastest at 0.063, flat from ~0.1
    narrow[x > -0.5] += 3 * (x[x > -0.5] + 0.5) ** 2
    choice = choose_lr_max(lrs.tolist(), narrow.tolist())
    assert choice.lr_max == lrs[choice.min_index] and choice.valley_start < choice.min_index
    assert lrs[choice.min_index] / lrs[choice.valley_start] <= FLAT_WIDTH


def test_a_valley_flat_from_the_start_is_refused():
    """No descent before the valley: the rule has nothing to read, and says to set LRMAX by hand."""
    lrs = np.geomspace(1e-4, 10, 100)
    x = np.log10(lrs)
    loss = 1.95 - 0.001 * (x + 4)
    loss[:5] += np.linspace(0.35, 0.07, 5)  # the whole fall lies in the first 5 points, before the library's window
    loss[x > -0.5] += 3 * (x[x > -0.5] + 0.5) ** 2
    with pytest.raises(LRFinderError, match="--max-lr"):
        choose_lr_max(lrs.tolist(), loss.tolist())


def test_the_range_test_shows_only_the_projects_progress_not_the_librarys_bar_or_lines(capfd):
    """torch-lr-finder draws a tqdm bar and prints two status lines of its own; neither reaches the
    terminal or the log, and its module's names are its own again afterwards."""
    from torch_lr_finder import lr_finder as library

    tqdm_before = library.tqdm
    cfg = Config(batch_size=32, lr_find_iters=20, device="cpu", precision="fp32")
    log: list[str] = []
    Learner(cfg, synthetic_cifar10(n_train=100, n_test=20, seed=3), log=log.append).lr_find()
    out, err = capfd.readouterr()
    assert "Learning rate search finished" not in out + err and "it/s" not in err, (out, err)
    assert log[-1].startswith("LRMAX ")
    assert library.tqdm is tqdm_before and "print" not in vars(library)


def test_a_torch_lr_finder_that_draws_its_bar_another_way_fails_loudly(monkeypatch):
    """Not a second bar or silence: one error that says to install the tested version."""
    from torch_lr_finder import lr_finder as library

    monkeypatch.delattr(library, "tqdm")
    cfg = Config(batch_size=32, lr_find_iters=20, device="cpu", precision="fp32")
    with pytest.raises(RuntimeError, match=r"pip install -r requirements.txt"):
        Learner(cfg, synthetic_cifar10(n_train=100, n_test=20, seed=3)).lr_find()
