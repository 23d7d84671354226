"""The README sections written from records: tables, markers, errors."""

from __future__ import annotations

import json
import statistics

import pytest

from modular.config import Config
from modular.tools.cli import main
from modular.tools.report import ReportError, performance_table, render_sections, results_table, seeds_table, update_readme

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
def row(table: str, label: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``label``, else of the one that starts with it."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ")]
    found = [cells for cells in rows if cells[0] == label] or [cells for cells in rows if cells[0].startswith(label)]
    assert len(found) == 1, f"{len(found)} rows start with {label!r}:\n{table}"
    return found[0]


README = "# Title\n\n## Results\n<!-- results:start -->\nold\n<!-- results:end -->\n\n## Performance\n" \
         "<!-- performance:start -->\n<!-- performance:end -->\ntail\n"


def test_results_table_rounds_accuracies_to_two_decimals():
    table = results_table(RUN)
    assert row(table, "Test accuracy at epoch 24")[1] == "**91.23%**"
    assert row(table, "Best epoch")[1] == "23 (91.50%)" and row(table, "Flip-TTA")[1] == "92.00%"
    assert row(table, "LRMAX")[1] == "0.4329" and row(table, "Total time")[1] == "1.19 h"


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
    lead = table.splitlines()[0]  # the mean ± sd first, then how many seeds, the spread, and no TTA in it
    assert lead.startswith(f"**94.07% ± {sd:.2f}**")
    assert all(part in lead for part in ("epoch 24", "3 seeds", "no TTA", "min 93.80%", "max 94.30%")), lead
    rows = [line for line in table.splitlines() if line.startswith("| ") and "seed |" not in line]
    assert [line.split(" | ")[0] for line in rows] == ["| 0", "| 1", "| 2", "| mean", "| sample sd", "| min", "| max"]
    assert row(table, "1") == ["1", "0.49", "94.30%", "94.70%", "2.22 h"]
    assert row(table, "sample sd")[1:3] == ["0.01", f"{sd:.2f}%"]


@pytest.mark.parametrize("changes, named", [
    ({"std": [0.2452, 0.2428, 0.2606]}, "channel std"),             # the JPEG copy
    ({"config": {"label_smoothing": 0.0}}, "label_smoothing"),
    ({"precision": "fp32"}, "precision"),
    ({"seed": 0}, "seed 0"),
])
def test_seeds_table_refuses_records_that_differ_in_more_than_the_seed(changes, named):
    """The message names both files and what differs between them (or the seed they share)."""
    changes = dict(changes)
    runs = [seed_run(0, 93.8), seed_run(changes.pop("seed", 1), 94.3, **changes)]
    with pytest.raises(ReportError) as caught:
        seeds_table(runs, ["seed0.json", "other.json"])
    assert all(part in str(caught.value) for part in (named, "seed0.json", "other.json")), caught.value


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
    assert err.startswith("error: ") and "jpeg.json" in err and "channel std" in err and len(err.strip().splitlines()) == 1


def variant(seed: int, acc: float, **config_changes):
    return seed_run(seed, acc, config=config_changes)


def test_ablations_table_reads_each_change_off_the_configs_and_marks_the_noise():
    from modular.tools.report import ablations_table

    baseline = [seed_run(0, 94.29), seed_run(1, 94.09), seed_run(2, 94.30)]
    sd = statistics.stdev([94.29, 94.09, 94.30])
    adam = variant(0, 93.00, optimizer="adam")
    plain = variant(0, 94.40, label_smoothing=0.0, logit_scale=1.0)
    steep = variant(0, 10.00, optimizer="adam", lr_rule="steepest")
    steep["stopped"] = {"reason": "loss became NaN/inf at epoch 3, step 7; lower --max-lr", "after_epoch": 2}
    steep["history"] = steep["history"][:2]
    by_hand = variant(0, 93.50, label_smoothing=0.0, logit_scale=1.0, max_lr=0.4)
    table = ablations_table(baseline, ["s0", "s1", "s2"], [adam, plain, steep, by_hand],
                            ["adam", "plain", "steep", "by_hand"])
    intro = table.split("\n\n")[0]  # the baseline's mean ± sd, and the smallest difference it resolves (2·√2·sd)
    assert f"{statistics.mean([94.29, 94.09, 94.30]):.2f}% ± {sd:.2f}" in intro
    assert f"{2 * 2 ** 0.5 * sd:.2f} points" in intro
    difference = -1  # the last column
    assert row(table, "optimizer: sgd → adam")[difference] == "-1.23"                     # resolved: no noise mark
    within = row(table, "label_smoothing: 0.2 → 0.0; logit_scale: 0.125 → 1.0")[difference]
    assert within.startswith("+0.17 ") and "noise" in within
    stopped = row(table, "optimizer: sgd → adam; lr_rule: minimum → steepest")[3]         # its accuracy, and why
    assert stopped.startswith("10.00%") and "epoch 2" in stopped and "NaN" in stopped
    assert row(table, "max_lr: range test → 0.4; label_smoothing: 0.2 → 0.0; logit_scale: 0.125 → 1.0")[difference] == "-0.73"


@pytest.mark.parametrize("make, named", [
    (lambda: variant(0, 93.0, optimizer="adam", batch_size=256), "batch_size"),   # two changes, one not ablated
    (lambda: variant(0, 93.0), "another seed"),                                   # no change at all
    (lambda: seed_run(0, 93.0, config={"optimizer": "adam"}, precision="fp32"), "precision"),
    (lambda: seed_run(0, 93.0, config={"optimizer": "adam"}, std=[0.2452, 0.2428, 0.2606]), "channel std"),
    (lambda: variant(5, 93.0, optimizer="adam"), "seed 5"),                       # a seed the baseline lacks
])
def test_ablations_table_refuses_a_variant_that_is_not_a_clean_ablation(make, named):
    """The message names the variant's file and what makes it no clean ablation."""
    from modular.tools.report import ablations_table

    with pytest.raises(ReportError) as caught:
        ablations_table([seed_run(0, 94.29), seed_run(1, 94.09)], ["s0", "s1"], [make()], ["v.json"])
    assert named in str(caught.value) and "v.json" in str(caught.value), caught.value


def test_report_with_ablation_flags_writes_the_ablations_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- ablations:start -->\n<!-- ablations:end -->\n")  # docs/experiments.md has no seeds table
    paths = []
    for name, record in (("s0", seed_run(0, 94.29)), ("s1", seed_run(1, 94.09)), ("adam", variant(0, 93.0, optimizer="adam"))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(record))
    assert main(["report", str(paths[0]), str(paths[1]), "--ablation", str(paths[2]), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert f"report {paths[0]} {paths[1]} --ablation {paths[2]} --readme README.md`" in text
    assert row(text, "optimizer: sgd → adam")[1] == "0"  # the variant's seed


def test_a_record_resumed_in_another_setting_is_refused(tmp_path):
    part = {"from_epoch": 0, "device": "cpu", "precision": "bf16", "channels_last": True, "hardware": "Some CPU (2 threads)"}
    path = tmp_path / "run.json"
    for parts in ([], [part], [part, {**part, "from_epoch": 7}]):  # older records, one part, resumed alike
        path.write_text(json.dumps({**RUN, "ran_on": parts}))
        assert "**91.23%**" in render_sections([path])["results"][1]
    for change in ({"precision": "fp32"}, {"hardware": "Other CPU (4 threads)"}, {"device": "cuda"}):
        path.write_text(json.dumps({**RUN, "ran_on": [part, {**part, "from_epoch": 7, **change}]}))
        with pytest.raises(ReportError) as caught:  # the file, and each part's epoch and what it ran on
            render_sections([path])
        message = str(caught.value)
        assert "run.json" in message and "from epoch 0" in message and "from epoch 7" in message, message
        assert "Some CPU (2 threads)" in message and next(iter(change.values())) in message, message


def test_a_run_evaluated_on_a_validation_split_never_enters_a_test_set_table(tmp_path):
    """Screening runs (--val-split) are compared among themselves; the README's tables are test accuracy."""
    screening = {**RUN, "config": {**RUN["config"], "val_split": 5000}, "test_images": 5000}
    path, baseline = tmp_path / "screen.json", tmp_path / "base.json"
    path.write_text(json.dumps(screening))
    baseline.write_text(json.dumps(RUN))
    for paths, ablations in (([baseline, path], ()), ([path, baseline], ()), ([baseline, baseline], [path])):
        with pytest.raises(ReportError) as caught:
            render_sections(paths, ablations)
        assert str(path) in str(caught.value) and "--val-split" in str(caught.value)


def screened(seed: int, acc: float, lr: float, **levers) -> dict:
    config = {**RUN["config"], "val_split": 5000, "seed": seed, **levers}
    return {**RUN, "config": config, "seed": seed, "test_acc": acc, "tta_test_acc": acc + 0.5, "lr_max": lr,
            "train_images": 45000, "test_images": 5000}


def test_the_screening_table_groups_variants_by_their_levers_against_the_baseline(tmp_path):
    records = {"b0": screened(0, 93.0, 0.4), "b1": screened(1, 93.4, 0.45),
               "all0": screened(0, 93.9, 0.33, frozen_bn_scale=True, bn_bias_lr_factor=64.0, ema_decay=0.99),
               "all1": screened(1, 94.1, 0.35, frozen_bn_scale=True, bn_bias_lr_factor=64.0, ema_decay=0.99)}
    paths = []
    for name, record in records.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(record))
    [(name, (_, table))] = render_sections(paths).items()
    assert name == "screening"
    assert row(table, "baseline (defaults)")[1:5] == ["0, 1", "0.4, 0.45", "93.00%, 93.40%", "93.20%"]
    bundle = row(table, "frozen_bn_scale: True; bn_bias_lr_factor: 64.0; ema_decay: 0.99")
    assert bundle[1] == "0, 1" and bundle[4] == "94.00%" and bundle[6] == "+0.80"
    (tmp_path / "other.json").write_text(json.dumps(screened(2, 93.0, 0.4, label_smoothing=0.1)))
    with pytest.raises(ReportError) as caught:  # not a lever: another experiment
        render_sections([*paths, tmp_path / "other.json"])
    assert "other.json" in str(caught.value) and "label_smoothing" in str(caught.value)
