"""The notebook's own helpers (config, the shipped-weights path) and what its committed outputs show."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from helpers import ROOT, shared_run

from modular import notebook, pipeline
from modular.config import Config
from modular.prepare import new_model, prepare
from modular.trained.inference import gradcam_figure
from modular.trained.weights import export_weights, load_weights

NOTEBOOK = ROOT / "era_s10_cifar.ipynb"
LOCAL_PATH = re.compile(r"(?<![\w.~])(/(?:home|root|tmp|work|Users|opt|usr|var|mnt|content)/|[A-Za-z]:\\\\)")


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


def test_the_committed_notebook_shows_no_warnings_errors_or_local_paths():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    problems = []
    for number, cell in enumerate(cells, start=1):
        for kind, text in output_texts(cell):
            if kind == "error" or re.search(r"Warning\b|Traceback", text):
                problems.append(f"code cell {number}: {kind}: {text[:200]!r}")
            if path := LOCAL_PATH.search(text):
                problems.append(f"code cell {number}: a local path ({path.group(0)}...) in {kind}: {text[:200]!r}")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_what_it_looks_for():
    warned = {"outputs": [{"output_type": "stream", "name": "stderr",
                           "text": ["/work/venv/lib/x.py:5: TqdmExperimentalWarning: ...\n"]}]}
    kinds = [kind for kind, _ in output_texts(warned)]
    assert kinds == ["stderr"] and LOCAL_PATH.search(output_texts(warned)[0][1])
    assert not LOCAL_PATH.search("record: runs/seed0/run.json, data/cifar10-official, 1/4 of 2.5 h")


def test_output_dir_comes_from_era_output_dir_in_full_mode_only(tmp_path):
    full = notebook.notebook_config(quick=False, workdir=tmp_path, output_dir="/drive/run")
    assert full.output_dir == "/drive/run"
    assert notebook.notebook_config(quick=False, workdir=tmp_path).output_dir == str(tmp_path / "runs" / "headline")
    quick = notebook.notebook_config(quick=True, workdir=tmp_path, output_dir="/drive/run")
    assert quick.output_dir == str(tmp_path / "runs" / "quick")   # a real run folder is never cleared


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
    cfg = Config.from_dict(run.record["config"]).replace(output_dir=str(tmp_path / "out"), device="cpu")
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
    record = pipeline.finish(prepared, facts, result, log=lambda *_: None)
    assert abs(record["test_acc"] - run.record["test_acc"]) <= 1.0
    assert gradcam_figure(result.model, prepared, record).axes


def test_gradcam_figure_with_nothing_misclassified_says_so(shipped, tmp_path):
    run = shipped[0]
    cfg = Config.from_dict(run.record["config"]).replace(output_dir=str(tmp_path), device="cpu")
    fig = gradcam_figure(new_model(cfg), prepare(cfg), {**run.record, "misclassified": []})
    assert "no misclassified test images" in fig.texts[0].get_text()
