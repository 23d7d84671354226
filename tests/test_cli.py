"""``python -m modular``: help, stats, evaluate and lr-find in subprocesses."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import FAST, ROOT, SHARED_N_TEST, SHARED_N_TRAIN, cli_main, describe, run_cli_many, shared_run, shared_tree

from modular.config import CIFAR10_CLASSES

SUBCOMMANDS = ["train", "lr-find", "evaluate", "stats", "bench", "report", "lr-seeds"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every command of this file, started side by side once: name -> CompletedProcess."""
    run = shared_run(tmp_path_factory)
    tree = shared_tree(tmp_path_factory)
    lr_out = tmp_path_factory.mktemp("lr_find") / "out"
    commands = {
        "lr-find": ["lr-find", "--data-dir", tree, "--output-dir", lr_out, "--lr-find-iters", "20", *FAST],
        "evaluate": ["evaluate", "--checkpoint", run.checkpoint],
        "stats": ["stats", "--data-dir", tree],
        "help": ["--help"],
        "help train": ["train", "--help"],
    }
    done = dict(zip(commands, run_cli_many(list(commands.values()), parallel=5)))
    done["lr-find out"] = lr_out
    done["run"] = run
    return done


def test_help(results):
    result = results["help"]
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("usage: python -m modular")
    for name in SUBCOMMANDS:
        assert name in result.stdout
    assert result.stderr == ""


def test_cli_subcommand_help(results):
    result = results["help train"]
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("usage: python -m modular train"), describe(result)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name, capsys):
    code, out, err = cli_main([name, "--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"usage: python -m modular {name}"), out
    assert err == ""


def test_no_subcommand_is_a_usage_error(capsys):
    code, out, err = cli_main([], capsys)
    assert code == 2 and "usage:" in err and out == ""


@pytest.mark.parametrize("argv, usage", [(["train", "--bogus-flag"], "train"), (["lr-find", "--epochs", "3"], "lr-find"),
                                         (["app", "--port", "-1"], "app"), (["app", "--port", "99999"], "app")])
def test_a_bad_flag_gets_its_commands_usage_and_exit_2(argv, usage, capsys):
    """Not the top level's usage (which lists no flags) and never a traceback (a port outside 1..65535 once
    reached the socket's bind and ended in an OverflowError)."""
    code, out, err = cli_main(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: python -m modular {usage}") and argv[1] in err and "Traceback" not in err


def test_train_help_lists_the_documented_flags(results):
    text = results["help train"].stdout
    for flag in ("--data-dir", "--epochs", "--batch-size", "--max-lr", "--peak-epoch", "--resume", "--output-dir",
                 "--device", "--precision", "--seed", "--subset", "--test-subset", "--lr-find-end", "--lr-find-iters",
                 "--optimizer", "--label-smoothing", "--logit-scale", "--lr-rule"):
        assert flag in text, flag


def test_the_workers_help_says_what_the_default_does(monkeypatch, capsys, tmp_path):
    """On a GPU every usable core but one, at least 1, with no cap (a 16-core machine gets 15); the
    usable cores are the affinity mask's, not os.cpu_count()'s (Colab, containers, Slurm)."""
    import os

    import torch

    from modular import loaders
    from modular.tools.cli_args import DEFAULT_WORKERS

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's count: must not be used
    monkeypatch.setattr(loaders, "usable_cpus", lambda usable=loaders.usable_cpus: usable(str(tmp_path / "no-cgroup")))
    for cores, workers in ((1, 1), (2, 1), (3, 2), (16, 15)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)), raising=False)
        assert loaders.default_workers(torch.device("cuda")) == workers
        assert loaders.default_workers(torch.device("cpu")) == 0
    for command in ("train", "lr-find"):
        out = " ".join(cli_main([command, "--help"], capsys)[1].split())
        assert f"--workers WORKERS DataLoader workers (default: {DEFAULT_WORKERS})" in out
    assert "at least 1" in DEFAULT_WORKERS and "less one" in DEFAULT_WORKERS and "usable" in DEFAULT_WORKERS


@pytest.mark.parametrize("cpu_max, usable", [("max 100000\n", 8), ("200000 100000\n", 2), ("150000 100000\n", 2),
                                             ("50000 100000\n", 1), ("2000000 100000\n", 8), ("garbled", 8)])
def test_a_cgroup_cpu_quota_lowers_the_usable_cores(monkeypatch, tmp_path, cpu_max, usable):
    """docker --cpus 2 on an 8-core host: the affinity mask still shows 8 cores, cgroup v2's cpu.max says 2."""
    import os

    from modular.loaders import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert usable_cpus(str(tmp_path / "cpu.max")) == usable
    assert usable_cpus(str(tmp_path / "missing")) == 8


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_ablation_flags_reach_the_config(command):
    from modular.tools.cli_args import build_parser, config_from_args

    args = build_parser().parse_args([command, "--label-smoothing", "0", "--logit-scale", "1", "--lr-rule", "steepest"])
    cfg = config_from_args(args)
    assert (cfg.label_smoothing, cfg.logit_scale, cfg.lr_rule) == (0.0, 1.0, "steepest")
    defaults = config_from_args(build_parser().parse_args([command]))
    assert (defaults.label_smoothing, defaults.logit_scale, defaults.lr_rule) == (0.2, 0.125, "minimum")


def test_stats_prints_the_counts_table(results, tmp_path_factory):
    from modular.data import channel_stats, load_cifar10

    result = results["stats"]
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert f"images: {SHARED_N_TRAIN} train, {SHARED_N_TEST} test" in lines
    assert re.match(r"class\s+train\s+test$", lines[2])
    for name in CIFAR10_CLASSES:
        assert re.search(rf"^{name}\s+{SHARED_N_TRAIN // 10}\s+{SHARED_N_TEST // 10}$", result.stdout, re.M), name
    mean, std = channel_stats(load_cifar10(shared_tree(tmp_path_factory)).train_images)
    for channel, m, s in zip("RGB", mean, std):
        assert re.search(rf"^{channel}\s+{m:.4f}\s+{s:.4f}$", result.stdout, re.M), channel


def test_evaluate_prints_the_test_accuracy_of_the_checkpoint(results):
    result, record = results["evaluate"], results["run"].record
    assert result.returncode == 0, describe(result)
    assert "epoch 2 of 2" in result.stdout
    assert f"test accuracy {record['test_acc']:.2f}%" in result.stdout, describe(result)
    assert f"flip TTA {record['tta_test_acc']:.2f}%" in result.stdout
    for name in CIFAR10_CLASSES:
        assert re.search(rf"^\s+{name}\s+{record['per_class_acc'][name]:.2f}%$", result.stdout, re.M), name


def test_lr_find_writes_its_json_and_plot(results, tmp_path_factory):
    result, out = results["lr-find"], results["lr-find out"]
    assert result.returncode == 0, describe(result)
    record = json.loads((out / "lr_find.json").read_text())
    assert record["config"]["lr_find_iters"] == 20 and record["seed"] == 0 and record["precision"] == "fp32"
    assert record["data_source"] and record["hardware"] and record["commit"][0]["from_epoch"] == 0
    assert record["data_source"] == record["config"]["data_dir"] == shared_tree(tmp_path_factory).name  # no absolute path
    assert record["config"]["output_dir"] == out.name
    found = record["lr_find"]
    assert {"lrs", "losses", "lr_max", "lr_min", "steepest_lr", "rule"} <= set(found)
    assert found["lr_max"] > found["lr_min"] > 0
    assert found["lr_min"] == pytest.approx(found["lr_max"] / 100)
    assert len(found["lrs"]) == len(found["losses"]) <= 20
    assert found["lr_max"] in found["lrs"]
    assert np.all(np.diff(found["lrs"]) > 0)
    png = (out / "lr_range_test.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert f"LRMAX {found['lr_max']:.4g}" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_quick_paths_flags_reach_the_config():
    from modular.tools.cli_args import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--subset", "1000", "--test-subset", "500"]))
    assert (cfg.subset, cfg.test_subset) == (1000, 500)
    assert config_from_args(build_parser().parse_args(["train"])).test_subset is None  # all test images by default


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`python -m modular lr-seeds ... | head -1`: the pipe closes while the table is printed."""
    import subprocess
    import sys

    records = [str(ROOT / "results" / name) for name in ("adam-valley-left-seed0.json", "lr-find-adam-seed1.json")]
    command = [sys.executable, "-m", "modular", "lr-seeds", *records, "--output", str(tmp_path / "o.json"),
               "--figure", str(tmp_path / "f.png")]
    reader = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # the reader leaves before the first line
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 1 and stderr == "", stderr
