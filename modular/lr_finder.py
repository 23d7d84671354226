"""The LR range test (torch-lr-finder) and the rule that turns its curve into LRMAX and LRMIN.

RULE below states the rule in words, built from the constants it names; the README and docs/experiments.md
quote it word for word (tests/test_docs.py holds them to it), and every run records the RULE it ran with.

torch-lr-finder runs with its smoothing off, so the raw loss of every step is kept; the project smooths it as
the library would and reads RULE off the smoothed curve. Why a divergence cut: with label smoothing and scaled
logits the loss is bounded, so it never reaches the library's own stop (``diverge_th`` in ``find_lr``), and
after blowing up it can fall again, so only the curve before the divergence is read. Why the flat-valley clause:
a short range test cannot tell which LR of a wide, nearly flat valley stays stable over a whole
run, while the steepest descent before the valley is the one thing such a curve measures well.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from modular.config import Config
from modular.progress import Progress

with warnings.catch_warnings():  # tqdm.autonotebook warns on import where ipywidgets is missing
    warnings.simplefilter("ignore")
    from torch_lr_finder import LRFinder
    from torch_lr_finder import lr_finder as lr_finder_module
    from tqdm.autonotebook import tqdm as tqdm_autonotebook

SMOOTH_F = 0.05        # torch-lr-finder's default smoothing factor, applied here to the raw curve
GIVE_BACK = 0.5        # diverged once the smoothed loss gives back this share of its drop (start to lowest so far)...
MIN_RISE = 0.02        # ...or, if more, this share of the starting loss: a floor, so noise on a small drop is none
MIN_POINTS = 10        # a minimum within the first points means the test diverged almost at once
SKIP_START, SKIP_END = 10, 5  # torch-lr-finder's window for its own steepest-descent suggestion
# A flat valley: the points next to the minimum whose smoothed loss lies within FLAT_DEPTH of the drop (start to
# minimum) above it. Where it spans more than FLAT_WIDTH in LR, the rule reads LRMAX below it (the module's
# docstring says why). Both were set on the committed SGD and Adam curves, FLAT_WIDTH between the SGD valleys and
# Adam's: docs/experiments.md gives the curves' widths and the Adam runs at either end of the valley.
FLAT_DEPTH = 0.20
FLAT_WIDTH = 5.0       # an LR ratio: the valley's right end over its left


def _percent(share: float) -> str:
    return f"{round(share * 100, 6):g}%"


# The rule in words, from the constants above: the one statement of it (see the module's docstring).
RULE = (f"LRMAX is the LR at the minimum of the smoothed loss (an exponential moving average of the loss of each "
        f"batch, factor {SMOOTH_F:g}) before divergence (the first point where the smoothed loss climbs above its "
        f"lowest value so far by {_percent(GIVE_BACK)} of the drop from the start to that value, or by "
        f"{_percent(MIN_RISE)} of the starting loss if that is more), unless the loss stays within "
        f"{_percent(FLAT_DEPTH)} of its drop of that minimum over more than a factor of {FLAT_WIDTH:g} in LR below "
        f"it: then the LR of the steepest descent before that flat valley; LRMIN = LRMAX / div_factor")
STEEPEST_RULE = ("LRMAX is torch-lr-finder's suggestion, the LR of the steepest descent of the smoothed loss between its "
                 f"first {SKIP_START} and last {SKIP_END} points (the original's rule); LRMIN = LRMAX / div_factor")
RULES = {"minimum": RULE, "steepest": STEEPEST_RULE}


class LRFinderError(RuntimeError):
    """The range test gave a curve the rule cannot use; the message says which setting to change."""


@dataclass(frozen=True)
class LRChoice:
    """What the rule read off a smoothed curve (indices into the curve)."""
    lr_max: float
    min_index: int             # the smoothed minimum before divergence
    valley_start: int          # the flat valley's left end (close to min_index when the valley is narrow)
    diverged_index: int | None  # None: never diverged (possible under the "steepest" rule only)
    diverged_lr: float | None
    steepest_lr: float | None  # the library's suggestion, for comparison only


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]        # smoothed (SMOOTH_F), the curve the rule reads
    lr_max: float
    lr_min: float
    steepest_lr: float | None  # the library's suggestion, for comparison
    raw_losses: list[float]    # one batch's loss per step
    rule: str = RULE
    diverged_lr: float | None = None  # the LR of the point of divergence (None: it never diverged)

    def to_dict(self) -> dict:
        return asdict(self)


def smooth(raw: list[float], factor: float = SMOOTH_F) -> list[float]:
    """torch-lr-finder's exponential smoothing: s[0] = raw[0], s[i] = factor*raw[i] + (1-factor)*s[i-1]."""
    out: list[float] = []
    for value in raw:
        out.append(value if not out else factor * value + (1 - factor) * out[-1])
    return out


def steepest_index(smoothed: np.ndarray, end: int) -> int | None:
    """Index of the steepest smoothed descent from point SKIP_START up to ``end`` (exclusive), the gradient taken
    over the window as torch-lr-finder takes it; None if fewer than two points lie there."""
    window = smoothed[SKIP_START:end]
    if window.size < 2:
        return None
    return SKIP_START + int(np.argmin(np.gradient(window)))


def steepest_descent_lr(lrs: np.ndarray, smoothed: np.ndarray) -> float | None:
    """torch-lr-finder's suggestion: the steepest smoothed descent between its skip_start and skip_end."""
    at = steepest_index(smoothed, len(smoothed) - SKIP_END)
    return None if at is None else float(lrs[at])


def finite_length(curve: np.ndarray) -> int:
    """How many points come before the first NaN/inf."""
    finite = np.isfinite(curve)
    return len(curve) if finite.all() else int(np.argmin(finite))


def find_divergence(smoothed: np.ndarray, stopped_early: bool) -> int | None:
    """Index of the first diverged point of a smoothed curve (see RULE), or None if it never diverged.
    A NaN/inf, or the library's own early stop (the last point), also counts as divergence."""
    end = finite_length(smoothed)
    if end == 0:
        return 0
    curve = smoothed[:end]
    lowest = np.minimum.accumulate(curve)
    margin = np.maximum(GIVE_BACK * (curve[0] - lowest), MIN_RISE * abs(curve[0]))
    above = np.flatnonzero(curve > lowest + margin)
    if above.size:
        return int(above[0])
    if end < len(smoothed):
        return end
    return len(smoothed) - 1 if stopped_early else None


def choose_lr_max(lrs: list[float], smoothed: list[float], stopped_early: bool = False, rule: str = "minimum") -> LRChoice:
    """Apply RULES[rule] to a smoothed range-test curve; LRFinderError if the curve cannot be used.
    The divergence point is found under either rule: the plot and the record show it."""
    lrs_a, curve = np.asarray(lrs, float), np.asarray(smoothed, float)
    diverged = find_divergence(curve, stopped_early)
    steepest = steepest_descent_lr(lrs_a, curve[:finite_length(curve)])
    if rule == "steepest":
        if steepest is None:
            raise LRFinderError(f"the range test stopped after {finite_length(curve)} finite points, too few for "
                                f"torch-lr-finder's suggestion: lower --lr-find-end or raise --lr-find-iters")
        at = int(np.flatnonzero(lrs_a == steepest)[0])
        return LRChoice(steepest, at, at, diverged, None if diverged is None else float(lrs_a[diverged]), steepest)
    if diverged is None:
        raise LRFinderError(f"the loss never diverged up to LR {lrs_a[-1]:.3g}, so its minimum is not yet in sight: "
                            "raise --lr-find-end")
    min_index = int(np.argmin(curve[:diverged])) if diverged else 0
    if min_index < MIN_POINTS:
        raise LRFinderError(
            f"the LR range test diverged almost at once (lowest loss at point {min_index + 1} of {len(curve)}, diverged "
            f"near LR {lrs_a[diverged]:.3g}): lower --lr-find-end or raise --lr-find-iters")
    start = flat_valley_start(curve, min_index)
    pick = min_index
    if lrs_a[min_index] / lrs_a[start] > FLAT_WIDTH:
        pick = steepest_index(curve, start + 1)
        if pick is None:
            raise LRFinderError(
                f"the loss lay flat from the range test's start (LR {lrs_a[start]:.3g}) to its minimum (LR "
                f"{lrs_a[min_index]:.3g}), so no descent is in sight to read LRMAX from: set it with --max-lr")
    return LRChoice(float(lrs_a[pick]), min_index, start, diverged, float(lrs_a[diverged]), steepest)


def flat_valley_start(curve: np.ndarray, min_index: int) -> int:
    """The first index of the run of points up to ``min_index`` whose loss lies within FLAT_DEPTH of the
    drop from the start to the minimum above the minimum."""
    ceiling = curve[min_index] + FLAT_DEPTH * (curve[0] - curve[min_index])
    start = min_index
    while start > 0 and curve[start - 1] <= ceiling:
        start -= 1
    return start


def find_lr(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: torch.nn.Module,
            train_loader, runtime, cfg: Config, log: Callable[[str], None] = print,
            bar: bool | None = None) -> LRFindResult:
    """Run torch-lr-finder's exponential range test from cfg.lr_find_start to cfg.lr_find_end over
    cfg.lr_find_iters batches and read LRMAX off its curve (``choose_lr_max``), showing progress
    (``progress.Progress``). Model and optimizer are restored afterwards."""
    amp = {}
    if runtime.amp_dtype is not None:
        amp = dict(amp_backend="torch", grad_scaler=runtime.grad_scaler(),
                   amp_config={"device_type": runtime.device.type, "dtype": runtime.amp_dtype})
    finder = LRFinder(model, optimizer, criterion, device=runtime.device, **amp)
    try:
        with Progress("LR range test", cfg.lr_find_iters, "steps", log, bar) as progress, library_output_replaced(progress):
            # smooth_f=0 keeps every raw loss (the project smooths); diverge_th is the library's default stop
            finder.range_test(train_loader, start_lr=cfg.lr_find_start, end_lr=cfg.lr_find_end,
                              num_iter=cfg.lr_find_iters, step_mode="exp", smooth_f=0, diverge_th=5)
        lrs = [float(x) for x in finder.history["lr"]]
        raw = [float(x) if math.isfinite(x) else float("nan") for x in finder.history["loss"]]
    finally:
        finder.reset()  # weights, BN statistics and optimizer state as before the test
    smoothed = smooth(raw)
    choice = choose_lr_max(lrs, smoothed, stopped_early=len(lrs) < cfg.lr_find_iters, rule=cfg.lr_rule)
    return LRFindResult(lrs, smoothed, choice.lr_max, choice.lr_max / cfg.div_factor, choice.steepest_lr,
                        rule=RULES[cfg.lr_rule], raw_losses=raw, diverged_lr=choice.diverged_lr)


@contextlib.contextmanager
def library_output_replaced(progress: Progress):
    """While it runs, torch-lr-finder's bar is ``progress`` and its two status lines go nowhere.

    The library draws its bar with its module's ``tqdm`` (a widget that stays in a saved notebook) and
    prints with ``print``; it has no switch for either, so both names are swapped for the test and put
    back after. A release that moved them fails here, loudly, instead of drawing a second bar."""
    if getattr(lr_finder_module, "tqdm", None) is not tqdm_autonotebook:
        raise RuntimeError("this torch-lr-finder draws its progress in a way the project does not know: "
                           "install the tested version (pip install -r requirements.txt)")

    def bar(steps, **_):
        for done, step in enumerate(steps):
            progress.update(done)
            yield step

    lr_finder_module.tqdm, lr_finder_module.print = bar, lambda *args, **kwargs: None
    try:
        yield
    finally:
        lr_finder_module.tqdm = tqdm_autonotebook
        del lr_finder_module.print  # the builtin again
