"""The benchmark's full-run estimate: the slower of the training step and the data pipeline."""

from __future__ import annotations

import helpers  # noqa: F401  (environment and sys.path)
import pytest

from modular.tools.bench import estimate_feed, format_bench


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
