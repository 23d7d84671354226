"""Reliability: interruptions, broken or foreign checkpoints, missing data, bad configuration,
divergence, unwritable output and determinism. Cases about the command line run it in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    assert_clean_failure,
    cli_main,
    describe,
    error_lines,
    finish,
    live_group_members,
    read_until,
    run_cli,
    run_cli_many,
    shared_run,
    small_tree,
    start_cli,
    wait_for_epoch,
)
from writers import write_checkpoint

from modular import learner as learner_module
from modular.checkpoint import CHECKPOINT_FORMAT, RESUME_REQUIRED, CheckpointError, load_checkpoint
from modular.config import Config
from modular.learner import DivergenceError, Learner
from modular.tools import train_command
from modular.tools.record import without_timings
from modular.tools.synthetic import synthetic_cifar10

# 128 images, batch 32: 4 steps an epoch, about a second or two each epoch on a CPU
RUN3 = ["--epochs", "3", "--max-lr", "0.1", *FAST]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return small_tree(tmp_path_factory.mktemp("reliability") / "cifar10", n_train=128, n_test=40)


def train_args(tree: Path, out: Path, *extra) -> list[str]:
    return ["train", "--data-dir", str(tree), "--output-dir", str(out), *RUN3, *extra]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]} differ"


# --------------------------------------------------------------------------------------------
# a. kill -9 during training, then --resume
# --------------------------------------------------------------------------------------------

def test_kill9_then_resume_equals_an_uninterrupted_run(tree, tmp_path):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    reference = start_cli(train_args(tree, reference_dir))
    victim = start_cli(train_args(tree, killed_dir))
    try:
        wait_for_epoch(killed_dir / "checkpoint.pt", 1, victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(killed_dir / "checkpoint.pt")["epoch"]
    assert 1 <= at_kill < 3, "the run was not interrupted mid-training"
    assert not (killed_dir / "run.json").exists()

    resumed = run_cli(train_args(tree, killed_dir, "--resume"))
    assert resumed.returncode == 0, describe(resumed)
    assert [line for line in resumed.stdout.splitlines()                      # the checkpoint, and where it goes on
            if str(killed_dir / "checkpoint.pt") in line and f"epoch {at_kill} of 3" in line], describe(resumed)
    uninterrupted = finish(reference)
    assert uninterrupted.returncode == 0, describe(uninterrupted)

    got = json.loads((killed_dir / "run.json").read_text())
    want = json.loads((reference_dir / "run.json").read_text())
    assert [row["epoch"] for row in got["history"]] == [1, 2, 3]
    assert without_timings(got["history"]) == without_timings(want["history"])
    assert got["lr_per_step"] == want["lr_per_step"]
    for key in ("test_acc", "tta_test_acc", "confusion_matrix", "misclassified", "lr_max", "lr_min", "mean", "std"):
        assert got[key] == want[key], key
    # the code that ran it: at the start, and again at the resume
    assert [entry["from_epoch"] for entry in got["commit"]] == [0, at_kill]
    assert [entry["from_epoch"] for entry in want["commit"]] == [0]
    # and the machine: both parts here, on this CPU in fp32
    parts = [(p["from_epoch"], p["device"], p["precision"]) for p in got["ran_on"]]
    assert parts == [(0, "cpu", "fp32"), (at_kill, "cpu", "fp32")]
    assert got["ran_on"][0] == got["ran_on"][1] | {"from_epoch": 0} == want["ran_on"][0]

    mine, theirs = load_checkpoint(killed_dir / "checkpoint.pt"), load_checkpoint(reference_dir / "checkpoint.pt")
    assert mine["epoch"] == theirs["epoch"] == 3
    assert_same_tensors(mine["model"], theirs["model"], "final weights")
    momentum = {f"{k}": v["momentum_buffer"] for k, v in mine["optimizer"]["state"].items()}
    assert_same_tensors(momentum, {f"{k}": v["momentum_buffer"] for k, v in theirs["optimizer"]["state"].items()},
                        "SGD momentum")


# --------------------------------------------------------------------------------------------
# b. Ctrl-C during training
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sent, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_says_how_to_resume_and_keeps_the_checkpoint(tree, tmp_path, sent, code, word):
    out = tmp_path / "out"
    proc = start_cli(train_args(tree, out))
    try:
        wait_for_epoch(out / "checkpoint.pt", 1, proc)
        proc.send_signal(sent)
        result = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert f"\n{word}:" in result.stderr, describe(result)
    assert "--resume" in result.stderr, describe(result)
    assert str(out / "checkpoint.pt") in result.stderr, describe(result)

    state = load_checkpoint(out / "checkpoint.pt")
    assert 1 <= state["epoch"] < 3
    assert [row["epoch"] for row in state["history"]] == list(range(1, state["epoch"] + 1))
    from custom_resnet import CustomResNet
    CustomResNet().load_state_dict(state["model"])
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    # the command it prints finishes the run
    hint = result.stderr.split("resume with:", 1)[1].strip().splitlines()[0]
    argv = shlex.split(hint)
    assert argv[:3] == ["python", "-m", "modular"] and argv[-1] == "--resume"
    resumed = run_cli(argv[3:])
    assert resumed.returncode == 0, describe(resumed)
    record = json.loads((out / "run.json").read_text())
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3]


def test_sigterm_to_the_whole_process_group_of_a_run_with_workers(tree, tmp_path):
    """`timeout`, Slurm and `kill -- -PGID` signal every process of the job, DataLoader workers
    included. Signalled in epoch 2 (just after epoch 1's row is printed), the run stops as it does
    without workers: exit 143 with the resume line, no traceback from a worker killed under the
    main process, a checkpoint that loads, and no worker left behind (nor a hang at exit)."""
    out = tmp_path / "out"
    proc = start_cli(train_args(tree, out, "--workers", "2"), own_group=True)
    try:
        read_until(proc, lambda line: line.split()[:1] == ["1"])  # epoch 1's row: epoch 2 has begun
        os.killpg(proc.pid, signal.SIGTERM)
        result = finish(proc, timeout=120)
        deadline = time.monotonic() + 60
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not live_group_members(proc.pid), "DataLoader workers outlived the run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert result.returncode == 143, describe(result)
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, describe(result)
    stopped = [line for line in result.stderr.splitlines() if line.startswith("terminated:")]
    assert len(stopped) == 1 and str(out / "checkpoint.pt") in stopped[0] and "--resume" in stopped[0], describe(result)
    state = load_checkpoint(out / "checkpoint.pt", RESUME_REQUIRED)
    assert 1 <= state["epoch"] < 3
    from custom_resnet import CustomResNet
    CustomResNet().load_state_dict(state["model"])


def test_the_resume_hint_comes_from_mains_own_arguments(tree, tmp_path, monkeypatch, capsys):
    """main(argv) called from Python: the hint repeats argv, not the interpreter's sys.argv; the
    SIGTERM handler lives only while training."""
    from modular.tools import cli

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "train", stopped)
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "something-else"])
    before = signal.getsignal(signal.SIGTERM)
    argv = ["train", "--data-dir", str(tree), "--output-dir", str(tmp_path / "a b"), "--epochs", "3"]
    assert cli.main(argv) == 130
    hint = capsys.readouterr().err.split("resume with:", 1)[1].strip()
    assert shlex.split(hint) == ["python", "-m", "modular", *argv, "--resume"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_record_so_far_records_the_finished_epochs_and_resume_goes_on(tree, tmp_path, monkeypatch, capsys):
    """A run stopped after epoch 1 of 3: --record-so-far writes run.json (epoch 1 evaluated, "stopped"
    says so) and the plots without training; --resume then finishes the run, whose record replaces it."""
    out = tmp_path / "out"
    save = learner_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(learner_module, "save_checkpoint", save_then_stop)
    assert cli_main(train_args(tree, out), capsys)[0] == 130
    monkeypatch.undo()
    checkpoint = (out / "checkpoint.pt").read_bytes()
    code, stdout, err = cli_main(train_args(tree, out, "--record-so-far"), capsys)
    assert code == 0 and "train loss" not in stdout, err
    record = json.loads((out / "run.json").read_text())
    assert len(record["history"]) == 1 and record["stopped"]["after_epoch"] == 1, record.get("stopped")
    assert "--record-so-far" in record["stopped"]["reason"] and "epoch 1 of 3" in record["stopped"]["reason"]
    assert record["test_acc"] == pytest.approx(record["history"][0]["test_acc"])  # epoch 1's model, evaluated
    assert (out / "loss_accuracy.png").stat().st_size > 1000
    assert (out / "checkpoint.pt").read_bytes() == checkpoint  # nothing trained
    code, stdout, err = cli_main(train_args(tree, out, "--resume"), capsys)
    assert code == 0, err
    final = json.loads((out / "run.json").read_text())
    assert len(final["history"]) == 3 and "stopped" not in final
    assert without_timings(final["history"][:1]) == without_timings(record["history"])
    assert_one_line_error(*cli_main(train_args(tree, out, "--record-so-far"), capsys), 1,
                          str(out / "checkpoint.pt"), "--resume")
    assert_one_line_error(*cli_main(train_args(tree, tmp_path / "none", "--record-so-far"), capsys), 1,
                          str(tmp_path / "none" / "checkpoint.pt"), "--output-dir")


# --------------------------------------------------------------------------------------------
# Command-line failures. Each case runs in-process through modular.tools.cli.main (the function
# `python -m modular` calls), and one case of each kind also in a real subprocess; those
# subprocesses are started together, side by side, once for the module (each mostly imports torch).
# --------------------------------------------------------------------------------------------

def assert_one_line_error(code: int, out: str, err: str, expected_code: int, *needles: str) -> None:
    shown = f"\nexit {code}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}"
    assert code == expected_code, shown
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr" + shown
    if expected_code == 1:
        assert len(error_lines(err)) == 1 and err.startswith("error: "), shown
    assert "train loss" not in out, shown   # nothing was trained


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_cases")


def copy_checkpoint(finished, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(finished.checkpoint, where / "checkpoint.pt")
    return where / "checkpoint.pt"


def resume_args(finished, out: Path, *changes: str) -> list[str]:
    """The shared run's own flags with another --output-dir, ``changes`` appended (argparse: last wins)."""
    args = list(finished.args)
    args[args.index("--output-dir") + 1] = str(out)
    return [*args, *changes, "--resume"]


def broken_checkpoint(kind: str, finished, folder: Path) -> Path:
    """A checkpoint.pt in ``folder`` that cannot be used: truncated, garbage, empty or foreign."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pt"
    if kind == "truncated":
        data = finished.checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # a torch file, but not one of ours
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def other_model_checkpoint(kind: str, finished, path: Path) -> Path:
    """Same format, weights of another model: a 5-class head, or no layer3."""
    state = {k: v for k, v in load_checkpoint(finished.checkpoint).items() if k != "format"}
    model = dict(state["model"])
    if kind == "wrong shapes":
        model["fc.weight"], model["fc.bias"] = torch.zeros(5, 512), torch.zeros(5)
    else:
        model = {k: v for k, v in model.items() if not k.startswith("layer3")}
    return write_checkpoint({**state, "model": model}, path)


def broken_tree(kind: str, good: Path, base: Path) -> tuple[Path, str]:
    """(tree root, the path the error must name) for a malformed copy of ``good``."""
    from PIL import Image

    root = base / kind.replace(" ", "-")
    if kind == "missing folder":
        return root, str(root)
    if kind == "folder without CIFAR-10":
        root.mkdir(parents=True)
        return root, str(root)
    root = Path(shutil.copytree(good, root))
    if kind == "missing class":
        shutil.rmtree(root / "train" / "dog")
        return root, str(root / "train")
    if kind == "empty class":
        for f in (root / "test" / "cat").iterdir():
            f.unlink()
        return root, str(root / "test" / "cat")
    if kind == "16x16 image":
        Image.new("RGB", (16, 16), (10, 20, 30)).save(root / "train" / "bird" / "small.png")
        return root, str(root / "train" / "bird" / "small.png")
    if kind == "text file x.png":
        (root / "train" / "frog" / "x.png").write_text("this is not an image\n")
        return root, str(root / "train" / "frog" / "x.png")
    raise ValueError(kind)


TREE_KINDS = ["missing class", "empty class", "16x16 image", "text file x.png", "folder without CIFAR-10",
              "missing folder"]

# flags -> what the message must name: the setting (or its flag), what it allows, and the value given
BAD_CONFIGS = {
    "epochs 0": (["--epochs", "0"], ("epochs", "at least 1", "got 0")),
    "peak epoch 0": (["--epochs", "3", "--peak-epoch", "0"], ("peak epoch", "1..3", "got 0")),
    "peak epoch > epochs": (["--epochs", "3", "--peak-epoch", "4"], ("peak epoch", "1..3", "got 4")),
    "batch size 0": (["--batch-size", "0"], ("--batch-size",)),
    "max lr 0": (["--max-lr", "0"], ("max LR", "> 0", "got 0")),
    "max lr -1": (["--max-lr", "-1"], ("max LR", "> 0", "got -1")),
    "max lr inf": (["--max-lr", "inf"], ("max LR", "> 0", "got inf")),
    "device tpu": (["--device", "tpu"], ("--device",)),
    "optimizer foo": (["--optimizer", "foo"], ("--optimizer",)),
    "subset larger than the data": (["--subset", "1000"], ("--subset 1000",)),  # names the flag to change
    "lr-find-iters 5": (["--lr-find-iters", "5"], ("range test", "at least 20", "got 5")),
    "label smoothing 1": (["--label-smoothing", "1"], ("label smoothing", "[0, 1)", "got 1")),
    "label smoothing -0.1": (["--label-smoothing", "-0.1"], ("label smoothing", "[0, 1)", "got -0.1")),
    "label smoothing nan": (["--label-smoothing", "nan"], ("label smoothing", "[0, 1)", "got nan")),
    "logit scale 0": (["--logit-scale", "0"], ("logit scale", "> 0", "got 0")),
    "logit scale inf": (["--logit-scale", "inf"], ("logit scale", "> 0", "got inf")),
    "lr rule foo": (["--lr-rule", "foo"], ("--lr-rule",)),
    "seed -1": (["--seed", "-1"], ("seed", "0..4294967295", "got -1")),
}


@pytest.fixture(scope="module")
def good_tree(cases_dir) -> Path:
    return small_tree(cases_dir / "good", n_train=30, n_test=20)


@pytest.fixture(scope="module")
def blocker(cases_dir) -> Path:
    path = cases_dir / "somefile"
    path.write_text("a regular file, not a folder")
    return path


@pytest.fixture(scope="module")
def subprocess_cases(finished, cases_dir, good_tree, tree, blocker):
    """One real ``python -m modular`` run per kind of failure, all started together: name -> result."""
    empty_cwd = cases_dir / "empty-cwd"
    empty_cwd.mkdir()
    sub = cases_dir / "subprocess"
    truncated = broken_checkpoint("truncated", finished, sub / "truncated")
    other_config = copy_checkpoint(finished, sub / "other-config")
    wrong_model = other_model_checkpoint("wrong shapes", finished, sub / "wrong-model.pt")
    text_tree, _ = broken_tree("text file x.png", good_tree, sub)
    commands = {
        "offline stats": (["stats"], empty_cwd),
        "offline train": (["train", "--epochs", "1", "--max-lr", "0.1", *FAST], empty_cwd),
        "truncated checkpoint": (resume_args(finished, truncated.parent), None),
        "other configuration": (resume_args(finished, other_config.parent, "--batch-size", "64"), None),
        "other model": (["evaluate", "--checkpoint", wrong_model], None),
        "text file x.png": (["train", "--data-dir", text_tree, "--output-dir", sub / "out-text", "--epochs", "1",
                             *FAST], None),
        "epochs 0": (["train", "--data-dir", tree, "--output-dir", sub / "out-epochs", "--epochs", "0"], None),
        "device tpu": (["train", "--data-dir", tree, "--output-dir", sub / "out-tpu", "--device", "tpu"], None),
        "unwritable": (["train", "--data-dir", tree, "--output-dir", blocker / "sub", "--epochs", "1", *FAST], None),
    }
    started = time.monotonic()
    results = {}
    for cwd in {cwd for _, cwd in commands.values()}:
        names = [name for name, (_, c) in commands.items() if c == cwd]
        for name, result in zip(names, run_cli_many([commands[n][0] for n in names], cwd=cwd, parallel=5)):
            results[name] = result
    results["seconds"] = time.monotonic() - started
    results["paths"] = {"truncated": truncated, "other config": other_config, "wrong model": wrong_model,
                        "text": text_tree / "train" / "frog" / "x.png", "empty cwd": empty_cwd}
    return results


# --------------------------------------------------------------------------------------------
# c. broken, foreign and half-written checkpoints
# --------------------------------------------------------------------------------------------

def test_cli_resume_from_a_truncated_checkpoint(subprocess_cases):
    result = subprocess_cases["truncated checkpoint"]
    stderr = assert_clean_failure(result, 1, str(subprocess_cases["paths"]["truncated"]), "cannot read checkpoint")
    assert len(error_lines(stderr)) == 1 and stderr.startswith("error: "), describe(result)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "foreign"])
def test_resume_from_an_unreadable_checkpoint(kind, finished, tmp_path, capsys):
    path = broken_checkpoint(kind, finished, tmp_path / "out")
    code, out, err = cli_main(resume_args(finished, path.parent), capsys)
    assert_one_line_error(code, out, err, 1, str(path), "delete it to start over", "--output-dir")  # the file, the fix
    assert "PytorchStreamReader" not in err and "zip" not in err  # torch's words about its archive say nothing here


def test_cli_resume_with_another_configuration(subprocess_cases):
    result = subprocess_cases["other configuration"]
    stderr = assert_clean_failure(result, 1, str(subprocess_cases["paths"]["other config"]), "another configuration",
                                  "batch_size")
    assert len(error_lines(stderr)) == 1, describe(result)


@pytest.mark.parametrize("changes, field", [(["--batch-size", "64"], "batch_size"), (["--epochs", "3"], "epochs"),
                                            (["--seed", "1"], "seed"), (["--max-lr", "0.3"], "max_lr")])
def test_resume_with_another_configuration(changes, field, finished, tmp_path, capsys):
    path = copy_checkpoint(finished, tmp_path / "out")
    before = path.read_bytes()
    code, out, err = cli_main(resume_args(finished, path.parent, *changes), capsys)
    assert_one_line_error(code, out, err, 1, str(path), "another configuration", field, changes[1])
    assert path.read_bytes() == before


def test_existing_checkpoint_without_resume_is_not_overwritten(finished, tmp_path, capsys):
    path = copy_checkpoint(finished, tmp_path / "out")
    before = path.read_bytes()
    code, out, err = cli_main(resume_args(finished, path.parent)[:-1], capsys)  # no --resume
    assert_one_line_error(code, out, err, 1, str(path), "--resume")
    assert path.read_bytes() == before


def test_cli_evaluate_a_checkpoint_of_another_model(subprocess_cases):
    result = subprocess_cases["other model"]
    stderr = assert_clean_failure(result, 1, str(subprocess_cases["paths"]["wrong model"]), "weights of another model")
    assert len(error_lines(stderr)) == 1, describe(result)
    assert "test accuracy" not in result.stdout


@pytest.mark.parametrize("kind", ["wrong shapes", "missing keys", "truncated", "no file"])
def test_evaluate_rejects_unusable_checkpoints(kind, finished, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if kind in ("wrong shapes", "missing keys"):
        other_model_checkpoint(kind, finished, path)
        needle = "weights of another model"
    elif kind == "truncated":
        path.write_bytes(finished.checkpoint.read_bytes()[:100_000])
        needle = "cannot read checkpoint"
    else:
        needle = "no checkpoint"
    code, out, err = cli_main(["evaluate", "--checkpoint", path], capsys)
    assert_one_line_error(code, out, err, 1, str(path), needle)
    assert "test accuracy" not in out


def test_evaluate_a_checkpoint_without_run_facts(finished, tmp_path, capsys):
    state = {k: v for k, v in load_checkpoint(finished.checkpoint).items() if k not in ("format", "mean", "std")}
    path = write_checkpoint(state, tmp_path / "no-facts.pt")
    code, out, err = cli_main(["evaluate", "--checkpoint", path], capsys)
    assert code == 0 and "test accuracy" in out, err


def minimal_state(epoch: int) -> dict:
    return {"model": {"w": torch.full((1000,), float(epoch))}, "optimizer": {}, "scheduler": {}, "epoch": epoch,
            "history": [{"epoch": e} for e in range(1, epoch + 1)], "config": Config().to_dict()}


@pytest.mark.parametrize("crash", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, crash):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(minimal_state(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise crash

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(type(crash)):
        write_checkpoint(minimal_state(2), path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "a temporary file was left behind"
    write_checkpoint(minimal_state(2), path)  # and the next save works
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_saving_removes_a_dead_writers_leftover_but_not_a_live_writers_file(tmp_path):
    """Temporary files are named by host and pid: on a folder shared by machines (Google Drive reused
    from another Colab VM) another machine's pid means nothing here."""
    from modular.robust import FOREIGN_TMP_STALE_SECONDS, host_tag

    path = tmp_path / "checkpoint.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here, there, alive = host_tag(), f"other-{host_tag()}", os.getppid()
    files = {
        "orphan": f".checkpoint.pt.{here}.{dead.pid}.abc123.tmp",       # a writer here, killed mid-write
        "writing": f".checkpoint.pt.{here}.{alive}.def456.tmp",          # another live process here, still writing
        "writing elsewhere": f".checkpoint.pt.{there}.{dead.pid}.ghi789.tmp",  # live on another VM, its pid not ours
        "dead VM": f".checkpoint.pt.{there}.{alive}.jkl012.tmp",        # a dead VM's, its pid alive here by chance
        "old name": f".checkpoint.pt.{dead.pid}.mno345.tmp",             # written before names held the host
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"half")
    long_ago = time.time() - FOREIGN_TMP_STALE_SECONDS - 60
    os.utime(tmp_path / files["dead VM"], (long_ago, long_ago))
    write_checkpoint(minimal_state(1), path)
    left = {what for what, name in files.items() if (tmp_path / name).exists()}
    assert left == {"writing", "writing elsewhere", "old name"}
    assert sorted(p.name for p in tmp_path.glob(".checkpoint.pt.*.tmp")) == sorted(files[w] for w in left)  # ours renamed


T4_START = {"from_epoch": 0, "device": "cuda", "precision": "fp16", "channels_last": True, "hardware": "Tesla T4"}


@pytest.mark.parametrize("first_part", [None, T4_START], ids=["checkpoint from before parts were kept", "begun on a T4"])
def test_a_resumed_runs_record_keeps_every_parts_hardware_and_precision(first_part, finished, tmp_path, capsys):
    """The finished shared run's checkpoint, resumed here (nothing left to train: it is evaluated and
    recorded): the record lists the parts. One begun in fp16 on a T4 and finished here in fp32 is
    refused by `report`, in one line; an old checkpoint without parts still resumes."""
    state = {k: v for k, v in load_checkpoint(finished.checkpoint).items() if k not in ("format", "ran_on")}
    assert "ran_on" in load_checkpoint(finished.checkpoint)
    out = tmp_path / "out"
    write_checkpoint({**state, **({"ran_on": [first_part]} if first_part else {})}, out / "checkpoint.pt")
    code, _, err = cli_main(resume_args(finished, out), capsys)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    here = {"from_epoch": 2, "device": "cpu", "precision": "fp32", "channels_last": True, "hardware": record["hardware"]}
    assert record["ran_on"] == ([first_part] if first_part else []) + [here]
    assert [entry["from_epoch"] for entry in record["commit"]] == [0, 2]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    code, _, err = cli_main(["report", out / "run.json", "--readme", readme], capsys)
    if first_part is None:
        assert code == 0 and "| Hardware |" in readme.read_text(), err
    else:
        assert_one_line_error(code, "", err, 1, str(out / "run.json"), "resumed on other hardware or precision",
                              "from epoch 0: Tesla T4, cuda, fp16", f"from epoch 2: {record['hardware']}, cpu, fp32")


@pytest.mark.parametrize("key", ["rng", "lr_per_step", "lr_max", "mean", "std"])
def test_resuming_a_checkpoint_without_what_resume_reads_is_a_one_line_error(key, tmp_path, capsys):
    from modular.checkpoint import RESUME_REQUIRED

    state = {**minimal_state(1), "rng": {}, "lr_per_step": [], "lr_max": 0.4, "lr_min": 0.004, "mean": [0.5] * 3,
             "std": [0.25] * 3}
    assert set(RESUME_REQUIRED) - {"format"} <= set(state)
    del state[key]
    path = write_checkpoint(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError) as caught:  # the file, what it lacks, and the flag to start elsewhere
        load_checkpoint(path, RESUME_REQUIRED)
    message = str(caught.value)
    assert str(path) in message and key in message.replace(str(path), "") and "--output-dir" in message
    assert load_checkpoint(path)["epoch"] == 1  # evaluate needs less, and still reads it


def test_saved_checkpoint_is_tagged_and_readable_by_others(tmp_path):
    path = write_checkpoint(minimal_state(1), tmp_path / "sub" / "checkpoint.pt")
    assert (path.stat().st_mode & 0o777) == 0o644
    assert torch.load(path, weights_only=True)["format"] == CHECKPOINT_FORMAT


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError) as missing:
        load_checkpoint(tmp_path / "missing.pt")
    assert str(tmp_path / "missing.pt") in str(missing.value)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(bad)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# d. no data: offline without --data-dir, and malformed image trees
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["offline stats", "offline train"])
def test_cli_offline_without_data_dir_names_the_flag(name, subprocess_cases):
    result = subprocess_cases[name]
    stderr = assert_clean_failure(result, 1, "--data-dir", "could not download CIFAR-10")
    assert len(error_lines(stderr)) == 1, describe(result)
    assert "train loss" not in result.stdout


def test_cli_tree_with_a_text_file_named_png(subprocess_cases):
    result = subprocess_cases["text file x.png"]
    stderr = assert_clean_failure(result, 1, str(subprocess_cases["paths"]["text"]), "not a readable image")
    assert len(error_lines(stderr)) == 1, describe(result)


@pytest.mark.parametrize("command", ["train", "stats"])
@pytest.mark.parametrize("kind", TREE_KINDS)
def test_malformed_tree_fails_naming_the_path(kind, command, good_tree, tmp_path, capsys):
    root, where = broken_tree(kind, good_tree, tmp_path)
    args = ["stats", "--data-dir", root] if command == "stats" else \
        ["train", "--data-dir", root, "--output-dir", tmp_path / "out", "--epochs", "1", "--max-lr", "0.1", *FAST]
    assert_one_line_error(*cli_main(args, capsys), 1, where)


# --------------------------------------------------------------------------------------------
# e. bad configuration: exit 2 with a message
# --------------------------------------------------------------------------------------------

def assert_error_line_names(err: str, named) -> None:
    """argparse's one "error:" line (below its usage, which names every flag) holds everything in ``named``."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(part in errors[0] for part in named), err


@pytest.mark.parametrize("name", ["epochs 0", "device tpu"])
def test_cli_bad_configuration_exits_2(name, subprocess_cases):
    stderr = assert_clean_failure(subprocess_cases[name], 2, "error:", "usage:")
    assert_error_line_names(stderr, BAD_CONFIGS[name][1])


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_configuration_exits_2_with_a_message(name, tree, tmp_path, capsys):
    flags, named = BAD_CONFIGS[name]
    out_dir = tmp_path / "out"
    code, out, err = cli_main(["train", "--data-dir", tree, "--output-dir", out_dir, *flags], capsys)
    assert_one_line_error(code, out, err, 2, "error:")
    assert_error_line_names(err, named)
    assert not (out_dir / "checkpoint.pt").exists()


def test_a_seed_outside_numpys_range_is_a_configuration_error():
    from modular.config import ConfigError

    for seed in (-1, 2**32):
        with pytest.raises(ConfigError) as caught:
            Config(seed=seed).validate()
        assert all(part in str(caught.value) for part in ("seed", "0..4294967295", f"got {seed}")), caught.value
    Config(seed=2**32 - 1).validate()


# --------------------------------------------------------------------------------------------
# f. divergence
# --------------------------------------------------------------------------------------------

def test_cli_divergence_stops_the_run_with_a_clear_message(tree, tmp_path):
    out = tmp_path / "out"
    result = run_cli(["train", "--data-dir", tree, "--output-dir", out, "--max-lr", "1e4", "--epochs", "2", *FAST])
    stderr = assert_clean_failure(result, 1, "NaN", "epoch 1, step", "--max-lr")
    assert len(error_lines(stderr)) == 1, describe(result)
    # a diverged run is a result: its record says where it stopped (here in epoch 1: nothing to evaluate)
    record = json.loads((out / "run.json").read_text())
    assert record["stopped"]["after_epoch"] == 0 and "epoch 1, step" in record["stopped"]["reason"]
    assert record["history"] == [] and "test_acc" not in record and record["lr_max"] == 1e4


def test_a_run_that_diverges_after_a_finished_epoch_records_that_epoch_evaluated(tmp_path, monkeypatch):
    wrap_train_one_epoch(monkeypatch, nan_loss_in_epoch_2)
    cfg = Config(batch_size=32, epochs=3, max_lr=0.1, device="cpu", precision="fp32", output_dir=str(tmp_path))
    with pytest.raises(DivergenceError, match=r"epoch 2, step 1"):
        train_command.train(cfg, data=synthetic_cifar10(n_train=64, n_test=20, seed=4), log=lambda *_: None)
    record = json.loads((tmp_path / "run.json").read_text())
    assert set(record["stopped"]) == {"reason", "after_epoch"} and record["stopped"]["after_epoch"] == 1
    assert "epoch 2, step 1" in record["stopped"]["reason"] and "--max-lr" in record["stopped"]["reason"]
    assert [row["epoch"] for row in record["history"]] == [1]
    # the last finished epoch's weights, evaluated again: the same accuracy as its own epoch row
    assert record["test_acc"] == pytest.approx(record["history"][0]["test_acc"])
    assert (tmp_path / "loss_accuracy.png").exists()


def fit_small(cfg: Config, seed: int = 4):
    return Learner(cfg, synthetic_cifar10(n_train=64, n_test=20, seed=seed), log=lambda *_: None).fit_one_cycle()


def nan_loss_in_epoch_2(epoch, model, criterion):
    """For ``wrap_train_one_epoch``: from epoch 2 on, every loss is NaN."""
    if epoch == 2:
        return lambda logits, targets: criterion(logits, targets) * float("nan")


def wrap_train_one_epoch(monkeypatch, change):
    """Replace learner.train_one_epoch by one whose criterion is ``change(epoch, model, criterion)`` (if not None)."""
    real = learner_module.train_one_epoch

    def wrapped(model, criterion, optimizer, scheduler, scaler, batches, runtime, epoch, *args, **kwargs):
        criterion = change(epoch, model, criterion) or criterion
        return real(model, criterion, optimizer, scheduler, scaler, batches, runtime, epoch, *args, **kwargs)

    monkeypatch.setattr(learner_module, "train_one_epoch", wrapped)


def test_nan_in_epoch_2_keeps_the_epoch_1_checkpoint(tmp_path, monkeypatch):
    wrap_train_one_epoch(monkeypatch, nan_loss_in_epoch_2)
    cfg = Config(batch_size=32, epochs=2, max_lr=0.1, device="cpu", precision="fp32", output_dir=str(tmp_path))
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(DivergenceError, match=r"epoch 2, step 1\b"):
        fit_small(cfg)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and [row["epoch"] for row in state["history"]] == [1]
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_nan_test_loss_stops_the_run_and_is_not_checkpointed(tmp_path, monkeypatch):
    real_predict = learner_module.predict

    def predict_with_spoiled_stats(model, loader, runtime, criterion=None, flip_tta=False):
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(float("nan"))   # what exploding activations do to the running statistics
        return real_predict(model, loader, runtime, criterion, flip_tta)

    monkeypatch.setattr(learner_module, "predict", predict_with_spoiled_stats)
    cfg = Config(batch_size=32, epochs=2, max_lr=0.1, device="cpu", precision="fp32", output_dir=str(tmp_path))
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(DivergenceError):
        fit_small(cfg)
    assert not path.exists() or all(math.isfinite(row["test_loss"]) for row in load_checkpoint(path)["history"])


# --------------------------------------------------------------------------------------------
# g. an output directory that cannot be written
# --------------------------------------------------------------------------------------------

def test_cli_unwritable_output_dir_fails_before_training(subprocess_cases, blocker):
    result = subprocess_cases["unwritable"]
    stderr = assert_clean_failure(result, 1, "cannot write to --output-dir", str(blocker))
    assert len(error_lines(stderr)) == 1, describe(result)
    assert "LR range test" not in result.stdout and "train loss" not in result.stdout
    assert blocker.read_text() == "a regular file, not a folder"


@pytest.mark.parametrize("command", ["train", "lr-find"])
@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_unwritable_output_dir(command, where, tree, blocker, capsys):
    out_dir = blocker / "sub" if where == "under a file" else blocker
    args = [command, "--data-dir", tree, "--output-dir", out_dir, "--lr-find-iters", "20", *FAST]
    code, out, err = cli_main(args, capsys)
    assert_one_line_error(code, out, err, 1, "cannot write to --output-dir", str(out_dir))
    assert "LR range test" not in out
    assert blocker.read_text() == "a regular file, not a folder"


# --------------------------------------------------------------------------------------------
# h. determinism on the CPU in fp32
# --------------------------------------------------------------------------------------------

def fit_history(seed: int, out: Path) -> tuple[list[dict], dict]:
    cfg = Config(batch_size=32, epochs=2, max_lr=0.1, device="cpu", precision="fp32", seed=seed, output_dir=str(out))
    result = Learner(cfg, synthetic_cifar10(n_train=96, n_test=30, seed=5), log=lambda *_: None).fit_one_cycle()
    return without_timings(result.history), result.model.state_dict()


def test_same_seed_same_history_other_seed_different(tmp_path):
    first, first_weights = fit_history(0, tmp_path / "a")
    second, second_weights = fit_history(0, tmp_path / "b")
    other, _ = fit_history(1, tmp_path / "c")
    assert first == second
    assert_same_tensors(first_weights, second_weights, "weights of two runs with seed 0")
    assert other != first

