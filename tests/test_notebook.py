"""The notebook's own helpers (config, the shipped-weights path) and what its committed outputs show
(local paths in them: tests/test_docs.py)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from helpers import ROOT, shared_run

from modular import notebook
from modular.config import CIFAR10_CLASSES
from modular.figures import run_figures
from modular.prepare import new_model, prepare
from modular.trained.inference import gradcam_figure
from modular.trained.weights import export_weights, load_weights

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
    """The shared run's weights and record, as the notebook's weights path finds them."""
    run = shared_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("shipped")
    record = shutil.copy(run.output_dir / "run.json", folder / "headline.json")
    weights = folder / "custom_resnet_cifar10.pt"
    export_weights(run.checkpoint, weights, run.record["classes"])
    return run, record, weights


def test_the_weights_path_shows_the_record_and_loads_instead_of_training(shipped, tmp_path, capsys):
    run, record_path, weights = shipped
    cfg = run.cfg.replace(output_dir=str(tmp_path / "out"), device="cpu")
    prepared = prepare(cfg)
    model = new_model(cfg)
    recorded = notebook.recorded_run(record_path)
    facts = notebook.decide_lr(prepared, model, recorded)
    assert facts.lr_max == run.record["lr_max"] and facts.lr_find == run.record["lr_find"]
    result = notebook.train_or_load(prepared, model, facts, recorded, weights=weights)
    out = capsys.readouterr().out
    assert "instead of training" in out and out.count("\n") >= len(run.record["history"]) + 2
    assert result.history == run.record["history"] and not (tmp_path / "out" / "checkpoint.pt").exists()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(images), load_weights(weights).model(images), atol=1e-5)
    record = notebook.finish(prepared, facts, result, recorded)
    assert record == run.record and not (tmp_path / "out").exists()  # as recorded; nothing written
    again = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("evaluation: ")]  # progress
    assert again[0].startswith("the shipped weights evaluated again here (") and prepared.runtime.describe() in again[0]
    accuracy = float(again[0].split("test accuracy ")[1].split("%")[0])
    assert abs(accuracy - run.record["test_acc"]) <= 1.0
    assert again[1] == f"the recorded run (seed 0, {run.record['hardware']}, fp32), as recorded:"
    assert gradcam_figure(result.model, prepared, record).axes


def test_the_summary_shows_one_run_as_recorded(shipped):
    record = shipped[0].record
    table = notebook.summary_table({**record, "hardware": "Recorded CPU (2 threads)", "precision": "bf16"})
    assert f"test accuracy, epoch {len(record['history'])}" in table and f"{record['test_acc']:.2f}%" in table
    assert table.splitlines()[-1].split(None, 2)[-1] == "Recorded CPU (2 threads), bf16"


def test_the_test_image_gallery_shows_every_class(shipped, tmp_path):
    run = shipped[0]
    cfg = run.cfg.replace(output_dir=str(tmp_path), device="cpu")  # the record's paths name no folder of this machine
    figure = run_figures(run.record, prepare(cfg))["test_samples"]
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 16 and set(titles[:10]) == set(CIFAR10_CLASSES), titles


def test_gradcam_figure_with_nothing_misclassified_says_so(shipped, tmp_path):
    run = shipped[0]
    cfg = run.cfg.replace(output_dir=str(tmp_path), device="cpu")
    fig = gradcam_figure(new_model(cfg), prepare(cfg), {**run.record, "misclassified": []})
    assert "no misclassified test images" in fig.texts[0].get_text()
