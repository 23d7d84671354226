"""Training learns, and a run leaves a complete record and its plots; the runtime choice."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import SHARED_N_TEST, shared_run

from modular import device as device_module
from modular.config import Config
from modular.device import select_runtime
from modular.learner import Learner
from modular.progress import table_header
from modular.tools.provenance import code_version
from modular.tools.synthetic import synthetic_cifar10
from modular.tools.train_command import train

HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_ce", "test_acc", "lr", "seconds",
                "checkpoint_seconds"}
RECORD_KEYS = {"config", "lr_max", "lr_min", "history", "lr_per_step", "test_acc", "best_test_acc", "tta_test_acc",
               "per_class_acc", "confusion_matrix", "misclassified", "wall_seconds", "device", "hardware",
               "versions", "seed"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


def test_fit_learns_the_synthetic_classes(run):
    history = run.record["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["test_acc"] > 50.0, history          # chance is 10%
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert history[-1]["train_acc"] > history[0]["train_acc"] or history[0]["train_acc"] == 100.0
    # the final evaluation sees the same model as the last epoch's test pass
    assert run.record["test_acc"] == pytest.approx(history[-1]["test_acc"])
    assert run.record["test_loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-5)
    assert run.record["test_ce"] == pytest.approx(history[-1]["test_ce"], rel=1e-5)


def test_history_rows(run):
    for number, row in enumerate(run.record["history"], start=1):
        assert set(row) == HISTORY_KEYS
        assert row["epoch"] == number
        assert all(math.isfinite(row[k]) for k in HISTORY_KEYS)
        assert 0.0 <= row["train_acc"] <= 100.0 and 0.0 <= row["test_acc"] <= 100.0
        assert row["train_loss"] > 0 and row["test_loss"] > 0 and row["lr"] > 0 and row["seconds"] > 0
        assert 0 < row["checkpoint_seconds"] < row["seconds"]
    # the table was printed, one line per epoch
    assert table_header() in run.log
    assert sum(1 for line in run.log if line.split()[:1] in (["1"], ["2"])) == 2


def test_run_json_has_every_field(run):
    record = json.loads((run.output_dir / "run.json").read_text())
    missing = RECORD_KEYS - set(record)
    assert not missing, f"run.json lacks {sorted(missing)}"
    assert record == json.loads(json.dumps(run.record))    # the file is the returned record
    # the config as run, its paths reduced to their last part (no folders of this machine in a record)
    assert record["config"] == {**run.cfg.to_dict(), "data_dir": run.tree.name, "output_dir": run.output_dir.name}
    assert record["seed"] == run.cfg.seed == 0
    assert record["lr_max"] == 0.2 and record["lr_min"] == pytest.approx(0.2 / run.cfg.div_factor)
    assert record["lr_find"] is None                        # --max-lr given: no range test
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert isinstance(record["hardware"], str) and record["hardware"]
    assert {"python", "torch", "numpy"} <= set(record["versions"])
    assert record["wall_seconds"] > 0
    assert record["commit"] == [code_version()]             # this checkout, written at the start
    assert record["ran_on"] == [{"from_epoch": 0, "device": "cpu", "precision": "fp32", "channels_last": True,
                                 "hardware": record["hardware"]}]  # and this machine
    assert record["best_test_acc"] == max(row["test_acc"] for row in record["history"])
    assert 0.0 <= record["tta_test_acc"] <= 100.0


def test_run_json_evaluation_is_consistent(run):
    record = run.record
    matrix = torch.tensor(record["confusion_matrix"])
    assert matrix.shape == (10, 10) and int(matrix.sum()) == SHARED_N_TEST
    correct = int(matrix.diagonal().sum())
    assert record["test_acc"] == pytest.approx(100.0 * correct / SHARED_N_TEST)
    assert len(record["misclassified"]) == SHARED_N_TEST - correct
    assert list(record["per_class_acc"]) == list(record["classes"])
    for i, name in enumerate(record["classes"]):
        assert record["per_class_acc"][name] == pytest.approx(100.0 * int(matrix[i, i]) / int(matrix[i].sum()))
    for wrong in record["misclassified"]:
        assert set(wrong) == {"index", "predicted", "actual"} and wrong["predicted"] != wrong["actual"]


def test_plots_written(run):
    pngs = sorted(run.output_dir.glob("*.png"))
    assert len(pngs) >= 6, pngs
    for png in pngs:
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), png
    names = {p.stem for p in pngs}
    assert {"loss_accuracy", "one_cycle_lr", "confusion_matrix", "per_class_accuracy", "misclassified"} <= names


def test_run_with_the_range_test_records_it(tmp_path):
    """No --max-lr: LRMAX comes from the range test, which is stored and plotted."""
    cfg = Config(batch_size=32, epochs=1, lr_find_iters=20, device="cpu", precision="fp32",
                 output_dir=str(tmp_path / "out"))
    record = train(cfg, data=synthetic_cifar10(n_train=96, n_test=20, seed=2), log=lambda *_: None)
    found = record["lr_find"]
    assert found is not None and record["lr_max"] == found["lr_max"]
    assert record["lr_min"] == pytest.approx(record["lr_max"] / cfg.div_factor)
    assert record["lr_find_seconds"] > 0
    assert (tmp_path / "out" / "lr_range_test.png").stat().st_size > 1000
    assert RECORD_KEYS <= set(json.loads((tmp_path / "out" / "run.json").read_text()))


def test_the_range_test_is_on_disk_before_the_first_epoch(tmp_path, monkeypatch):
    """A run of hours shows its pick at once: lr_find.json (the same record `lr-find` writes) and the
    plot exist when training starts, and the run record's range test is the same one."""
    out = tmp_path / "out"
    seen = {}

    def fit_and_look(*args, **kwargs):
        seen["lr_find"] = json.loads((out / "lr_find.json").read_text())
        seen["plot"] = (out / "lr_range_test.png").stat().st_size
        return real_fit(*args, **kwargs)

    real_fit = Learner.fit_one_cycle
    monkeypatch.setattr(Learner, "fit_one_cycle", fit_and_look)
    cfg = Config(batch_size=32, epochs=1, lr_find_iters=20, device="cpu", precision="fp32", output_dir=str(out))
    record = train(cfg, data=synthetic_cifar10(n_train=96, n_test=20, seed=2), log=lambda *_: None)
    assert seen["plot"] > 1000
    assert seen["lr_find"]["lr_find"] == record["lr_find"] and seen["lr_find"]["seed"] == record["seed"]
    assert seen["lr_find"]["precision"] == "fp32" and seen["lr_find"]["config"] == record["config"]


def test_an_epochs_time_includes_its_checkpoint_write(tmp_path, monkeypatch):
    """A slow disk (Google Drive in Colab) shows in the epoch's seconds and the run's, and on its own."""
    import time
    from types import SimpleNamespace

    from modular import learner as learner_module

    slept = [0.0]  # a checkpoint write that takes 100 s on the learner's clock, and no time here

    def slow_save(*args, **kwargs):
        slept[0] += 100.0
        return real_save(*args, **kwargs)

    real_save = learner_module.save_checkpoint
    monkeypatch.setattr(learner_module, "save_checkpoint", slow_save)
    monkeypatch.setattr(learner_module, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + slept[0]))
    cfg = Config(batch_size=32, epochs=2, max_lr=0.05, device="cpu", precision="fp32",
                 output_dir=str(tmp_path / "out"))
    record = train(cfg, data=synthetic_cifar10(n_train=64, n_test=20, seed=2), log=lambda *_: None)
    for row in record["history"]:
        assert 100.0 <= row["checkpoint_seconds"] < row["seconds"] < 200.0
    assert record["wall_seconds"] >= 200.0


# --------------------------------------------------------------------------------------------
# Runtime: device, precision, memory layout
# --------------------------------------------------------------------------------------------

@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_auto_precision_uses_bf16_and_channels_last_where_the_cpu_has_bf16(monkeypatch, no_accelerator, device):
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: True)
    runtime = select_runtime(device, "auto")
    assert runtime.device == torch.device("cpu")
    assert runtime.amp_dtype == torch.bfloat16 and runtime.channels_last
    assert runtime.precision == "bf16" and not runtime.needs_grad_scaler


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_auto_precision_is_fp32_without_bf16(monkeypatch, no_accelerator, device):
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: False)
    runtime = select_runtime(device, "auto")
    assert runtime.device == torch.device("cpu")
    # channels_last for fp32 too: `bench` measured it faster than NCHW (results/bench-cpu.json)
    assert runtime.amp_dtype is None and runtime.channels_last and runtime.precision == "fp32"


@pytest.mark.parametrize("bf16", [True, False])
def test_fp32_precision_forces_fp32(monkeypatch, bf16):
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: bf16)
    runtime = select_runtime("cpu", "fp32")
    assert runtime.amp_dtype is None and runtime.channels_last and runtime.precision == "fp32"
    with runtime.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_runtime_autocasts_and_lays_out_channels_last(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: True)
    runtime = select_runtime("cpu", "auto")
    images = runtime.to_device(torch.zeros(2, 3, 32, 32))
    assert images.is_contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_missing_accelerators_are_config_errors(no_accelerator):
    from modular.config import ConfigError

    with pytest.raises(ConfigError, match="--device"):
        select_runtime("cuda", "auto")
    with pytest.raises(ConfigError, match="--device"):
        select_runtime("mps", "auto")
