"""OneCycle: linear warm-up to LRMAX at the last step of the peak epoch, linear fall to ~0, no third phase."""

from __future__ import annotations

import warnings

import torch
from torch.optim.lr_scheduler import OneCycleLR

from modular.config import Config


def one_cycle(optimizer: torch.optim.Optimizer, cfg: Config, max_lr: float, steps_per_epoch: int) -> OneCycleLR:
    """OneCycleLR over ``cfg.epochs`` epochs. Starts at LRMIN = max_lr / div_factor, peaks at max_lr
    on the last step of ``cfg.resolved_peak_epoch``, ends at LRMIN / final_div_factor.

    With the peak on the last epoch (allowed, but not the default) the schedule is warm-up only.
    Step it with ``advance`` once per batch: one step past the last batch would extrapolate below
    the final LR (the original logged a negative LR that way).
    """
    return OneCycleLR(
        optimizer,
        max_lr=max_lr,
        epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        # the warm-up phase ends at step pct_start * total - 1, the last step of the peak epoch
        pct_start=cfg.resolved_peak_epoch / cfg.epochs,
        anneal_strategy="linear",
        three_phase=False,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=False,  # Page's recipe keeps momentum at 0.9 throughout
    )


def advance(scheduler: OneCycleLR) -> None:
    """Step the schedule to the next batch's LR, unless the batch just done was its last."""
    if scheduler.last_epoch + 1 < scheduler.total_steps:
        with warnings.catch_warnings():
            # fp16: GradScaler skips the first steps while it calibrates its scale, and torch then warns
            # that the scheduler stepped before the optimizer; that is expected here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()


def planned_lrs(cfg: Config, max_lr: float, steps_per_epoch: int) -> list[float]:
    """The LR of every step the schedule will use, from a throwaway optimizer (no training)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    scheduler = one_cycle(optimizer, cfg, max_lr, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        advance(scheduler)
    return lrs
