"""The README sections written from records: tables, markers, errors."""

from __future__ import annotations

import json
import statistics

import pytest

from modular.cli import main
from modular.config import Config
from modular.report import ReportError, performance_table, results_table, seeds_table, update_readme

RUN = {
    "history": [{"epoch": e, "test_acc": 50.0 + e} for e in range(1, 25)],
    "test_acc": 91.234, "best_test_acc": 91.5, "best_epoch": 23, "tta_test_acc": 92.004,
    "lr_max": 0.4329, "lr_min": 0.004329, "seconds_per_epoch": 168.4, "wall_seconds": 4300.0,
    "hardware": "Some CPU (2 threads)", "precision": "bf16", "data_source": "cifar10-jpeg.tar.gz",
    "train_images": 50000, "test_images": 10000,
    "config": Config(data_dir="/tmp/cifar10-official").to_dict(), "seed": 0, "std": [0.2470, 0.2435, 0.2616],
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
    assert update_readme([tmp_path / "run.json"], readme) == ["results"]
    assert update_readme([tmp_path / "bench.json"], readme) == ["performance"]
    once = readme.read_text()
    update_readme([tmp_path / "run.json"], readme)
    assert readme.read_text() == once
    assert "old" not in once and once.startswith("# Title") and once.endswith("tail\n")
    assert "**91.23%**" in once and "340 images/s" in once


def test_errors_name_the_file(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ReportError, match="markers"):
        update_readme([tmp_path / "run.json"], readme)
    assert main(["report", str(tmp_path / "junk.json"), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.json" in err and len(err.strip().splitlines()) == 1


def seed_run(seed: int, acc: float, **changes) -> dict:
    config = Config(data_dir=f"/data/copy{seed}", seed=seed, output_dir=f"runs/seed{seed}").to_dict()
    config.update(changes.pop("config", {}))
    return {**RUN, "seed": seed, "test_acc": acc, "tta_test_acc": acc + 0.4, "lr_max": 0.48 + seed / 100,
            "wall_seconds": 8000.0 + seed, "config": config, **changes}


def test_seeds_table_gives_mean_sample_sd_min_max_and_every_seed():
    runs = [seed_run(2, 94.10), seed_run(0, 93.80), seed_run(1, 94.30)]
    table = seeds_table(runs, ["a", "b", "c"])
    sd = statistics.stdev([93.80, 94.30, 94.10])
    assert table.startswith(f"**94.07% ± {sd:.2f}** test accuracy at epoch 24 (mean ± sample standard deviation "
                            "over 3 seeds, no TTA; min 93.80%, max 94.30%)")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "seed |" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1", "| 2", "| mean", "| sample sd", "| min", "| max"]
    assert "| 1 | 0.49 | 94.30% | 94.70% | 2.22 h |" in table
    assert f"| sample sd | 0.01 | {sd:.2f}% |" in table


@pytest.mark.parametrize("changes, named", [
    ({"std": [0.2452, 0.2428, 0.2606]}, "channel std"),             # the JPEG copy
    ({"config": {"label_smoothing": 0.0}}, "label_smoothing"),
    ({"precision": "fp32"}, "precision"),
    ({"seed": 0}, "appears twice"),
])
def test_seeds_table_refuses_records_that_differ_in_more_than_the_seed(changes, named):
    changes = dict(changes)
    runs = [seed_run(0, 93.8), seed_run(changes.pop("seed", 1), 94.3, **changes)]
    with pytest.raises(ReportError, match=named):
        seeds_table(runs, ["seed0.json", "other.json"])


def test_report_with_several_runs_writes_the_seeds_section(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- seeds:start -->\n<!-- seeds:end -->\n" + README)
    paths = []
    for seed, acc in ((0, 93.8), (1, 94.3)):
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(seed_run(seed, acc)))
    assert main(["report", *map(str, paths), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "**94.05% ± 0.35**" in text and f"report {paths[0]} {paths[1]} --readme README.md`" in text
    assert "<!-- results:start -->\nold" in text  # the single-run section is left alone
    (tmp_path / "jpeg.json").write_text(json.dumps(seed_run(2, 91.0, std=[0.2452, 0.2428, 0.2606])))
    assert main(["report", *map(str, paths), str(tmp_path / "jpeg.json"), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "jpeg.json differs" in err and len(err.strip().splitlines()) == 1
