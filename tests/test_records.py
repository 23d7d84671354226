"""Records other tools can read: strict JSON (null for NaN), no absolute paths of the machine that wrote
them (in what runs write and in what is committed under results/), and the parts of a resumed run."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest
from helpers import ROOT, cli_main, shared_run, small_tree

from modular.tools import jsonio
from modular.tools.jsonio import portable, write_record

ABSOLUTE = re.compile(r"(?:^|[\s\"'=(:])(/[A-Za-z][^\s\"']*)|\b[A-Za-z]:\\")  # what a reader would see as one


def strict_load(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript, jq and most parsers do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def strings(value):
    """Every string in a record, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def absolute_paths(record) -> list[str]:
    return [s for s in strings(record) if ABSOLUTE.search(s)]


@pytest.mark.parametrize("text, expected", [
    ("/root/runs/seed0/checkpoint.pt", "checkpoint.pt"),
    ("/tmp/cifar10-official", "cifar10-official"),
    ("data: /tmp/cifar10-official: 50,000 train / 10,000 test", "data: cifar10-official: 50,000 train / 10,000 test"),
    ("resume with: python -m modular train --data-dir /tmp/c10 --output-dir /home/me/runs/seed1/ --resume",
     "resume with: python -m modular train --data-dir c10 --output-dir seed1 --resume"),
    ("torchvision CIFAR10 in /abs/data (subset of 100)", "torchvision CIFAR10 in data (subset of 100)"),
    ("C:\\Users\\me\\runs\\seed0\\checkpoint.pt", "checkpoint.pt"),
    ("runs/seed0, ~/runs/x, ./a/b, 1/4 of 2.5 h, 314 images/s, LRMAX / div_factor, fp16/bf16, https://github.com/a/b",
     "runs/seed0, ~/runs/x, ./a/b, 1/4 of 2.5 h, 314 images/s, LRMAX / div_factor, fp16/bf16, https://github.com/a/b"),
])
def test_portable_reduces_absolute_paths_to_their_last_part(text, expected):
    assert portable(text) == expected
    assert not ABSOLUTE.search(portable(text))


def test_a_record_is_written_as_strict_json_with_null_for_nan(tmp_path):
    record = {"losses": [2.3, float("nan"), float("inf"), -float("inf")], "data_source": "/tmp/x/cifar10",
              "seed": 3, "shape": (1, 2), "nested": {"ok": 0.5, "bad": float("nan")}}
    written = write_record(tmp_path / "r.json", record)
    text = (tmp_path / "r.json").read_text()
    assert strict_load(text) == written == {"losses": [2.3, None, None, None], "data_source": "cifar10", "seed": 3,
                                           "shape": [1, 2], "nested": {"ok": 0.5, "bad": None}}
    assert text == json.dumps(written, indent=1)
    assert math.isnan(record["losses"][1])  # the caller's record is left as it was


def test_every_json_file_the_project_writes_goes_through_write_record():
    """One writer: a json.dump(s) anywhere else in modular/ could write NaN or an absolute path again."""
    offenders = [f"{path.name}:{n}" for path in sorted((ROOT / "modular").rglob("*.py")) if path.name != "jsonio.py"
                 for n, line in enumerate(path.read_text().splitlines(), start=1) if re.search(r"\bjson\.dumps?\(", line)]
    assert not offenders, offenders


def test_lr_find_json_of_a_curve_with_nan(tmp_path, monkeypatch, capsys):
    """A range test whose loss blew up to NaN: lr_find.json is strict JSON, with null there."""
    import numpy as np

    from modular.learner import Learner
    from modular.lr_finder import LRFindResult, choose_lr_max, smooth

    lrs = np.geomspace(1e-4, 10, 40).tolist()
    raw = [2.3 - 0.4 * math.exp(-((i - 25) ** 2) / 30) for i in range(32)] + [float("nan")] * 8
    choice = choose_lr_max(lrs, smooth(raw))
    found = LRFindResult(lrs, smooth(raw), choice.lr_max, choice.lr_max / 100, choice.steepest_lr, raw_losses=raw,
                         diverged_lr=choice.diverged_lr)
    monkeypatch.setattr(Learner, "lr_find", lambda learner: found)  # no range test is run
    tree = small_tree(tmp_path / "cifar10", n_train=30, n_test=20)
    out = tmp_path / "out"
    code, _, err = cli_main(["lr-find", "--data-dir", tree, "--output-dir", out, "--device", "cpu", "--precision", "fp32"],
                            capsys)
    assert code == 0, err
    record = strict_load((out / "lr_find.json").read_text())
    assert record["lr_find"]["raw_losses"][32:] == [None] * 8 and record["lr_find"]["losses"][-1] is None
    assert record["data_source"] == "cifar10" and record["config"]["output_dir"] == "out"
    assert not absolute_paths(record), absolute_paths(record)
    from modular.plots import plot_lr_finder

    assert plot_lr_finder(**record["lr_find"]).axes  # a record read back (None in its curves) still plots


def test_the_weights_notes_are_strict_json(tmp_path):
    from modular.tools.weights import record_evaluation, record_export

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    record_path = tmp_path / "run.json"
    record_path.write_text(json.dumps({"history": []}))
    record_export(record_path, {"file": "w.pt", "sha256": hashlib.sha256(b"weights").hexdigest(),
                                "exported_from": str(tmp_path / "run" / "checkpoint.pt")})
    record_evaluation(record_path, weights, {"test_acc": 50.0, "test_ce": float("nan"), "tta_test_acc": 51.0},
                      str(tmp_path / "cifar10"))
    noted = strict_load(record_path.read_text())["weights"]
    assert noted["exported_from"] == "checkpoint.pt" and noted["evaluated"]["data_source"] == "cifar10"
    assert noted["evaluated"]["test_ce"] is None


def test_a_record_written_by_a_run_holds_no_absolute_path(tmp_path_factory):
    """The shared run was given absolute paths (pytest's tmp folders) for its data and its output."""
    run = shared_run(tmp_path_factory)
    assert run.tree.is_absolute() and run.output_dir.is_absolute()
    record = strict_load((run.output_dir / "run.json").read_text())
    assert not absolute_paths(record), absolute_paths(record)
    assert record["config"]["data_dir"] == run.tree.name and record["config"]["output_dir"] == run.output_dir.name
    assert record["data_source"] == run.tree.name


COMMITTED = sorted(p for p in (ROOT / "results").iterdir() if p.suffix in (".json", ".log"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_records_and_logs_hold_no_absolute_path(path):
    """Fix with: python -c "from modular.tools.jsonio import make_portable; make_portable('results/<file>')"."""
    text = path.read_text()
    found = absolute_paths(strict_load(text)) if path.suffix == ".json" else \
        [line for line in text.splitlines() if ABSOLUTE.search(line)]
    assert not found, found
    assert jsonio.portable_file_text(path) == text  # nothing else make_portable would change (NaN, say)


COMMITTED_RUNS = [p for p in COMMITTED if p.suffix == ".json" and "history" in json.loads(p.read_text())]
OPTIONAL = {"stopped", "weights"}  # a run stopped early; the run whose weights were exported


@pytest.mark.parametrize("path", COMMITTED_RUNS, ids=[p.name for p in COMMITTED_RUNS])
def test_committed_run_records_hold_every_field_a_run_writes_today(path, tmp_path_factory):
    """So the code reads one format, with no branch for older records (null where a value was not measured)."""
    from dataclasses import fields

    from modular.lr_finder import LRFindResult

    today = shared_run(tmp_path_factory).record
    record = json.loads(path.read_text())
    assert set(today) - OPTIONAL - {"lr_find"} <= set(record), sorted(set(today) - OPTIONAL - set(record))
    assert set(today["config"]) == set(record["config"]), sorted(set(today["config"]) ^ set(record["config"]))
    assert all(set(row) == set(today["history"][0]) for row in record["history"])
    assert record["lr_find"] is None or set(record["lr_find"]) == {f.name for f in fields(LRFindResult)}  # --max-lr: none
    assert [part["from_epoch"] for part in record["ran_on"]] == [part["from_epoch"] for part in record["commit"]]
