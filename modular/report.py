"""README sections written from committed records, between marker comments, so that every
number in the README can be regenerated from (and traced to) a file in results/.

- a run record (run.json, e.g. results/headline.json) -> the Results table;
- a benchmark record (results/bench-cpu.json) -> the Performance table.
"""

from __future__ import annotations

import json
from pathlib import Path


class ReportError(RuntimeError):
    """The record or the README cannot be used; the message says which and why."""


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
        ("Data", f"{record['data_source']}: {record['train_images']:,} train / {record['test_images']:,} test"),
    ]
    return "\n".join(["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def performance_table(bench: dict) -> str:
    """A Markdown table of a benchmark record."""
    rows = [
        (f"Training step, {bench['path']} (the trainer's default)", f"{bench['train_images_per_s']:.0f} images/s"),
        (f"Training step, {bench['baseline_path']} (baseline: what the original ran)",
         f"{bench['baseline_train_images_per_s']:.0f} images/s"),
        ("Speedup of the default path", f"{bench['speedup']:.2f}×"),
    ]
    if "compiled_train_images_per_s" in bench:
        rows.append(("Training step with `torch.compile` (`--compile`)",
                     f"{bench['compiled_train_images_per_s']:.0f} images/s ({bench['compile_speedup']:.2f}× the default)"))
    rows += [
        ("Evaluation", f"{bench['eval_images_per_s']:.0f} images/s"),
        ("Data pipeline (albumentations + DataLoader)",
         f"{bench['data_images_per_s']:,.0f} images/s ({bench['data_to_train_ratio']:.0f}× the training step)"),
        ("Achieved in the training step",
         f"{bench['gflops_per_s']:.0f} GFLOP/s ({bench['train_gflop_per_image']:.2f} GFLOP/image)"),
        ("Estimated 24-epoch run with evaluation and range test", f"{bench['est_full_run_hours']:.2f} h"),
    ]
    head = (f"Measured by `python -m modular bench` on {bench['hardware']}, batch {bench['batch_size']}, "
            f"medians of {bench['repeats']} interleaved repeats:")
    return "\n".join([head, "", "| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


SECTIONS = {  # marker name -> (what identifies such a record, how to render it)
    "results": ("history", results_table),
    "performance": ("train_images_per_s", performance_table),
}


def update_readme(record_path: Path, readme: Path) -> str:
    """Write the section that ``record_path`` feeds into ``readme``; returns the section's name."""
    try:
        record = json.loads(Path(record_path).read_text())
        name, render = next((n, r) for n, (key, r) in SECTIONS.items() if key in record)
        table = render(record)
    except (ValueError, KeyError, TypeError, StopIteration) as error:
        raise ReportError(f"{record_path} is not a run or benchmark record of this project ({error!r})") from None
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ReportError(f"{readme} has no {start} ... {end} markers; add them where the table belongs")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    note = f"<!-- written by `python -m modular report {record_path}`; do not edit by hand -->"
    readme.write_text(f"{head}{start}\n{note}\n{table}\n{end}{tail}")
    return name
