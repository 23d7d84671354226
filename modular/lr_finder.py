"""The LR range test (torch-lr-finder) and the rule that turns its curve into LRMAX and LRMIN.

Rule: LRMAX is the LR at the minimum of the smoothed loss; LRMIN = LRMAX / div_factor, the
schedule's first LR. The library's own suggestion (steepest smoothed descent) is kept for
comparison only: on the real images with label smoothing it lands in the diverged region,
12x past the minimum (shared notes), while the minimum sits close to Page's proven 0.4.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import asdict, dataclass
from unittest import mock

import numpy as np
import torch

from modular.config import Config

SKIP_START, SKIP_END = 10, 5  # as torch-lr-finder's plot: the first points are noise, the last diverge
RULE = "LRMAX = LR at the minimum of the smoothed loss; LRMIN = LRMAX / div_factor"


class LRFinderError(RuntimeError):
    """The range test gave too few usable points; the message says which setting to change."""


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]        # smoothed, as torch-lr-finder records them
    lr_max: float
    lr_min: float
    steepest_lr: float | None  # the library's suggestion, for comparison
    rule: str = RULE

    def to_dict(self) -> dict:
        return asdict(self)


def choose_lr_max(lrs: list[float], losses: list[float]) -> tuple[float, float | None]:
    """(LR at the minimum smoothed loss, LR of steepest descent) over the usable points."""
    lrs_a, losses_a = np.asarray(lrs, float), np.asarray(losses, float)
    finite = np.isfinite(losses_a)
    usable = len(losses_a) if finite.all() else int(np.argmin(finite))  # stop at the first NaN/inf
    if usable < SKIP_START + SKIP_END + 2:
        raise LRFinderError(
            f"the LR range test gave {usable} usable points (needs {SKIP_START + SKIP_END + 2}); the loss "
            f"diverged near LR {lrs_a[min(usable, len(lrs_a) - 1)]:.3g}: lower --lr-find-end or raise --lr-find-iters")
    window_lrs = lrs_a[SKIP_START:usable - SKIP_END]
    window = losses_a[SKIP_START:usable - SKIP_END]
    lr_max = float(window_lrs[np.argmin(window)])
    steepest = float(window_lrs[np.argmin(np.gradient(window))])
    return lr_max, steepest


def range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: torch.nn.Module,
               train_loader, runtime, cfg: Config, show_progress: bool = False) -> LRFindResult:
    """Run the exponential range test from cfg.lr_find_start to cfg.lr_find_end over
    cfg.lr_find_iters batches. Model and optimizer are restored afterwards."""
    with warnings.catch_warnings():  # tqdm.autonotebook warns on import where ipywidgets is missing
        warnings.simplefilter("ignore")
        from torch_lr_finder import LRFinder
        from torch_lr_finder import lr_finder as lr_finder_module

    amp = {}
    if runtime.amp_dtype is not None:
        amp = dict(amp_backend="torch", grad_scaler=runtime.grad_scaler(),
                   amp_config={"device_type": runtime.device.type, "dtype": runtime.amp_dtype})
    finder = LRFinder(model, optimizer, criterion, device=runtime.device, **amp)

    def progress(iterable, **kwargs):  # a bar in terminals and notebooks, silence in logs
        from tqdm.auto import tqdm
        return tqdm(iterable, desc="LR range test", disable=not show_progress, **kwargs)

    try:
        # the library prints status lines of its own; keep the output to our summary
        with mock.patch.object(lr_finder_module, "tqdm", progress), contextlib.redirect_stdout(io.StringIO()):
            finder.range_test(train_loader, start_lr=cfg.lr_find_start, end_lr=cfg.lr_find_end,
                              num_iter=cfg.lr_find_iters, step_mode="exp", smooth_f=0.05, diverge_th=5)
        lrs = [float(x) for x in finder.history["lr"]]
        losses = [float(x) if math.isfinite(x) else float("nan") for x in finder.history["loss"]]
    finally:
        finder.reset()  # weights, BN statistics and optimizer state as before the test
    lr_max, steepest = choose_lr_max(lrs, losses)
    return LRFindResult(lrs, losses, lr_max, lr_max / cfg.div_factor, steepest)
