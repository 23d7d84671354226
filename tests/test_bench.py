"""The benchmark: samples long enough on any device, the data pipeline over fresh passes and by workers, and the
full-run estimate from the slower of the training step and the data pipeline."""

from __future__ import annotations

import itertools
import json

import helpers  # noqa: F401  (environment and sys.path)
import pytest
import torch
from torch.utils.data import DataLoader

from modular.config import Config
from modular.device import Runtime
from modular.loaders import make_loaders
from modular.tools import bench
from modular.tools.bench import enough, estimate_feed, format_bench
from modular.tools.synthetic import synthetic_cifar10

CPU = Runtime(torch.device("cpu"), None, channels_last=True)


def test_with_workers_the_slower_of_step_and_pipeline_sets_the_pace():
    gpu = estimate_feed(step_images_per_s=20_000, data_images_per_s=6_000, workers=2)
    assert gpu.images_per_s == 6_000 and gpu.limited_by == "data pipeline"
    slow_step = estimate_feed(step_images_per_s=300, data_images_per_s=6_000, workers=2)
    assert slow_step.images_per_s == 300 and slow_step.limited_by == "training step"


def test_without_workers_step_and_pipeline_take_turns():
    cpu = estimate_feed(step_images_per_s=300, data_images_per_s=6_000, workers=0)
    assert cpu.images_per_s == pytest.approx(1 / (1 / 300 + 1 / 6_000))
    assert cpu.limited_by == "training step"


def test_the_table_says_what_limits_the_run():
    record = {"path": "cuda, fp16 autocast, channels_last", "baseline_path": "cuda, fp32, NCHW",
              "train_images_per_s": 20_000.0, "baseline_train_images_per_s": 5_000.0, "speedup": 4.0,
              "eval_images_per_s": 40_000.0, "data_images_per_s": 6_000.0, "data_to_train_ratio": 0.3,
              "gflops_per_s": 45_000.0, "train_gflop_per_image": 2.27, "est_full_run_hours": 0.07,
              "limited_by": "data pipeline"}
    assert "0.07 h, limited by the data pipeline" in format_bench(record)
    del record["limited_by"]  # an older record
    assert "0.07 h" in format_bench(record)


def test_the_table_shows_fp32_in_channels_last_against_the_baseline():
    record = {"path": "cpu, bf16 autocast, channels_last", "baseline_path": "cpu, fp32, NCHW",
              "train_images_per_s": 230.0, "baseline_train_images_per_s": 80.0, "speedup": 2.875,
              "fp32_channels_last_train_images_per_s": 60.0, "fp32_channels_last_speedup": 0.75,
              "eval_images_per_s": 900.0, "data_images_per_s": 6_000.0, "data_to_train_ratio": 26.0,
              "gflops_per_s": 520.0, "train_gflop_per_image": 2.27, "est_full_run_hours": 1.5}
    text = format_bench(record)
    assert "fp32, channels_last" in text and "60 images/s (0.75× the baseline)" in text
    del record["fp32_channels_last_train_images_per_s"]  # an older record: no row, no error
    assert "channels_last (decides" not in format_bench(record)


# --------------------------------------------------------------------------------------------
# Samples long enough on any device, the data pipeline over fresh passes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds_per_step, expected", [(0.002, range(500, 601)), (1.6, [1]), (0.4, range(3, 4))])
def test_enough_steps_for_a_second_whatever_a_step_takes(seconds_per_step, expected):
    """A GPU step of 2 ms is timed over some 500 steps, a CPU step of 1.6 s over one."""
    runs = []

    def run(steps):
        runs.append(steps)
        return steps * seconds_per_step

    count = enough(run, start=1, seconds=1.0)
    assert count in expected and count * seconds_per_step >= 1.0
    assert runs[-1] == count and len(runs) <= 6


def data_passes_spy(monkeypatch) -> list[tuple[int, int, list[int]]]:
    """Every pass over a training loader bench makes: (the loader's serial number, its workers, the sizes of
    the batches it yielded). Holds no loader, so each one's workers end when bench lets it go."""
    passes, serials = [], itertools.count()

    class Counting(DataLoader):
        def __iter__(self):
            passes.append((self.serial, self.num_workers, []))
            for images, labels in super().__iter__():
                passes[-1][2].append(len(labels))
                yield images, labels

    def spy(*args, **kwargs):
        train, test = make_loaders(*args, **kwargs)
        train.__class__, train.serial = Counting, next(serials)
        return train, test

    monkeypatch.setattr(bench, "make_loaders", spy)
    return passes


def test_the_data_pipeline_is_timed_over_whole_passes_of_new_loaders(monkeypatch):
    """Not a second iter() of one persistent loader (which first drains what its workers had queued): a new
    loader for every pass, each pass over all the images of the sample, the sample long enough."""
    passes = data_passes_spy(monkeypatch)
    cfg = Config(batch_size=16, workers=1)
    rate = bench.data_images_per_s(cfg, CPU, repeats=2, min_seconds=0.2, base=synthetic_cifar10(n_train=64, n_test=10))
    serials = [serial for serial, _, _ in passes]
    assert len(set(serials)) == len(serials) >= 3                  # calibration passes, then 2 timed ones
    assert all(workers == 1 for _, workers, _ in passes)
    assert [sum(sizes) for _, _, sizes in passes[-2:]] == [rate.images, rate.images]
    assert rate.images > 64 and rate.images_per_s > 0               # the 64 images repeated to last 0.2 s


def test_a_tiny_benchmark_times_every_sample_for_long_enough_and_says_what_limits_the_run(tmp_path):
    record = bench.run_benchmark(tmp_path, batch_size=4, device="cpu", repeats=1, min_seconds=0.3,
                                 worker_counts=(0, 1), log=lambda _: None)
    assert json.loads((tmp_path / "bench-cpu.json").read_text())["train_images_per_s"] == record["train_images_per_s"]
    assert record["shortest_sample_seconds"] >= 0.1                       # not 3 steps of milliseconds
    assert min(record["train_steps_per_sample"].values()) >= bench.MIN_TRAIN_STEPS
    assert record["eval_steps_per_sample"] >= bench.MIN_EVAL_STEPS
    assert set(record["data_images_per_s_by_workers"]) == {"0", "1"} and record["data_workers"] == 0  # the CPU's
    assert record["data_images_per_s"] == record["data_images_per_s_by_workers"]["0"]
    assert record["limited_by"] in ("training step", "data pipeline")
    text = format_bench(record)
    assert f"limited by the {record['limited_by']}" in text and "0 workers (the trainer's default)" in text
    assert "Data pipeline by DataLoader workers" in text


def test_the_table_lists_the_data_pipeline_by_workers():
    record = {"path": "cuda, bf16 autocast, channels_last", "baseline_path": "cuda, fp32, NCHW",
              "train_images_per_s": 30_000.0, "baseline_train_images_per_s": 6_000.0, "speedup": 5.0,
              "eval_images_per_s": 90_000.0, "data_images_per_s": 21_000.0, "data_to_train_ratio": 0.7,
              "gflops_per_s": 68_000.0, "train_gflop_per_image": 2.27, "est_full_run_hours": 0.02,
              "limited_by": "data pipeline", "usable_cpus": 16, "data_workers": 15,
              "data_images_per_s_by_workers": {"0": 2_500.0, "1": 2_400.0, "2": 4_700.0, "4": 9_000.0, "8": 16_000.0,
                                               "15": 21_000.0}}
    text = format_bench(record)
    assert "DataLoader, 15 workers (the trainer's default)" in text and "0.70× the training step" in text
    (row,) = [line for line in text.splitlines() if "(16 usable CPU cores)" in line]
    assert row.endswith("  0: 2,500, 1: 2,400, 2: 4,700, 4: 9,000, 8: 16,000, 15: 21,000 images/s")
