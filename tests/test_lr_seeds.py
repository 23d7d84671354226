"""lr-seeds: several seeds' range tests gathered into one record and one figure, on synthetic lr_find
records (curves made up, picks read off them by the project's own rule)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import cli_main

from modular.config import Config
from modular.lr_finder import RULE, LRFindResult, choose_lr_max, smooth
from modular.tools.jsonio import dumps
from modular.tools.lr_seeds import LRSeedsError, caption, gather, plot_lr_seeds

STD = [0.2470, 0.2435, 0.2616]


def range_test(minimum_at: int, seed: int) -> dict:
    """A bounded loss like the recorded ones: down to a minimum at ``minimum_at``, up, then down again."""
    lrs = np.geomspace(1e-4, 10, 100)
    x = np.log(lrs)
    raw = 2.3 - 0.26 * np.exp(-((x - x[minimum_at]) ** 2) / 4.0)
    after = np.arange(100) > minimum_at
    raw[after] += 0.4 * np.exp(-((x[after] - x[minimum_at] - 1.6) ** 2) / 0.8)
    raw += np.random.default_rng(seed).normal(0, 0.01, 100)
    losses = smooth(raw.tolist())
    choice = choose_lr_max(lrs.tolist(), losses)
    return LRFindResult(lrs.tolist(), losses, choice.lr_max, choice.lr_max / 100, choice.steepest_lr,
                        raw_losses=raw.tolist(), diverged_lr=choice.diverged_lr).to_dict()


def lr_find_record(seed: int, minimum_at: int, precision: str = "fp32", **config) -> dict:
    """What `lr-find --seed N` writes (modular/tools/record.py build_lr_find_record)."""
    return {"config": Config(seed=seed, data_dir="/data/cifar10-official", output_dir=f"/runs/lr-find-seed{seed}",
                             **config).to_dict(),
            "seed": seed, "data_source": "/data/cifar10-official", "train_images": 50000, "mean": [0.4914, 0.4822, 0.4465],
            "std": STD, "lr_find": range_test(minimum_at, seed), "lr_find_seconds": 4000.0,
            "commit": [{"commit": "abc", "clean": True, "from_epoch": 0}], "device": "cpu", "precision": precision,
            "hardware": "Some CPU (2 threads)", "versions": {}}


def run_record(seed: int, minimum_at: int) -> dict:
    """A run record whose range test ran in bf16 on a GPU, resumed later (the last part is what the
    top-level fields say): the range test's precision is its first part's."""
    record = lr_find_record(seed, minimum_at, precision="fp32")
    record.update(history=[{"epoch": 1}], test_images=10000, device="cpu", hardware="Some CPU (2 threads)",
                  ran_on=[{"from_epoch": 0, "device": "cuda", "precision": "bf16", "channels_last": True, "hardware": "A100"},
                          {"from_epoch": 3, "device": "cpu", "precision": "fp32", "channels_last": True,
                           "hardware": "Some CPU (2 threads)"}])
    return record


@pytest.fixture
def inputs(tmp_path):
    """Seeds 0-2 as run records (one resumed), 3 and 4 as lr_find.json files in fp32."""
    paths = []
    for seed, minimum_at in ((3, 70), (0, 72), (4, 66), (1, 69), (2, 74)):
        record = run_record(seed, minimum_at) if seed < 3 else lr_find_record(seed, minimum_at)
        if seed < 3:
            record["precision"] = "bf16"
            del record["ran_on"]  # runs begun before the parts were kept: the top level is the whole run
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        paths.append(folder / ("run.json" if seed < 3 else "lr_find.json"))
        paths[-1].write_text(json.dumps(record, indent=1))
    return paths


def test_gather_gives_each_seeds_picks_and_precision_and_their_spread(inputs):
    gathered = gather(inputs)
    rows = gathered["seeds"]
    assert [r["seed"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["precision"] for r in rows] == ["bf16", "bf16", "bf16", "fp32", "fp32"]  # shown, not refused
    for row, path in zip(rows, sorted(inputs, key=lambda p: int(p.parent.name[4:]))):
        found = json.loads(path.read_text())["lr_find"]
        assert (row["lr_max"], row["diverged_lr"], row["steepest_lr"]) == \
            (found["lr_max"], found["diverged_lr"], found["steepest_lr"])
        assert row["lrs"] == found["lrs"] and row["losses"] == found["losses"] and row["source"] == path.name
    lr_max = [r["lr_max"] for r in rows]
    assert len(set(lr_max)) >= 4  # the made-up minima differ
    assert gathered["spread"]["lr_max"] == pytest.approx({
        "n": 5, "min": min(lr_max), "max": max(lr_max), "ratio": max(lr_max) / min(lr_max),
        "geometric_mean": math.prod(lr_max) ** (1 / 5)})
    assert gathered["spread"]["diverged_lr"]["n"] == gathered["spread"]["steepest_lr"]["n"] == 5
    assert gathered["rule"] == RULE and gathered["train_images"] == 50000 and "seed" not in gathered["config"]


def test_a_resumed_run_shows_the_precision_its_range_test_ran_in(tmp_path):
    paths = [tmp_path / "run.json", tmp_path / "lr_find.json"]
    paths[0].write_text(json.dumps(run_record(0, 70)))
    paths[1].write_text(json.dumps(lr_find_record(1, 70)))
    first = gather(paths)["seeds"][0]
    assert (first["precision"], first["device"], first["hardware"]) == ("bf16", "cuda", "A100")


def test_the_minimum_and_the_divergence_are_read_off_the_curve(tmp_path):
    """Every record has its curve, so what the rule saw is read off it, not trusted to fields of the record."""
    records = [lr_find_record(0, 70), lr_find_record(1, 72)]
    want = records[0]["lr_find"].pop("diverged_lr")
    records[0]["lr_find"].pop("raw_losses")
    paths = []
    for n, record in enumerate(records):
        paths.append(tmp_path / f"{n}.json")
        paths[-1].write_text(json.dumps(record))
    first = gather(paths)["seeds"][0]
    assert first["diverged_lr"] == want and first["minimum_lr"] == first["lr_max"]  # a narrow valley: the minimum


def flat_valley_record(seed: int) -> dict:
    """A run in a wide flat valley (Adam's shape): LRMAX lies on the fall before it, the smoothed minimum far right."""
    record = lr_find_record(seed, 70, optimizer="adam")
    lrs = np.geomspace(1e-4, 10, 100)
    x = np.log10(lrs)
    loss = np.where(x < -1.5, 2.3 - 0.4 * (x + 4) / 2.5, 1.9 - 0.002 * (x + 1.5))
    loss[x > -0.6] += 3 * (x[x > -0.6] + 0.6) ** 2
    choice = choose_lr_max(lrs.tolist(), loss.tolist())
    record["lr_find"] = LRFindResult(lrs.tolist(), loss.tolist(), choice.lr_max, choice.lr_max / 100,
                                     choice.steepest_lr, raw_losses=loss.tolist(), diverged_lr=choice.diverged_lr).to_dict()
    return record


def test_a_flat_valley_shows_the_smoothed_minimum_beside_lrmax(tmp_path):
    paths = [tmp_path / "0.json", tmp_path / "1.json"]
    for seed, path in enumerate(paths):
        path.write_text(json.dumps(flat_valley_record(seed)))
    gathered = gather(paths)
    row = gathered["seeds"][0]
    assert row["minimum_lr"] > 4 * row["lr_max"]
    ax = plot_lr_seeds(gathered["seeds"], gathered["spread"], gathered["rule"]).axes[0]
    squares = [line for line in ax.get_lines() if line.get_marker() == "s" and len(line.get_xdata()) == 1]
    assert sorted(float(line.get_xdata()[0]) for line in squares) == sorted(r["minimum_lr"] for r in gathered["seeds"])


def test_a_record_older_than_the_rule_shows_the_rules_pick_today_beside_its_own(tmp_path):
    """A run that took its flat valley's left end (the rule before): the record keeps what the run used, the
    gathered row and the figure add what the rule picks on that curve now (a star)."""
    records = [flat_valley_record(seed) for seed in (0, 1)]
    found = records[0]["lr_find"]
    today = found["lr_max"]
    found["lr_max"] = older = found["lrs"][55]
    paths = [write(tmp_path, f"{n}.json", record) for n, record in enumerate(records)]
    gathered = gather(paths)
    first, second = gathered["seeds"]
    assert (first["lr_max"], first["rule_lr"]) == (older, today) and second["rule_lr"] == second["lr_max"]
    assert gathered["spread"]["rule_lr"]["n"] == 2
    ax = plot_lr_seeds(gathered["seeds"], gathered["spread"], gathered["rule"]).axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*" and len(line.get_xdata()) == 1]
    assert [float(line.get_xdata()[0]) for line in stars] == [today]
    assert "the rule's pick today (where not the run's)" in [t.get_text() for t in ax.get_legend().get_texts()]
    found["rule"] = "an older rule"
    write(tmp_path, "0.json", records[0])
    gathered = gather(paths)
    assert caption(gathered).startswith("Dots, the runs' picks, by the rule they ran with: an older rule. Stars")
    assert gathered["rule_now"] in caption(gathered)
    records[0]["lr_find"]["lr_max"] = today  # the older rule picked the same: the caption is today's rule alone
    write(tmp_path, "0.json", records[0])
    assert caption(gather(paths)) == gathered["rule_now"]


def test_the_command_writes_the_record_and_the_figure(inputs, tmp_path, capsys):
    out, figure = tmp_path / "results" / "lr-find-seeds.json", tmp_path / "images" / "lr_find_seeds.png"
    code, stdout, err = cli_main(["lr-seeds", *inputs, "--output", out, "--figure", figure], capsys)
    assert code == 0, err
    record = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the record"))
    assert record == json.loads(dumps(gather(inputs)))
    assert record["config"]["data_dir"] == "cifar10-official" and record["seeds"][3]["source"] == "lr_find.json"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = stdout.splitlines()
    assert lines[0].split()[:7] == ["seed", "precision", "LRMAX", "rule", "now", "minimum", "diverged"]
    assert [line.split()[:2] for line in lines[1:6]] == [["0", "bf16"], ["1", "bf16"], ["2", "bf16"], ["3", "fp32"],
                                                        ["4", "fp32"]]
    s = record["spread"]["lr_max"]
    assert f"LRMAX: min {s['min']:.4g}, max {s['max']:.4g} ({s['ratio']:.2f}x), geometric mean " \
           f"{s['geometric_mean']:.4g} over 5 seeds" in stdout


def test_the_figure_draws_every_curve_and_its_picks_with_the_precision_in_the_legend(inputs):
    gathered = gather(inputs)
    fig = plot_lr_seeds(gathered["seeds"], gathered["spread"], gathered["rule"])
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 100]
    assert len(curves) == 5
    for row, curve in zip(gathered["seeds"], curves):
        assert np.allclose(curve.get_ydata(), row["losses"])
        picks = [line for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_color() == curve.get_color()]
        # the smoothed minimum is LRMAX on these curves: drawn once
        assert sorted(float(p.get_xdata()[0]) for p in picks) == sorted([row["lr_max"], row["diverged_lr"], row["steepest_lr"]])
    legend = [t.get_text() for t in ax.artists[0].get_texts()] if ax.artists else []
    assert legend[:1] == [f"seed 0 (bf16): LRMAX {gathered['seeds'][0]['lr_max']:.3g}"]
    assert legend[3].startswith("seed 3 (fp32)")
    s = gathered["spread"]["lr_max"]
    assert f"LRMAX {s['min']:.3g} to {s['max']:.3g} ({s['ratio']:.2f}x)" in ax.get_title()


def write(tmp_path, name: str, record: dict):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


REFUSED = [
    ("label smoothing", lambda: lr_find_record(1, 70, label_smoothing=0.0), "label_smoothing"),
    ("range-test steps", lambda: lr_find_record(1, 70, lr_find_iters=50), "lr_find_iters"),
    ("the JPEG copy", lambda: {**lr_find_record(1, 70), "std": [0.2452, 0.2428, 0.2606]}, "channel std"),
    ("a subset", lambda: {**lr_find_record(1, 70), "train_images": 10000}, "training images"),
    ("seed twice", lambda: lr_find_record(0, 66), "seed 0 appears twice"),
    ("a run with --max-lr", lambda: {**run_record(1, 70), "lr_find": None}, "holds no LR range test"),
    ("a benchmark record", lambda: {"train_images_per_s": 300.0}, "holds no LR range test"),
    ("a broken record", lambda: {**lr_find_record(1, 70), "config": "?"}, "is not a range-test or run record"),
]


@pytest.mark.parametrize("other, needle", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_inputs_of_another_configuration_are_refused_in_one_line(other, needle, tmp_path, capsys):
    first = write(tmp_path, "seed0.json", lr_find_record(0, 70))
    second = write(tmp_path, "other.json", other())
    code, out, err = cli_main(["lr-seeds", first, second, "--output", tmp_path / "o.json", "--figure", tmp_path / "f.png"],
                              capsys)
    assert code == 1 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and str(second) in err, err
    assert not (tmp_path / "o.json").exists()


def test_precision_and_paths_may_differ_but_one_seed_is_not_a_spread(tmp_path, capsys):
    bf16 = write(tmp_path, "a.json", lr_find_record(0, 70, precision="bf16"))
    record = lr_find_record(1, 70, precision="fp32")  # --precision fp32 given: the config says so too
    record["config"].update(precision="fp32", data_dir="/elsewhere/cifar10-official", device="cpu", workers=2)
    forced = write(tmp_path, "b.json", record)
    assert [r["precision"] for r in gather([bf16, forced])["seeds"]] == ["bf16", "fp32"]
    with pytest.raises(LRSeedsError, match="at least two seeds"):
        gather([bf16])


def test_the_outputs_go_under_runs_unless_named():
    """Like every command: results/ and images/ are written only when named (--output, --figure)."""
    from modular.tools.cli_args import build_parser

    args = build_parser().parse_args(["lr-seeds", "a.json", "b.json"])
    assert (args.output, args.figure) == ("runs/lr-seeds/lr-find-seeds.json", "runs/lr-seeds/lr_find_seeds.png")
