"""Several seeds' LR range tests side by side (``python -m modular lr-seeds``): each seed's picks (LRMAX,
what the rule picks today, the smoothed minimum, the LR where the loss diverged, torch-lr-finder's
steepest-descent suggestion) with the precision and hardware it ran on, and their spread, gathered into a
record and drawn on one figure (``plot_lr_seeds``). Inputs are range-test records (lr_find.json, written by
``lr-find``) or run records (run.json, whose range test is under "lr_find"), of one configuration.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from modular.config import Config
from modular.lr_finder import RULES, choose_lr_max
from modular.plots import new_figure
from modular.tools.jsonio import portable

# lr_max: what the run used (its record's); rule_lr: what the rule picks on the same curve today (it differs
# from lr_max where the record predates the rule); minimum_lr: the smoothed minimum before divergence, which the
# rule takes unless the valley is flat (so the two differ on Adam's curves and agree on SGD's)
PICKS = ("lr_max", "rule_lr", "minimum_lr", "diverged_lr", "steepest_lr")
# Besides the seed, the precision may differ (bf16 on one machine, fp32 on another): it is shown per
# seed, not refused. Where and how fast (config.RUNTIME_FIELDS) may differ too.
MAY_DIFFER = ("seed", "precision")


class LRSeedsError(RuntimeError):
    """The inputs cannot be gathered; the message names the file and says why."""


@dataclass(frozen=True)
class SeedTest:
    """One seed's range test, as read from its record."""
    source: str             # the file, as given
    seed: int
    precision: str          # what the range test ran in (a resumed run's first part)
    device: str
    hardware: str
    config: Config
    train_images: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    found: dict             # the range test: lrs, losses (smoothed), lr_max, diverged_lr, steepest_lr, rule, ...

    def picks(self) -> dict:
        """LRMAX and the steepest suggestion as recorded; today's pick, the smoothed minimum and the
        divergence LR read off the curve by the rule (as it is now) that the run named."""
        stopped = len(self.found["lrs"]) < self.config.lr_find_iters
        choice = choose_lr_max(self.found["lrs"], self.found["losses"], stopped, self.config.lr_rule)
        return {"lr_max": self.found["lr_max"], "rule_lr": choice.lr_max, "minimum_lr": self.found["lrs"][choice.min_index],
                "diverged_lr": choice.diverged_lr, "steepest_lr": self.found["steepest_lr"]}


def load_seed_test(path: str | Path) -> SeedTest:
    """A range test from an lr_find.json or a run record; LRSeedsError if ``path`` holds none."""
    try:
        record = json.loads(Path(path).read_text())
        found = record.get("lr_find") if isinstance(record, dict) else None
        if not found:
            raise LRSeedsError(f"{path} holds no LR range test (a run trained with --max-lr, or not a record of "
                               "this project); give lr_find.json files or run records of runs that ran the test")
        first = (record.get("ran_on") or [record])[0]  # the range test ran in a run's first part
        return SeedTest(str(path), int(record["seed"]), first["precision"], first["device"], first["hardware"],
                        Config.from_dict(record["config"]), int(record["train_images"]), tuple(record["mean"]),
                        tuple(record["std"]), found)
    except OSError as error:
        raise LRSeedsError(f"cannot read {path} ({error.strerror or error})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise LRSeedsError(f"{path} is not a range-test or run record of this project ({error!r})") from None


def check_one_configuration(tests: list[SeedTest]) -> None:
    """LRSeedsError unless the tests differ in the seed (and precision) alone: same configuration, same
    data (image count and channel statistics), no seed twice."""
    if len(tests) < 2:
        raise LRSeedsError("give the range tests of at least two seeds")
    first = tests[0]
    for test in tests[1:]:
        differences = [d for d in first.config.differences(test.config) if d.split(":", 1)[0] not in MAY_DIFFER]
        if test.train_images != first.train_images:
            differences.append(f"training images: {first.train_images} != {test.train_images}")
        for name in ("mean", "std"):
            mine, theirs = [round(x, 4) for x in getattr(first, name)], [round(x, 4) for x in getattr(test, name)]
            if mine != theirs:
                differences.append(f"data: channel {name} {mine} != {theirs}")
        if differences:
            raise LRSeedsError(f"{test.source} differs from {first.source} in more than the seed "
                               f"({'; '.join(differences[:3])}); gather range tests of one configuration on one data set")
    seeds = [t.seed for t in tests]
    if len(set(seeds)) != len(seeds):
        raise LRSeedsError(f"seed {max(seeds, key=seeds.count)} appears twice among {', '.join(t.source for t in tests)}")


def spread(values: list[float | None]) -> dict:
    """n, min, max, max/min and geometric mean of the values given (None: not available for that seed)."""
    given = [v for v in values if v is not None]
    if not given:
        return {"n": 0, "min": None, "max": None, "ratio": None, "geometric_mean": None}
    return {"n": len(given), "min": min(given), "max": max(given), "ratio": max(given) / min(given),
            "geometric_mean": math.exp(statistics.fmean(math.log(v) for v in given))}


def gather(paths: list[str | Path]) -> dict:
    """The lr-find-seeds record: the common configuration, each seed's picks, precision, hardware and
    curve (the LRs and the smoothed loss the rule reads), and the spread of each pick over the seeds."""
    tests = [load_seed_test(p) for p in paths]
    check_one_configuration(tests)
    tests.sort(key=lambda t: t.seed)
    seeds = [{"seed": t.seed, "source": portable(t.source), "precision": t.precision, "device": t.device, "hardware": t.hardware,
              **t.picks(), "lrs": t.found["lrs"], "losses": t.found["losses"]} for t in tests]
    config = {k: v for k, v in tests[0].config.to_dict().items() if k not in MAY_DIFFER}
    return {"config": config, "rule": tests[0].found.get("rule"), "rule_now": RULES[tests[0].config.lr_rule],
            "train_images": tests[0].train_images, "mean": list(tests[0].mean), "std": list(tests[0].std), "seeds": seeds,
            "spread": {key: spread([s[key] for s in seeds]) for key in PICKS}}


def caption(gathered: dict) -> str:
    """The figure's caption: today's rule, and the runs' own where it picked otherwise on their curves."""
    if not any(drawn_apart(row, "rule_lr") for row in gathered["seeds"]):  # no star drawn
        return gathered["rule_now"]
    return (f"Dots, the runs' picks, by the rule they ran with: {gathered['rule']}. "
            f"Stars, the rule today: {gathered['rule_now']}.")


def format_seeds(gathered: dict) -> str:
    """A short table for the terminal: one line per seed, then the spread of each pick."""
    def lr(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    lines = [f"{'seed':>4}  {'precision':<9}  {'LRMAX':>9}  {'rule now':>9}  {'minimum':>9}  {'diverged':>9}  "
             f"{'steepest':>9}  hardware"]
    lines += [f"{s['seed']:>4}  {s['precision']:<9}  {lr(s['lr_max']):>9}  {lr(s['rule_lr']):>9}  {lr(s['minimum_lr']):>9}  "
              f"{lr(s['diverged_lr']):>9}  {lr(s['steepest_lr']):>9}  {s['hardware']}" for s in gathered["seeds"]]
    for key, name in zip(PICKS, ("LRMAX", "the rule's pick today", "smoothed minimum", "divergence LR",
                                 "steepest suggestion")):
        s = gathered["spread"][key]
        if s["n"]:
            lines.append(f"{name}: min {lr(s['min'])}, max {lr(s['max'])} ({s['ratio']:.2f}x), "
                         f"geometric mean {lr(s['geometric_mean'])} over {s['n']} seeds")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------

def drawn_apart(row: Mapping[str, Any], key: str) -> bool:
    """Whether a seed's ``key`` pick (rule_lr or minimum_lr) gets its own marker in plot_lr_seeds: it is
    known and is not the LRMAX the run used."""
    return row.get(key) not in (None, row["lr_max"])


def plot_lr_seeds(seeds: Sequence[Mapping[str, Any]], spread: Mapping[str, Mapping[str, Any]] | None = None,
                  rule: str = "") -> Figure:
    """Several seeds' range tests on one log LR axis: each seed's smoothed loss, its LRMAX (dot), today's
    rule's pick where it differs (star), the smoothed minimum where it differs (square), the LR where it
    diverged (cross) and torch-lr-finder's steepest suggestion (triangle), the seed's precision in the legend.
    ``seeds``: rows of an lr-find-seeds record (seed, precision, lrs, losses, lr_max, rule_lr, minimum_lr,
    diverged_lr, steepest_lr); ``spread``: its spread, for the title; ``rule``: the caption."""
    from matplotlib.lines import Line2D

    fig = new_figure(height=4.8)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(seeds))]
    low, high = math.inf, -math.inf
    for row, color in zip(seeds, colors):
        lr, loss = np.asarray(row["lrs"], dtype=float), np.asarray(row["losses"], dtype=float)  # null -> NaN
        ax.plot(lr, loss, color=color, lw=1.4,
                label=f"seed {row['seed']} ({row['precision']}): LRMAX {row['lr_max']:.3g}")
        for key, marker, size in (("lr_max", "o", 8), ("rule_lr", "*", 13), ("minimum_lr", "s", 7),
                                  ("diverged_lr", "X", 9), ("steepest_lr", "^", 8)):
            if (key in ("lr_max", "diverged_lr", "steepest_lr") and row.get(key) is not None) or drawn_apart(row, key):
                at = int(np.argmin(np.abs(np.log(lr) - math.log(row[key]))))  # the curve's point at that LR
                ax.plot(lr[at], loss[at], marker, color=color, ms=size, mec="black", mew=0.7, zorder=5)
        finite = loss[np.isfinite(loss)]
        if finite.size:  # keep the part before the blow-up in view, as plot_lr_finder does
            low, high = min(low, finite.min()), max(high, min(finite.max(), 2.0 * finite[0] - finite.min()))
    if high > low:
        pad = 0.08 * (high - low)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    title = f"LR range test, {len(seeds)} seeds"
    if spread and spread.get("lr_max", {}).get("n"):
        s = spread["lr_max"]
        title += (f": LRMAX {s['min']:.3g} to {s['max']:.3g} ({s['ratio']:.2f}x), "
                  f"geometric mean {s['geometric_mean']:.3g}")
    ax.set(title=title, xlabel="learning rate (log scale)", ylabel="smoothed loss")
    ax.grid(alpha=0.3, which="both")
    seeds_legend = ax.legend(loc="lower left", fontsize=8, title="seed (precision)", title_fontsize=8)
    ax.add_artist(seeds_legend)
    differs = {key: any(drawn_apart(row, key) for row in seeds) for key in ("rule_lr", "minimum_lr")}
    markers = [Line2D([], [], ls="", marker=m, color="grey", mec="black", mew=0.7, ms=8, label=label)
               for m, label, shown in (("o", "LRMAX (the run's pick)", True),
                                       ("*", "the rule's pick today (where not the run's)", differs["rule_lr"]),
                                       ("s", "smoothed minimum (where not LRMAX)", differs["minimum_lr"]),
                                       ("X", "diverged: the rule looks no further", True),
                                       ("^", "steepest descent (torch-lr-finder)", True)) if shown]
    ax.legend(handles=markers, loc="upper left", fontsize=8)
    if rule:
        fig.text(0.5, 0, textwrap.fill(rule, 110), ha="center", va="top", fontsize=8.5, style="italic")
    return fig
