"""OneCycle as planned (``planned_lrs``) and as used (``one_cycle`` in a real fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import shared_run

from modular.config import Config
from modular.schedule import advance, one_cycle, planned_lrs

MAX_LR = 0.4

# (epochs, peak_epoch or None for the default, steps per epoch)
CASES = [(24, None, 10), (24, None, 1), (2, None, 7), (3, 1, 5), (3, 2, 4), (10, 3, 3), (5, 4, 6)]


def ids(case):
    epochs, peak, steps = case
    return f"epochs{epochs}-peak{peak}-steps{steps}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_planned_lrs_shape_start_peak_end(case):
    epochs, peak, steps = case
    cfg = Config(epochs=epochs, peak_epoch=peak)
    lrs = planned_lrs(cfg, MAX_LR, steps)

    assert len(lrs) == epochs * steps
    peak_index = cfg.resolved_peak_epoch * steps - 1
    assert lrs[peak_index] == pytest.approx(MAX_LR, rel=1e-6)
    assert max(lrs) == pytest.approx(MAX_LR, rel=1e-6)
    assert int(np.argmax(lrs)) == peak_index
    if peak_index > 0:
        assert lrs[0] == pytest.approx(MAX_LR / cfg.div_factor, rel=1e-6)
    assert lrs[-1] == pytest.approx(MAX_LR / cfg.div_factor / cfg.final_div_factor, rel=1e-6)
    assert min(lrs) >= 0.0


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_planned_lrs_linear_on_both_sides_of_the_peak(case):
    epochs, peak, steps = case
    cfg = Config(epochs=epochs, peak_epoch=peak)
    lrs = np.asarray(planned_lrs(cfg, MAX_LR, steps))
    peak_index = cfg.resolved_peak_epoch * steps - 1

    rise, fall = np.diff(lrs[: peak_index + 1]), np.diff(lrs[peak_index:])
    assert (rise > 0).all() and (fall < 0).all()
    # second differences vanish everywhere but at the kink (diff2[i] spans lrs[i..i+2])
    second = np.diff(lrs, 2)
    away_from_kink = np.delete(second, [peak_index - 1]) if peak_index >= 1 else second
    assert np.abs(away_from_kink).max(initial=0.0) < 1e-9 * MAX_LR
    # both slopes are what two straight lines through start, peak and end give
    if peak_index > 0:
        assert rise == pytest.approx(np.full_like(rise, (MAX_LR - lrs[0]) / peak_index), rel=1e-6)
    assert fall == pytest.approx(np.full_like(fall, (lrs[-1] - MAX_LR) / (len(lrs) - 1 - peak_index)), rel=1e-6)


@pytest.mark.parametrize("epochs, expected", [(24, 5), (48, 10), (12, 2), (5, 1), (3, 1), (2, 1), (1, 1)])
def test_default_peak_epoch(epochs, expected):
    cfg = Config(epochs=epochs)
    assert cfg.resolved_peak_epoch == expected  # 5 of 24 scaled, at least 1


def test_explicit_peak_epoch_wins():
    assert Config(epochs=24, peak_epoch=8).resolved_peak_epoch == 8


@pytest.mark.parametrize("epochs, peak", [(1, None), (3, 3)])
def test_peak_on_the_last_epoch_is_warm_up_only(epochs, peak):
    """Peak on the last step of the last epoch (allowed: 1..epochs) leaves no room to fall:
    documented in one_cycle; the LR rises linearly to LRMAX at the very last step."""
    cfg = Config(epochs=epochs, peak_epoch=peak)
    lrs = planned_lrs(cfg, MAX_LR, 8)
    assert lrs[-1] == pytest.approx(MAX_LR, rel=1e-6)
    assert lrs[0] == pytest.approx(MAX_LR / cfg.div_factor, rel=1e-6)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))


def test_one_cycle_stepped_like_fit_matches_planned_and_stays_positive():
    """Step the real scheduler once per batch except after the very last: no negative extrapolation."""
    cfg = Config(epochs=3, peak_epoch=1)
    steps = 6
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=MAX_LR, momentum=0.9, nesterov=True)
    scheduler = one_cycle(optimizer, cfg, MAX_LR, steps)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MAX_LR / cfg.div_factor)
    assert optimizer.param_groups[0]["momentum"] == 0.9  # cycle_momentum is off
    seen = []
    total = cfg.epochs * steps
    for _ in range(total + 3):  # advance() past the end changes nothing
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        advance(scheduler)
    # the schedule written out: straight lines through (0, LRMIN), (last step of the peak epoch, LRMAX)
    # and (last step, LRMIN / final_div_factor)
    peak = cfg.resolved_peak_epoch * steps - 1
    lr_min = MAX_LR / cfg.div_factor
    expected = np.interp(np.arange(total), [0, peak, total - 1], [lr_min, MAX_LR, lr_min / cfg.final_div_factor])
    assert seen[:total] == pytest.approx(expected, rel=1e-9)
    assert seen[total:] == [seen[total - 1]] * 3
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert min(seen) > 0


def test_real_fit_records_the_planned_lrs(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    record = run.record
    steps = record["steps_per_epoch"]
    assert steps == -(-320 // 32)
    planned = planned_lrs(run.cfg, record["lr_max"], steps)
    assert len(record["lr_per_step"]) == run.cfg.epochs * steps
    assert record["lr_per_step"] == pytest.approx(planned, rel=1e-12)
    assert record["peak_epoch"] == run.cfg.resolved_peak_epoch
    # each epoch's row carries the LR of its last step
    for row in record["history"]:
        assert row["lr"] == pytest.approx(planned[row["epoch"] * steps - 1], rel=1e-12)
