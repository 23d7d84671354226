"""The README's Results table, written from a run record between marker comments."""

from __future__ import annotations

import json
from pathlib import Path


class ReportError(RuntimeError):
    """The record or the README cannot be used; the message says which and why."""


START, END = "<!-- results:start -->", "<!-- results:end -->"


def results_table(record: dict) -> str:
    """A Markdown table of a run's headline numbers (accuracies to two decimals)."""
    hours = record["wall_seconds"] / 3600
    rows = [
        ("Test accuracy at epoch {}".format(len(record["history"])), f"**{record['test_acc']:.2f}%**"),
        ("Best epoch", f"{record['best_epoch']} ({record['best_test_acc']:.2f}%)"),
        ("Flip-TTA accuracy (reported apart, not counted)", f"{record['tta_test_acc']:.2f}%"),
        ("LRMAX found by the range test", f"{record['lr_max']:.4g}"),
        ("LRMIN = LRMAX / div_factor", f"{record['lr_min']:.4g}"),
        ("Seconds per epoch (train + test)", f"{record['seconds_per_epoch']:.0f}"),
        ("Total time (range test + 24 epochs + evaluation)", f"{hours:.2f} h"),
        ("Hardware", record["hardware"]),
        ("Precision", f"{record['precision']} autocast" if record["precision"] != "fp32" else "fp32"),
        ("Data", f"{record['data_source']}: {record['train_images']:,} train / {record['test_images']:,} test"),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def update_readme(record_path: Path, readme: Path) -> None:
    """Replace the text between the results markers in ``readme`` with the table of ``record_path``."""
    try:
        record = json.loads(Path(record_path).read_text())
        table = results_table(record)
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(f"{record_path} is not a run record of this project ({error})") from None
    text = readme.read_text()
    if START not in text or END not in text:
        raise ReportError(f"{readme} has no {START} ... {END} markers; add them where the table belongs")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    note = f"<!-- written by `python -m modular report {record_path}`; do not edit by hand -->"
    readme.write_text(f"{head}{START}\n{note}\n{table}\n{END}{tail}")
