"""README sections written from committed records, between marker comments, so that every
number in the README can be regenerated from (and traced to) a file in results/.

- one run record (run.json, e.g. results/headline.json) -> the Results table;
- several run records of one configuration, one per seed -> the Seeds table (mean, spread);
- a benchmark record (results/bench-cpu.json) -> the Performance table;
- baseline seeds plus variants that each change one thing (``--ablation``) -> the Ablations table.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path, PurePath

from modular.config import RUNTIME_FIELDS, Config

# The official training set's channel statistics to 4 places: what tells its pixels (torchvision's
# download, or a lossless copy) from a lossy copy, whose statistics differ by the third or fourth place
# (the JPEG copy's: docs/experiments.md).
OFFICIAL_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_STD = (0.2470, 0.2435, 0.2616)
OFFICIAL_SIZES = (50_000, 10_000)  # train, test


class ReportError(RuntimeError):
    """The record or the README cannot be used; the message says which and why."""


def describe_data(record: dict) -> str:
    """The data a run used, by what it is rather than where it lay on the machine that ran it: the
    official CIFAR-10 pixels when the image counts and channel statistics are theirs, else the name of
    the source (its last path component; no folders)."""
    official = ((record["train_images"], record["test_images"]) == OFFICIAL_SIZES
                and [round(x, 4) for x in record.get("mean", ())] == list(OFFICIAL_MEAN)
                and [round(x, 4) for x in record.get("std", ())] == list(OFFICIAL_STD))
    return "the official CIFAR-10 pixels" if official else f"`{PurePath(record['data_source']).name}`"


def results_table(record: dict) -> str:
    """A Markdown table of a run's headline numbers (accuracies to two decimals)."""
    precision = f"{record['precision']} autocast" if record["precision"] != "fp32" else "fp32"
    rows = [
        (f"Test accuracy at epoch {len(record['history'])}", f"**{record['test_acc']:.2f}%**"),
        ("Best epoch", f"{record['best_epoch']} ({record['best_test_acc']:.2f}%)"),
        ("Flip-TTA accuracy (reported apart, not counted)", f"{record['tta_test_acc']:.2f}%"),
        ("LRMAX found by the range test", f"{record['lr_max']:.4g}"),
        ("LRMIN = LRMAX / div_factor", f"{record['lr_min']:.4g}"),
        ("Seconds per epoch (train + test)", f"{record['seconds_per_epoch']:.0f}"),
        ("Total time (range test + training + evaluation)", f"{record['wall_seconds'] / 3600:.2f} h"),
        ("Hardware", f"{record['hardware']}, {precision}"),
        ("Data", f"{describe_data(record)}: {record['train_images']:,} train / {record['test_images']:,} test"),
    ]
    evaluated = record.get("weights", {}).get("evaluated")
    if evaluated:  # the shipped fp16 weights, evaluated again (fp32) on the same test set
        rows.insert(1, (f"Shipped weights `{record['weights']['file']}` (fp16, evaluated in fp32)",
                        f"{evaluated['test_acc']:.2f}% (flip TTA {evaluated['tta_test_acc']:.2f}%)"))
    return "\n".join(["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


SEED_FIELDS = ("train_images", "test_images", "precision")  # besides the config, what must match to average


def check_same_but_seed(records: list[dict], names: list[str]) -> None:
    """ReportError unless the records differ in the seed alone: same configuration (runtime fields
    such as paths aside), same data (image counts and channel statistics), same precision, no seed twice."""
    first, first_cfg = records[0], Config.from_dict(records[0]["config"])
    for record, name in zip(records[1:], names[1:]):
        differences = [d for d in first_cfg.differences(Config.from_dict(record["config"])) if not d.startswith("seed:")]
        differences += [f"{k}: {first[k]!r} != {record[k]!r}" for k in SEED_FIELDS if first[k] != record[k]]
        if [round(x, 4) for x in first["std"]] != [round(x, 4) for x in record["std"]]:
            differences.append(f"data: channel std {first['std']} != {record['std']}")
        if differences:
            raise ReportError(f"{name} differs from {names[0]} in more than the seed ({'; '.join(differences[:3])}); "
                              "average only runs of one configuration on one data set")
    seeds = [r["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ReportError(f"seed {max(seeds, key=seeds.count)} appears twice among {', '.join(names)}")


def latency_summary(record: dict) -> str:
    """An app-latency record (modular/tools/app_latency.py): what was measured where, then one line per
    picture (for the terminal and the README)."""
    latency = record["app_latency"]
    head = (f"Measured by `python -m modular app-latency` on {record['hardware']} (load average "
            f"{record['load_average_before'][0]:.2f} before, {record['load_average_after'][0]:.2f} after), "
            f"{latency['request']}:")
    return "\n".join([head, ""] + [f"- {name}, {latency[name]['picture']}: median **{latency[name]['median_s']:.3f} s**, "
                                   f"90th percentile {latency[name]['p90_s']:.3f} s, over {latency[name]['calls']} calls "
                                   "after the first" for name in ("example", "photo")])


def seeds_table(records: list[dict], names: list[str]) -> str:
    """One row per seed (LRMAX, test accuracy at the last epoch, flip TTA, time), then mean, sample
    standard deviation, minimum and maximum; led by the mean in one line."""
    check_same_but_seed(records, names)
    records = sorted(records, key=lambda r: r["seed"])
    acc = [r["test_acc"] for r in records]
    tta = [r["tta_test_acc"] for r in records]
    hours = [r["wall_seconds"] / 3600 for r in records]
    lrs = [r["lr_max"] for r in records]
    sd = statistics.stdev
    epochs = len(records[0]["history"])
    lead = (f"**{statistics.mean(acc):.2f}% ± {sd(acc):.2f}** test accuracy at epoch {epochs} (mean ± sample standard "
            f"deviation over {len(acc)} seeds, no TTA; min {min(acc):.2f}%, max {max(acc):.2f}%), "
            f"on {describe_data(records[0])}.")
    rows = [f"| {r['seed']} | {r['lr_max']:.4g} | {r['test_acc']:.2f}% | {r['tta_test_acc']:.2f}% | "
            f"{r['wall_seconds'] / 3600:.2f} h |" for r in records]
    for label, pick in (("mean", statistics.mean), ("sample sd", sd), ("min", min), ("max", max)):
        rows.append(f"| {label} | {pick(lrs):.4g} | {pick(acc):.2f}% | {pick(tta):.2f}% | {pick(hours):.2f} h |")
    return "\n".join([lead, "", "| seed | LRMAX | test accuracy | flip TTA (not counted) | time |",
                      "|---|---|---|---|---|", *rows])


# What an ablation variant may change; anything else makes it another experiment, not an ablation. max_lr
# (an LRMAX set by hand) lets a variant that moves the range test's pick be rerun at the baseline's LR.
ABLATION_FIELDS = frozenset({"optimizer", "lr_rule", "label_smoothing", "logit_scale", "max_lr"})


def _setting(field: str, value) -> str:
    """A config value as the Ablations table names it: no max_lr means the range test chose it."""
    return "range test" if field == "max_lr" and value is None else str(value)


def ablation_change(baseline: dict, variant: dict, name: str) -> str:
    """The variant's change, read off the two configs ("optimizer: sgd -> adam; ..."); ReportError
    if it changes nothing, or anything besides ABLATION_FIELDS, or ran on other data or precision."""
    base, var = Config.from_dict(baseline["config"]).to_dict(), Config.from_dict(variant["config"]).to_dict()
    changed = [k for k in base if k not in RUNTIME_FIELDS | {"seed"}
               and base[k] != var[k]]
    other = [k for k in changed if k not in ABLATION_FIELDS]
    other += [k for k in SEED_FIELDS if baseline[k] != variant[k]]
    if [round(x, 4) for x in baseline["std"]] != [round(x, 4) for x in variant["std"]]:
        other.append("data (channel std)")
    if other:
        raise ReportError(f"{name} differs from the baseline in {', '.join(other)}, not only in "
                          f"{'/'.join(sorted(ABLATION_FIELDS))}: an ablation changes one of those and nothing else")
    if not changed:
        raise ReportError(f"{name} has the baseline's configuration: it is another seed, not an ablation")
    return "; ".join(f"{k}: {_setting(k, base[k])} → {_setting(k, var[k])}" for k in changed)


def ablations_table(baseline: list[dict], baseline_names: list[str], variants: list[dict], variant_names: list[str]) -> str:
    """The baseline's seeds (mean ± sd) and one row per variant: its change (from the configs), LRMAX,
    accuracy at the last epoch (or where it stopped), flip TTA, time and the difference from the
    baseline's mean. A single-seed difference within 2·√2·sd (two runs' noise, 2 sd) is marked unresolved."""
    check_same_but_seed(baseline, baseline_names)
    if len(baseline) < 2:
        raise ReportError("an Ablations table needs the baseline's noise: give two or more baseline seeds")
    acc = [r["test_acc"] for r in baseline]
    mean, sd = statistics.mean(acc), statistics.stdev(acc)
    resolved_at = 2 * math.sqrt(2) * sd
    seeds = {r["seed"] for r in baseline}
    lead = (f"Baseline: the defaults over seeds {', '.join(str(s) for s in sorted(seeds))}, {mean:.2f}% ± {sd:.2f} at "
            f"epoch {len(baseline[0]['history'])}. Each variant is one run (seed shown) that changes only what its row "
            f"says; with a seed-to-seed sd of {sd:.2f}, a single-seed difference under {resolved_at:.2f} points "
            f"(2·√2·sd) is within the noise and not resolved.")
    hours = statistics.mean(r["wall_seconds"] for r in baseline) / 3600
    rows = [f"| baseline (defaults) | {', '.join(str(s) for s in sorted(seeds))} | "
            f"{statistics.mean(r['lr_max'] for r in baseline):.4g} (mean) | {mean:.2f}% ± {sd:.2f} | "
            f"{statistics.mean(r['tta_test_acc'] for r in baseline):.2f}% | {hours:.2f} h | |"]
    for variant, name in zip(variants, variant_names):
        change = ablation_change(baseline[0], variant, name)
        if variant["seed"] not in seeds:
            raise ReportError(f"{name} ran seed {variant['seed']}, which the baseline lacks: compare like with like")
        stopped = variant.get("stopped")
        epochs = len(variant["history"])
        if epochs == 0:
            rows.append(f"| {change} | {variant['seed']} | {variant['lr_max']:.4g} | stopped in epoch 1: "
                        f"{stopped['reason'] if stopped else 'no epoch'} | | {variant['wall_seconds'] / 3600:.2f} h | |")
            continue
        where = f" (stopped after epoch {epochs}: NaN loss)" if stopped else ""
        delta = variant["test_acc"] - mean
        verdict = "" if abs(delta) > resolved_at else " (within noise)"
        rows.append(f"| {change} | {variant['seed']} | {variant['lr_max']:.4g} | {variant['test_acc']:.2f}%{where} | "
                    f"{variant['tta_test_acc']:.2f}% | {variant['wall_seconds'] / 3600:.2f} h | {delta:+.2f}{verdict} |")
    return "\n".join([lead, "", "| change | seed | LRMAX | test accuracy at the last epoch | flip TTA (not counted) | time | "
                      "difference from the baseline mean |", "|---|---|---|---|---|---|---|", *rows])


# The levers of modular/recipe.py and what their range tests may need: what a screening variant may change
LEVER_FIELDS = ("whiten_init", "dirac_init", "frozen_bn_scale", "bn_bias_lr_factor", "ema_decay", "ema_every",
                "logit_scale", "lr_find_end", "lr_find_iters")
ADOPT_MARGIN = 0.2  # points of validation accuracy over the baseline's mean that a variant must add to be adopted


def screening_table(records: list[dict], names: list[str]) -> str:
    """Runs on one validation split (--val-split), grouped by configuration: the group with every lever
    at its default is the baseline; one row per group with what it changes, its seeds, LRMAX and
    validation accuracy per seed, their mean and the difference from the baseline's mean."""
    base_cfg = Config.from_dict(records[0]["config"]).to_dict()
    split = {r["config"]["val_split"] for r in records}
    if len(split) > 1 or len({(r["train_images"], len(r["history"]), r["precision"]) for r in records}) > 1:
        raise ReportError(f"{', '.join(names)} ran on different validation splits, epochs or precisions: "
                          "screen variants on one split, for the same epochs, in one precision")
    groups: dict[str, list[dict]] = {}
    defaults = Config().to_dict()
    for record, name in zip(records, names):
        cfg = Config.from_dict(record["config"]).to_dict()
        other = [k for k in cfg if k not in RUNTIME_FIELDS | {"seed", *LEVER_FIELDS} and cfg[k] != base_cfg[k]]
        if other:
            raise ReportError(f"{name} differs from {names[0]} in {', '.join(other)}: a screening variant changes only "
                              f"{', '.join(LEVER_FIELDS)}")
        change = "; ".join(f"{k}: {cfg[k]}" for k in LEVER_FIELDS if cfg[k] != defaults[k]) or "baseline (defaults)"
        groups.setdefault(change, []).append(record)
    if "baseline (defaults)" not in groups:
        raise ReportError("a screening table needs the baseline's runs (every lever at its default) among the records")
    base_mean = statistics.mean(r["test_acc"] for r in groups["baseline (defaults)"])
    rows = []
    for change, runs in sorted(groups.items(), key=lambda item: item[0] != "baseline (defaults)"):
        runs = sorted(runs, key=lambda r: r["seed"])
        mean = statistics.mean(r["test_acc"] for r in runs)
        delta = "" if change == "baseline (defaults)" else f"{mean - base_mean:+.2f}"
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lrs = ", ".join(f"{r['lr_max']:.3g}" for r in runs)
        accs = ", ".join(f"{r['test_acc']:.2f}%" for r in runs)
        tta = statistics.mean(r["tta_test_acc"] for r in runs)
        rows.append(f"| {change} | {seeds} | {lrs} | {accs} | {mean:.2f}% | {tta:.2f}% | {delta} |")
    lead = (f"Validation accuracy at epoch {len(records[0]['history'])} on {split.pop():,} held-out training images "
            f"(--val-split; the test set untouched). A variant is adopted only if its mean beats the baseline's by "
            f"{ADOPT_MARGIN} points or more.")
    return "\n".join([lead, "", "| variant | seeds | LRMAX | validation accuracy | mean | flip TTA mean | difference |",
                      "|---|---|---|---|---|---|---|", *rows])


def performance_table(bench: dict) -> str:
    """A Markdown table of a benchmark record."""
    from modular.tools.bench import bench_rows

    rows = bench_rows(bench)
    head = (f"Measured by `python -m modular bench` on {bench['hardware']}, batch {bench['batch_size']}, "
            f"medians of {bench['repeats']} interleaved repeats:")
    return "\n".join([head, "", "| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def load_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict) or not ({"history", "train_images_per_s", "app_latency"} & set(record)):
            raise ValueError("neither a run record nor a benchmark record")
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is not a run or benchmark record of this project ({error})") from None
    check_one_setting(record, path)
    return record


def check_one_setting(record: dict, path: Path) -> None:
    """ReportError if the run was resumed on another device, precision or machine: its times and its
    precision are then no one setting's. A benchmark record has no parts."""
    parts = record.get("ran_on", [])
    if len({tuple((k, v) for k, v in part.items() if k != "from_epoch") for part in parts}) > 1:
        described = "; ".join(f"from epoch {p['from_epoch']}: {p['hardware']}, {p['device']}, {p['precision']}" for p in parts)
        raise ReportError(f"{path} was resumed on other hardware or precision ({described}); report runs made in one setting")


def check_test_set_evaluated(record: dict, path: Path) -> None:
    """ReportError for a run evaluated on a validation split: the README's tables report the test set."""
    held_out = record["config"].get("val_split")
    if held_out:
        raise ReportError(f"{path} was evaluated on a validation split of {held_out:,} training images (--val-split), "
                          "not on the test set: the Results, Seeds and Ablations tables report test accuracy")


def render_sections(paths: list[Path], ablations: list[Path] = ()) -> dict[str, tuple[str, str]]:
    """Section name -> (the command that writes it, its Markdown) for the records at ``paths``: each
    benchmark record its Performance table; one run record the Results table, several the Seeds table;
    with ``ablations`` (variant run records) also the Ablations table against those seeds."""
    records = {Path(p): load_record(p) for p in paths}
    runs = [p for p, r in records.items() if "history" in r]
    sections = {}
    try:
        if ablations:
            variants = {Path(p): load_record(p) for p in ablations}
            for path, variant in variants.items():
                check_test_set_evaluated(variant, path)
            source = " ".join(map(str, runs)) + "".join(f" --ablation {p}" for p in variants)
            sections["ablations"] = (source, ablations_table([records[p] for p in runs], [str(p) for p in runs],
                                                             list(variants.values()), [str(p) for p in variants]))
        for path in (p for p, r in records.items() if "history" not in r and "app_latency" not in r):
            sections["performance"] = (str(path), performance_table(records[path]))
        for path in (p for p, r in records.items() if "app_latency" in r):  # the app's response time
            sections["app-latency"] = (str(path), latency_summary(records[path]))
        screening = [p for p in runs if records[p]["config"].get("val_split")]
        if screening and len(screening) == len(runs) and not ablations:
            sections["screening"] = (" ".join(map(str, runs)), screening_table([records[p] for p in runs],
                                                                              [str(p) for p in runs]))
            return sections
        for path in runs:
            check_test_set_evaluated(records[path], path)
        if len(runs) == 1:
            sections["results"] = (str(runs[0]), results_table(records[runs[0]]))
        elif runs and not ablations:  # with ablations the seeds are the baseline of that table alone
            sections["seeds"] = (" ".join(map(str, runs)), seeds_table([records[p] for p in runs], [str(p) for p in runs]))
    except (KeyError, TypeError) as error:
        raise ReportError(f"a record lacks a field the table needs ({error!r}); is it a record of this project?") from None
    return sections


def update_readme(paths: list[Path], readme: Path, ablations: list[Path] = ()) -> list[str]:
    """Write the sections the records at ``paths`` (and ``ablations``) feed into ``readme``; returns their names."""
    sections = render_sections(paths, ablations)
    text = readme.read_text()
    shown = readme.as_posix() if not readme.is_absolute() else readme.name  # as typed: docs/experiments.md
    for name, (source, table) in sections.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise ReportError(f"{readme} has no {start} ... {end} markers; add them where the table belongs")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        note = f"<!-- written by `python -m modular report {source} --readme {shown}`; do not edit by hand -->"
        text = f"{head}{start}\n{note}\n{table}\n{end}{tail}"
    readme.write_text(text)
    return list(sections)
