"""The README sections written from records: tables, markers, errors."""

from __future__ import annotations

import json

import pytest

from modular.cli import main
from modular.report import ReportError, performance_table, results_table, update_readme

RUN = {
    "history": [{"epoch": e, "test_acc": 50.0 + e} for e in range(1, 25)],
    "test_acc": 91.234, "best_test_acc": 91.5, "best_epoch": 23, "tta_test_acc": 92.004,
    "lr_max": 0.4329, "lr_min": 0.004329, "seconds_per_epoch": 168.4, "wall_seconds": 4300.0,
    "hardware": "Some CPU (2 threads)", "precision": "bf16", "data_source": "cifar10-jpeg.tar.gz",
    "train_images": 50000, "test_images": 10000,
}
BENCH = {
    "path": "cpu, bf16 autocast, channels_last", "baseline_path": "cpu, fp32, NCHW", "train_images_per_s": 340.2,
    "baseline_train_images_per_s": 106.1, "speedup": 3.2, "eval_images_per_s": 1400.0, "data_images_per_s": 8500.0,
    "data_to_train_ratio": 25.0, "gflops_per_s": 772.0, "train_gflop_per_image": 2.27, "est_full_run_hours": 1.07,
    "hardware": "Some CPU (2 threads)", "batch_size": 512, "repeats": 5,
}
README = "# Title\n\n## Results\n<!-- results:start -->\nold\n<!-- results:end -->\n\n## Performance\n" \
         "<!-- performance:start -->\n<!-- performance:end -->\ntail\n"


def test_results_table_rounds_accuracies_to_two_decimals():
    table = results_table(RUN)
    assert "| Test accuracy at epoch 24 | **91.23%** |" in table
    assert "23 (91.50%)" in table and "92.00%" in table and "0.4329" in table and "1.19 h" in table


def test_performance_table_has_the_measured_figures():
    table = performance_table(BENCH)
    assert "340 images/s" in table and "106 images/s" in table and "3.20×" in table and "1.07 h" in table
    assert "compile" not in table  # not measured, not shown


def test_update_readme_replaces_only_between_markers_and_is_repeatable(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    assert update_readme(tmp_path / "run.json", readme) == "results"
    assert update_readme(tmp_path / "bench.json", readme) == "performance"
    once = readme.read_text()
    update_readme(tmp_path / "run.json", readme)
    assert readme.read_text() == once
    assert "old" not in once and once.startswith("# Title") and once.endswith("tail\n")
    assert "**91.23%**" in once and "340 images/s" in once


def test_errors_name_the_file(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ReportError, match="markers"):
        update_readme(tmp_path / "run.json", readme)
    assert main(["report", str(tmp_path / "junk.json"), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.json" in err and len(err.strip().splitlines()) == 1
