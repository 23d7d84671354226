"""The notebook's own helpers (config), the shipped-weights path (a finished run for the Learner), the
shape of its cells and what its committed outputs show (local paths in them: tests/test_docs.py)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from helpers import ROOT, shared_run

from modular.config import CIFAR10_CLASSES
from modular.evaluate import gallery_sample
from modular.learner import Learner
from modular.progress import format_epoch, table_header
from modular.tools import notebook
from modular.tools.inference import gradcam_figure
from modular.tools.train_command import run_figures
from modular.tools.weights import export_weights, load_weights, shipped_run

NOTEBOOK = ROOT / "era_s10_cifar.ipynb"


def output_texts(cell: dict) -> list[tuple[str, str]]:
    """(kind, text) of every output of a code cell: stream name or MIME type, and its text."""
    found = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            found.append((output["name"], "".join(output["text"])))
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/"):
                found.append((mime, "".join(value) if isinstance(value, list) else value))
        if output["output_type"] == "error":
            found.append(("error", "\n".join(output.get("traceback", []))))
    return found


def test_the_committed_notebook_shows_no_warnings_or_errors():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    problems = []
    for number, cell in enumerate(cells, start=1):
        for kind, text in output_texts(cell):
            if kind == "error" or re.search(r"Warning\b|Traceback", text):
                problems.append(f"code cell {number}: {kind}: {text[:200]!r}")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_what_it_looks_for():
    warned = {"outputs": [{"output_type": "stream", "name": "stderr",
                           "text": ["/work/venv/lib/x.py:5: TqdmExperimentalWarning: ...\n"]}]}
    assert [kind for kind, _ in output_texts(warned)] == ["stderr"]
    assert re.search(r"Warning\b", output_texts(warned)[0][1])


def test_output_dir_comes_from_era_output_dir_in_full_mode_only(tmp_path):
    full = notebook.notebook_config(quick=False, workdir=tmp_path, output_dir="/drive/run")
    assert full.output_dir == "/drive/run"
    assert notebook.notebook_config(quick=False, workdir=tmp_path).output_dir == str(tmp_path / "runs" / "headline")
    quick = notebook.notebook_config(quick=True, workdir=tmp_path, output_dir="/drive/run")
    assert quick.output_dir == str(tmp_path / "runs" / "quick")   # a real run folder is never cleared


@pytest.mark.parametrize("quick", [False, True])
def test_the_shipped_weights_are_evaluated_in_fp32_as_the_command_line_does(quick, tmp_path):
    assert notebook.notebook_config(quick=quick, workdir=tmp_path, use_weights=True).precision == "fp32"
    assert notebook.notebook_config(quick=quick, workdir=tmp_path).precision == "auto"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shared run's weights and record, as the notebook's weights path finds them; the record is given
    the headline's range test (the shared run had --max-lr)."""
    run = shared_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("shipped")
    record = folder / "headline.json"
    found = json.loads((ROOT / "results" / "headline.json").read_text())["lr_find"]
    record.write_text(json.dumps({**run.record, "lr_find": found}))
    weights = folder / "custom_resnet_cifar10.pt"
    export_weights(run.checkpoint, weights, run.record["classes"])
    return run, record, weights


def test_the_shipped_weights_are_a_finished_run_shown_as_recorded_and_evaluated_here(shipped, tmp_path, capsys):
    """The notebook's weights path: no range test, no training, nothing written; the recorded range test
    and epochs are shown, and the weights are evaluated on this machine."""
    run, record_path, weights = shipped
    cfg = run.cfg.replace(output_dir=str(tmp_path / "out"), device="cpu")
    learner = Learner(cfg, start=shipped_run(record_path, weights))
    found = learner.lr_find()
    assert found.to_dict() == json.loads(record_path.read_text())["lr_find"]
    result = learner.fit_one_cycle()
    table = capsys.readouterr().out.splitlines()[-len(run.record["history"]) - 1:]
    assert table == [table_header(), *map(format_epoch, run.record["history"])]  # the recorded epochs, none trained
    assert result.history == run.record["history"] and result.lr_per_step == run.record["lr_per_step"]
    assert result.facts.lr_max == run.record["lr_max"] and not (tmp_path / "out").exists()  # nothing written
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(images), load_weights(weights).model(images), atol=1e-5)
    evaluation = learner.evaluate()
    assert abs(evaluation.test_acc - run.record["test_acc"]) <= 1.0
    assert f"{evaluation.test_acc:.2f}%" in str(evaluation) and f"{evaluation.tta_test_acc:.2f}%" in str(evaluation)
    shown = gallery_sample(evaluation.misclassified)  # Grad-CAM explains the misclassified gallery's images
    assert shown
    titles = [ax.get_title() for ax in gradcam_figure(learner, evaluation.misclassified).axes]
    assert [t for t in titles if t.startswith("pred: ")] == [f"pred: {CIFAR10_CLASSES[w['predicted']]}" for w in shown]
    assert [t for t in titles if t.startswith("true: ")] == [f"true: {CIFAR10_CLASSES[w['actual']]}" for w in shown]


def test_a_finished_run_started_with_max_lr_has_no_range_test_to_show(shipped, tmp_path):
    from modular.lr_finder import LRFinderError

    run, _, weights = shipped
    record = shutil.copy(run.output_dir / "run.json", tmp_path / "run.json")  # --max-lr 0.2: no range test
    learner = Learner(run.cfg.replace(output_dir=str(tmp_path), device="cpu"), start=shipped_run(record, weights))
    with pytest.raises(LRFinderError) as caught:  # the LRMAX it was given, and the flag that gave it
        learner.lr_find()
    assert "0.2" in str(caught.value) and "--max-lr" in str(caught.value)


def test_the_test_image_gallery_shows_every_class(shipped, tmp_path):
    run = shipped[0]
    cfg = run.cfg.replace(output_dir=str(tmp_path), device="cpu")  # the record's paths name no folder of this machine
    learner = Learner(cfg)
    figure = run_figures(run.record, learner.data, learner.train_transform)["test_samples"]
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 16 and set(titles[:10]) == set(CIFAR10_CLASSES), titles


def test_gradcam_figure_with_nothing_misclassified_says_so(shipped, tmp_path):
    run = shipped[0]
    fig = gradcam_figure(Learner(run.cfg.replace(output_dir=str(tmp_path), device="cpu")), [])
    assert "no misclassified test images" in fig.texts[0].get_text()


# --------------------------------------------------------------------------------------------
# The notebook's cells: the Learner's calls in sight, the weights path in one place, outputs a reader needs
# --------------------------------------------------------------------------------------------

def code_cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_the_cells_call_the_learner_and_the_weights_path_is_one_if_in_one_cell():
    cells = code_cells()
    for call in ("learner.lr_find()", "learner.fit_one_cycle(", "learner.evaluate()", "Learner(cfg, data, start)"):
        assert sum(call in cell for cell in cells) == 1, call
    uses = [cell for cell in cells if "USE_WEIGHTS" in cell and "os.environ" not in cell]
    assert len(uses) == 1 and uses[0].count("if USE_WEIGHTS") == 1, uses


def test_the_saved_notebook_is_small_and_keeps_no_progress_lines():
    """Figures at a reader's size (the whole file under 600 kB) and no 'evaluation: 4/20 batches' lines."""
    assert NOTEBOOK.stat().st_size < 600_000
    progress = re.compile(r"^.+: \d+/\d+ \w+ \(\d+%\)", re.M)
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert not [text for cell in cells for _, text in output_texts(cell) if progress.search(text)]


def test_the_saved_notebook_has_no_output_that_shows_nothing():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    empty = [n for n, cell in enumerate(cells, start=1) for out in cell["outputs"]
             if out["output_type"] == "display_data" and not out.get("data")]
    assert not empty, f"code cells {empty}: run tools/execute_notebook.sh, which drops them"


def test_tidy_saved_outputs_drops_the_emptied_progress_lines_and_joins_the_table_they_split(tmp_path):
    import nbformat

    def stream(text, name="stdout"):
        return nbformat.v4.new_output("stream", name=name, text=text)

    empty = nbformat.v4.new_output("display_data", data={})
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "a figure"})
    cell = nbformat.v4.new_code_cell("learner.fit_one_cycle()", outputs=[
        empty, stream("epoch  train loss\n"), empty, stream("    1      1.8776\n"), empty, stream("    2      1.4424\n"),
        figure, stream("after the figure\n"), stream("a warning\n", name="stderr")])
    path = tmp_path / "saved.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")]), path)
    assert notebook.tidy_saved_outputs(path) == 3
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [(out.output_type, out.get("name")) for out in outputs] == [
        ("stream", "stdout"), ("display_data", None), ("stream", "stdout"), ("stream", "stderr")]
    assert outputs[0].text == "epoch  train loss\n    1      1.8776\n    2      1.4424\n"
    assert outputs[1].data == {"text/plain": "a figure"}


def saved_cell(call: str) -> dict:
    """The one code cell of the committed notebook whose source makes ``call``, with its saved outputs."""
    (cell,) = [c for c in json.loads(NOTEBOOK.read_text())["cells"]
               if c["cell_type"] == "code" and call in "".join(c["source"])]
    return cell


def test_the_saved_epoch_table_is_one_output():
    assert [out["output_type"] for out in saved_cell("learner.fit_one_cycle(")["outputs"]] == ["stream"]


def test_a_cpu_only_runtime_is_told_the_hours_from_the_records_and_how_to_switch(tmp_path):
    """The figures are computed from the committed records (here stand-ins with round numbers), scaled by the
    benchmark's bf16/fp32 ratio on a CPU without bf16; the line names Colab's menu for a GPU."""
    from modular.device import Runtime

    for name, seconds in zip(notebook.CPU_RUNS, (3600, 5400, 7200)):
        (tmp_path / name).write_text(json.dumps({"wall_seconds": seconds}))
    (tmp_path / notebook.CPU_BENCH).write_text(json.dumps({"hardware": "Some CPU (2 threads)", "train_images_per_s": 300.0,
                                                            "fp32_channels_last_train_images_per_s": 100.0}))
    bf16 = notebook.cpu_time_to_expect(Runtime(torch.device("cpu"), torch.bfloat16, True), tmp_path)
    fp32 = notebook.cpu_time_to_expect(Runtime(torch.device("cpu"), None, True), tmp_path)
    for line in (bf16, fp32):
        assert "\n" not in line and "1.00-2.00 h on Some CPU (2 threads) in bf16" in line
        assert "Runtime > Change runtime type" in line
    assert "3.0x slower" in fp32 and "about 3.0-6.0 h" in fp32 and "slower" not in bf16
    shipped = notebook.cpu_time_to_expect(Runtime(torch.device("cpu"), None, True))  # the committed records
    hours = [json.loads((ROOT / "results" / name).read_text())["wall_seconds"] / 3600 for name in notebook.CPU_RUNS]
    assert f"{min(hours):.2f}-{max(hours):.2f} h" in shipped


def test_the_learner_cell_says_it_before_training_on_a_cpu_only():
    cells = code_cells()
    (learner_cell,) = [cell for cell in cells if "Learner(cfg, data, start)" in cell]
    assert 'if learner.runtime.device.type == "cpu" and not (USE_WEIGHTS or QUICK):\n    print(cpu_time_to_expect(' \
        in learner_cell
    assert cells.index(learner_cell) < min(i for i, cell in enumerate(cells) if "learner.lr_find()" in cell)


def test_the_saved_outputs_are_a_real_full_run_and_say_what_its_record_says():
    """tools/execute_notebook.sh's run, not a replay: a range test made here and 24 epochs trained, whose
    LRMAX, every epoch's row (its time aside: the record's last one is timed before the checkpoint's write) and
    test accuracy are those of its record, results/notebook.json, on the official pixels."""
    record = json.loads((ROOT / "results" / "notebook.json").read_text())
    assert record["data_source"] == "cifar10-official" and len(record["history"]) == record["config"]["epochs"] == 24

    def printed(call: str) -> str:
        return "".join(text for _, text in output_texts(saved_cell(call)))

    found = printed("learner.lr_find()")
    assert "not run again" not in found and f"LRMAX {record['lr_max']:.4g}," in found
    table = printed("learner.fit_one_cycle(")
    assert "nothing left to train" not in table
    assert [part["from_epoch"] for part in record["ran_on"] if part["from_epoch"] < 24] == [0]  # trained in one go
    for row in record["history"]:
        assert format_epoch(row).rsplit(maxsplit=1)[0] in table, row["epoch"]
    assert f"test accuracy {record['test_acc']:.2f}%," in printed("learner.evaluate()")


def test_the_readme_and_cell_0_say_the_saved_outputs_are_that_run():
    record = json.loads((ROOT / "results" / "notebook.json").read_text())
    intro = "".join(json.loads(NOTEBOOK.read_text())["cells"][0]["source"])
    for text in (ROOT.joinpath("README.md").read_text(), intro):
        assert "results/notebook.json" in text and f"{record['test_acc']:.2f}%" in text
