"""Progress where the user looks: lines in logs for the range test, each epoch and the evaluation;
``evaluate`` says what it used; a log file sees each line when it is printed."""

from __future__ import annotations

import re
import subprocess

import pytest
from helpers import FAST, PYTHON, ROOT, cli_env, cli_main, shared_run, small_tree, wait_for_epoch

from modular import progress
from modular.config import Config
from modular.learner import Learner
from modular.progress import ProgressLines
from modular.tools.synthetic import synthetic_cifar10
from modular.tools.train_command import describe_range_test, train

LINE = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<percent>\d+)%\), .+ so far, about .+ left")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def every_line(monkeypatch):
    """Lines at every 10% with no wait, so short test loops show them."""
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)


def test_a_line_every_ten_percent_once_ten_seconds_passed_and_never_for_the_last():
    clock, lines = Clock(), []
    shown = ProgressLines("LR range test", 100, "steps", lines.append, clock=clock)
    for done in range(1, 101):
        clock.now += 2.0  # 2 s a step: 10% (10 steps) takes 20 s
        shown.update(done)
    assert [int(LINE.match(line)["done"]) for line in lines] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert lines[0] == "LR range test: 10/100 steps (10%), 20 s so far, about 3.0 min left"


def test_a_fast_loop_prints_nothing_and_a_slow_step_still_prints_every_30_seconds():
    clock, lines = Clock(), []
    fast = ProgressLines("evaluation", 20, "batches", lines.append, clock=clock)
    for done in range(1, 21):
        clock.now += 0.1
        fast.update(done)
    assert lines == []
    slow = ProgressLines("epoch 1", 1000, "steps", lines.append, clock=clock)
    for done in range(1, 11):
        clock.now += 12.0  # 1% a step every 12 s: a line at least every 30 s
        slow.update(done)
    assert [int(LINE.match(line)["done"]) for line in lines] == [3, 6, 9]


def test_in_a_notebook_printed_lines_take_one_output_that_is_emptied_at_the_end(monkeypatch, capsys):
    """A saved notebook keeps none of them: nine 'evaluation: N/20 batches' lines once stayed in one."""
    import IPython.display

    shown: list[dict] = []

    class Handle:
        def update(self, data, raw):
            shown.append(data)

    def display(data, raw, display_id):
        shown.append(data)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    clock = Clock()
    lines = ProgressLines("evaluation", 20, "batches", clock=clock)  # the default log, print
    for done in range(1, 21):
        clock.now += 6.0
        lines.update(done)
    lines.close()
    assert [int(LINE.match(d["text/plain"])["done"]) for d in shown[:-1]] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert shown[-1] == {} and capsys.readouterr().out == ""


def test_outside_a_notebook_there_is_no_kernel():
    assert not progress.in_notebook()


def test_the_range_test_prints_progress_lines_in_a_log(every_line):
    cfg = Config(batch_size=32, lr_find_iters=20, device="cpu", precision="fp32")
    log: list[str] = []
    Learner(cfg, synthetic_cifar10(n_train=100, n_test=20, seed=3), log=log.append).lr_find()
    matched = [LINE.match(line) for line in log[:-1]]  # the last line is the pick
    assert matched and all(matched), log
    assert {(m["what"], m["total"], m["unit"]) for m in matched} == {("LR range test", "20", "steps")}
    assert not any("Learning rate search finished" in line for line in log)  # the library's own print stays out


def test_training_and_the_final_evaluation_print_progress_lines_in_a_log(every_line, tmp_path, monkeypatch):
    from modular import learner

    monkeypatch.setattr(learner, "READ_EVERY", 5)  # the running loss is read from the device every 5 steps
    tree = small_tree(tmp_path / "tree", n_train=100, n_test=40)
    cfg = Config(data_dir=str(tree), output_dir=str(tmp_path / "out"), epochs=1, max_lr=0.1, batch_size=10,
                 device="cpu", precision="fp32")
    log: list[str] = []
    train(cfg, log=log.append)
    matched = [m for m in map(LINE.match, log) if m]
    epoch = [m for m in matched if m["what"] == "epoch 1"]
    evaluation = [m for m in matched if m["what"] == "evaluation"]
    assert [m["done"] for m in epoch] == [str(i) for i in range(1, 10)] and epoch[0]["total"] == "10", log
    assert evaluation and {m["total"] for m in evaluation} == {"4"}, log  # only the final one, not the per-epoch test
    lines = {m["done"]: m.string for m in epoch}
    assert "train loss" not in lines["4"] and re.search(r", train loss [\d.]+, train acc [\d.]+%$", lines["9"]), lines


def test_the_range_test_says_its_cost_and_how_to_skip_it():
    line = describe_range_test(Config(subset=2000))
    assert line.startswith("LR range test: 100 steps of 512 images (51,200 images; --max-lr skips it)")


def test_subset_help_says_the_range_test_does_not_shrink(capsys):
    code, out, _ = cli_main(["train", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "The LR range test does not shrink with it" in text and "add --max-lr to skip it" in text


def test_evaluate_says_which_data_and_how_many_images(tmp_path_factory, capsys):
    run = shared_run(tmp_path_factory)
    code, out, err = cli_main(["evaluate", "--checkpoint", run.checkpoint], capsys)
    assert code == 0, err
    assert f"data: {run.tree}: {run.record['test_images']:,} test images; device: cpu, fp32" in out


def test_a_log_file_sees_each_line_while_the_run_goes(tmp_path):
    """Python buffers stdout to a file in blocks of 8 KB: without line buffering, nothing would be in
    the log yet after the first epoch."""
    tree = small_tree(tmp_path / "tree", n_train=256, n_test=40)
    log = tmp_path / "run.log"
    env = cli_env()
    env.pop("PYTHONUNBUFFERED")
    with open(log, "w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "modular", "train", "--data-dir", str(tree), "--output-dir",
                                 str(tmp_path / "out"), "--epochs", "6", "--max-lr", "0.1", *FAST], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            wait_for_epoch(tmp_path / "out" / "checkpoint.pt", 1, proc)
            text = log.read_text()
            assert proc.poll() is None, "the run ended before the log could be read"
        finally:
            proc.kill()
            proc.communicate()
    assert text.startswith("data: ") and "epoch  train loss" in text, text
