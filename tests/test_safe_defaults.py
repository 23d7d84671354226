"""No command overwrites a tracked file (the shipped weights, images/, README.md) unless it is named;
a run record is annotated only by its own run's final checkpoint; ``--help`` shows every default."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
from helpers import cli_main, shared_run
from writers import write_checkpoint

from modular.checkpoint import load_checkpoint
from modular.tools.cli_args import ShowDefaults, build_parser


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture
def own_run(run, tmp_path):
    """A private copy of the shared run's folder (checkpoint.pt, run.json) under tmp_path/run."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(run.checkpoint, folder / "checkpoint.pt")
    shutil.copy(run.output_dir / "run.json", folder / "run.json")
    return folder


def files_under(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# defaults write into the run's own folder
# --------------------------------------------------------------------------------------------

def test_export_weights_without_output_writes_into_the_runs_folder(own_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where the old default, results/custom_resnet_cifar10.pt, would land
    code, out, err = cli_main(["export-weights", "--checkpoint", own_run / "checkpoint.pt"], capsys)
    assert code == 0, err
    assert files_under(tmp_path) == {"run/checkpoint.pt", "run/run.json", "run/custom_resnet_cifar10.pt"}
    assert str(own_run / "custom_resnet_cifar10.pt") in out


def test_gradcam_without_output_writes_into_the_runs_folder_or_runs(run, own_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where the old default, images/gradcam_misclassified.png, would land
    code, _, err = cli_main(["gradcam", "--checkpoint", own_run / "checkpoint.pt"], capsys)
    assert code == 0, err
    code, _, err = cli_main(["export-weights", "--checkpoint", own_run / "checkpoint.pt", "--output", "w.pt"], capsys)
    assert code == 0, err
    code, _, err = cli_main(["gradcam", "--weights", "w.pt", "--data-dir", run.tree], capsys)
    assert code == 0, err
    assert files_under(tmp_path) == {"run/checkpoint.pt", "run/run.json", "run/gradcam_misclassified.png", "w.pt",
                                     "runs/w/gradcam_misclassified.png"}


def test_report_prints_and_writes_the_readme_only_when_named(run, tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# T\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    monkeypatch.chdir(tmp_path)
    record = run.output_dir / "run.json"
    code, out, err = cli_main(["report", record], capsys)
    assert code == 0, err
    assert readme.read_text().endswith("old\n<!-- results:end -->\n")  # untouched
    assert f"| Test accuracy at epoch {run.cfg.epochs} |" in out and "--readme README.md" in out
    code, out, err = cli_main(["report", record, "--readme", "README.md"], capsys)
    assert code == 0, err
    assert "old" not in readme.read_text() and f"report {record} --readme README.md`" in readme.read_text()


def test_bench_writes_under_runs_unless_told():
    assert build_parser().parse_args(["bench"]).output_dir == "runs/bench"


# --------------------------------------------------------------------------------------------
# a record is annotated only by its own run's final checkpoint
# --------------------------------------------------------------------------------------------

def another_runs_checkpoint(kind: str, own_run) -> tuple:
    state = {k: v for k, v in load_checkpoint(own_run / "checkpoint.pt").items() if k != "format"}
    if kind == "another seed":
        state["config"] = {**state["config"], "seed": 7}
        needle = "seed: 7 != 0"
    elif kind == "another configuration":
        state["config"] = {**state["config"], "label_smoothing": 0.0}
        needle = "label_smoothing"
    elif kind == "not the final epoch":
        state["epoch"], state["history"] = 1, state["history"][:1]
        needle = "epoch 1, while the run ended at epoch 2"
    else:  # the same configuration and seed, run again: its history differs
        state["history"] = [{**row, "test_acc": row["test_acc"] + 1} for row in state["history"]]
        needle = "another run of the same configuration"
    return write_checkpoint(state, own_run.parent / "other" / "checkpoint.pt"), needle


@pytest.mark.parametrize("kind", ["another seed", "another configuration", "not the final epoch", "another run"])
def test_export_refuses_to_note_another_runs_checkpoint_in_a_record(kind, own_run, capsys):
    other, needle = another_runs_checkpoint(kind, own_run)
    record = own_run / "run.json"
    before = record.read_text()
    output = own_run.parent / "w.pt"
    code, out, err = cli_main(["export-weights", "--checkpoint", other, "--record", record, "--output", output], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and str(record) in err and "without --record" in err, err
    assert record.read_text() == before and not output.exists()


def test_export_notes_its_own_runs_final_checkpoint(own_run, capsys):
    record = own_run / "run.json"
    code, _, err = cli_main(["export-weights", "--checkpoint", own_run / "checkpoint.pt", "--record", record], capsys)
    assert code == 0, err
    assert json.loads(record.read_text())["weights"]["file"] == "custom_resnet_cifar10.pt"


# --------------------------------------------------------------------------------------------
# --help shows every default, one way
# --------------------------------------------------------------------------------------------

def options(parser: argparse.ArgumentParser):
    """(subcommand, option) for every option whose value has a default to show: not -h, not a
    switch, not required (alone or as one of a required group)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        required = {a for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in sub._actions:
            if (action.option_strings and not isinstance(action, argparse._HelpAction) and not action.required
                    and action not in required and not isinstance(action.default, bool)):
                yield name, sub, action


def test_every_option_shows_its_default_once():
    parser = build_parser()
    missing, twice = [], []
    for name, sub, action in options(parser):
        shown = sub._get_formatter()._get_help_string(action)
        count = shown.count("(default:")
        (missing if count == 0 else twice if count > 1 else []).append(f"{name} {action.option_strings[0]}")
    assert not missing, f"no default shown: {missing}"
    assert not twice, f"default shown twice: {twice}"


@pytest.mark.parametrize("command, shown", [
    ("export-weights", "(default: custom_resnet_cifar10.pt in the checkpoint's folder)"),
    ("gradcam", "(default: gradcam_misclassified.png in"),
    ("train", "(default: runs/default)"),
    ("train", "(default: 0.2)"),          # --label-smoothing, through the formatter like every other
    ("report", "(default: print them, write nothing)"),
])
def test_help_shows_the_defaults(command, shown, capsys):
    code, out, _ = cli_main([command, "--help"], capsys)
    assert code == 0 and shown in " ".join(out.split()), out


def test_every_parser_uses_the_one_formatter():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {type(p._get_formatter()) for p in [parser, *subparsers.choices.values()]} == {ShowDefaults}
