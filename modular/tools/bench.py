"""Side-by-side throughput benchmark, with the training loop's own step (``learner.train_one_epoch``).

Measures, in one process and interleaved (so that load from elsewhere hits all alike):
the default training path of this device against a plain fp32 NCHW baseline (what the
original did) and fp32 in channels_last (which decides fp32's layout in device.py);
evaluation; the data pipeline with 0, 1, 2, 4 and 8 DataLoader workers and with the trainer's
default; the achieved GFLOP/s; and the estimated time of a full 24-epoch run, with what limits it.
Medians over repeats. Every timed sample lasts at least MIN_SAMPLE_SECONDS on any device: the number
of steps (or images) is found by running them, so a GPU step of a few milliseconds is timed over
hundreds of steps and a CPU step of a second over a few.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modular.config import Config
from modular.data import CifarData
from modular.device import Runtime, hardware_name, select_runtime
from modular.learner import build_criterion, build_optimizer, new_model, train_one_epoch
from modular.loaders import default_workers, make_loaders, usable_cpus
from modular.schedule import one_cycle
from modular.tools.jsonio import write_record
from modular.tools.provenance import versions
from modular.tools.synthetic import synthetic_cifar10
from modular.transforms import test_transforms, train_transforms

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
MIN_SAMPLE_SECONDS = 1.0       # each timed sample lasts at least this long, on any device
MIN_TRAIN_STEPS, MIN_EVAL_STEPS = 3, 2
WORKER_COUNTS = (0, 1, 2, 4, 8)  # the data pipeline is timed with each, and with the trainer's default


def enough(run: Callable[[int], float], start: int, seconds: float) -> int:
    """A count (of steps, or of images) from ``start`` up whose ``run(count)`` (its seconds) lasted at least
    ``seconds``: run, then grown in proportion to the time still missing (at most 8x a round)."""
    count = start
    for _ in range(20):
        elapsed = run(count)
        if elapsed >= seconds:
            break
        count = max(count + 1, min(8 * count, math.ceil(1.2 * count * seconds / max(elapsed, 1e-9))))
    return count


def training_flops_per_image(model: torch.nn.Module) -> float:
    """FLOPs of one forward + backward per image, counted by torch.utils.flop_counter (fp32, CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.cpu().train()
    images = torch.randn(4, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


class StepTimer:
    """Times ``steps`` training steps of one configuration: the training loop itself (``train_one_epoch``)
    over one fixed synthetic batch already on the device."""

    def __init__(self, runtime: Runtime, cfg: Config, batch_size: int, compile_model: bool = False):
        self.runtime = runtime
        self.model = runtime.prepare_model(new_model(cfg))
        self.step_model = torch.compile(self.model) if compile_model else self.model
        self.optimizer = build_optimizer(self.model, cfg, 0.01, fused=runtime.fused_optimizer)
        self.criterion, self.scaler = build_criterion(cfg), runtime.grad_scaler()
        # long enough for every timed step (the LR a step uses does not change its cost)
        self.scheduler = one_cycle(self.optimizer, cfg, 0.01, steps_per_epoch=100_000)
        generator = torch.Generator().manual_seed(0)
        self.images = runtime.to_device(torch.randn(batch_size, 3, 32, 32, generator=generator))
        self.targets = torch.randint(0, 10, (batch_size,), generator=generator).to(runtime.device)

    def _sync(self) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def train_seconds(self, steps: int) -> float:
        self._sync()
        began = time.perf_counter()
        with warnings.catch_warnings():  # fp16: GradScaler's skipped first steps (as in Learner.fit_one_cycle)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            train_one_epoch(self.step_model, self.criterion, self.optimizer, self.scheduler, self.scaler,
                            [(self.images, self.targets)] * steps, self.runtime, epoch=1, log=lambda _: None)
        self._sync()  # train_one_epoch has read its loss back at the end; this waits for the last update too
        return time.perf_counter() - began

    @torch.no_grad()
    def eval_seconds(self, steps: int) -> float:
        self.model.eval()
        self._sync()
        began = time.perf_counter()
        for _ in range(steps):
            with self.runtime.autocast():
                self.step_model(self.images)
        self._sync()
        self.model.train()
        return time.perf_counter() - began

    def images_per_s(self, seconds: float, steps: int) -> float:
        return steps * len(self.targets) / seconds


BENCH_MEAN, BENCH_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def tiled(data: CifarData, n: int) -> CifarData:
    """``data`` with its training images repeated up to ``n`` (a pass of any length from a small synthetic set)."""
    reps = -(-n // len(data.train_labels))
    return dataclasses.replace(data, train_images=np.tile(data.train_images, (reps, 1, 1, 1))[:n],
                               train_labels=np.tile(data.train_labels, reps)[:n])


def data_pass_seconds(data: CifarData, cfg: Config, runtime: Runtime) -> float:
    """One pass of a new training DataLoader over ``data``, as the trainer makes it (albumentations in
    ``cfg.workers`` worker processes, the batches collated in the run's layout and, on a GPU, pinned):
    from ``iter()``, worker start included, to the last batch. A new loader each pass: a second ``iter()`` of
    a persistent loader right after a first begins by draining what its workers had queued, and reads low."""
    loader, _ = make_loaders(data, train_transforms(BENCH_MEAN, BENCH_STD, seed=0),
                             test_transforms(BENCH_MEAN, BENCH_STD), cfg, runtime)
    loader.sampler.set_epoch(1)
    with warnings.catch_warnings():  # more workers than cores, on purpose (WORKER_COUNTS)
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        began = time.perf_counter()
        for _ in loader:
            pass
        elapsed = time.perf_counter() - began
    del loader  # its workers end here
    return elapsed


@dataclass(frozen=True)
class DataRate:
    images_per_s: float   # median over the repeats
    images: int           # per timed pass: enough for MIN_SAMPLE_SECONDS


def data_images_per_s(cfg: Config, runtime: Runtime, repeats: int, min_seconds: float = MIN_SAMPLE_SECONDS,
                      base: CifarData | None = None) -> DataRate:
    """The training data pipeline with ``cfg.workers`` workers over synthetic images: fresh passes, each
    long enough (``enough``), median of ``repeats``."""
    base = base if base is not None else synthetic_cifar10(n_train=4096, n_test=10, seed=0)

    def run(n: int) -> float:
        return data_pass_seconds(tiled(base, n), cfg, runtime)

    images = enough(run, start=2 * cfg.batch_size, seconds=min_seconds)
    return DataRate(statistics.median(images / run(images) for _ in range(repeats)), images)


@dataclass(frozen=True)
class Feed:
    images_per_s: float   # the training rate the run can sustain
    limited_by: str       # "training step" or "data pipeline"


def estimate_feed(step_images_per_s: float, data_images_per_s: float, workers: int) -> Feed:
    """What a run sustains given the step alone (a batch already on the device) and the data pipeline.
    With worker processes the two overlap and the slower one sets the pace; with none (the CPU
    default) they take turns in one process, so their times add up."""
    limited_by = "training step" if step_images_per_s <= data_images_per_s else "data pipeline"
    if workers > 0:
        return Feed(min(step_images_per_s, data_images_per_s), limited_by)
    return Feed(1 / (1 / step_images_per_s + 1 / data_images_per_s), limited_by)


def run_benchmark(output_dir: Path, batch_size: int = 512, device: str = "auto", repeats: int = 5,
                  include_compile: bool = False, min_seconds: float = MIN_SAMPLE_SECONDS,
                  worker_counts: Sequence[int] = WORKER_COUNTS, log=print) -> dict:
    """Measure, print a table, and write ``output_dir/bench-<device>.json``; returns the record."""
    cfg = Config(batch_size=batch_size, device=device)
    fast = select_runtime(device, "auto")
    baseline = Runtime(fast.device, None, channels_last=False)
    fp32_channels_last = Runtime(fast.device, None, channels_last=True)
    log(f"benchmark on {hardware_name(fast.device)}: default path {fast.describe()} against {baseline.describe()}, "
        f"batch {batch_size}, {repeats} repeats, each timed sample at least {min_seconds:g} s")
    timers = {"default": StepTimer(fast, cfg, batch_size), "baseline": StepTimer(baseline, cfg, batch_size),
              "fp32_channels_last": StepTimer(fp32_channels_last, cfg, batch_size)}
    if include_compile:
        timers["compiled"] = StepTimer(fast, cfg, batch_size, compile_model=True)
    for timer in timers.values():  # warm-up: allocator, oneDNN/cuDNN kernel choice, compilation
        timer.train_seconds(1)
        timer.eval_seconds(1)
    steps = {name: max(MIN_TRAIN_STEPS, enough(timer.train_seconds, 1, min_seconds)) for name, timer in timers.items()}
    samples: dict[str, list[float]] = {name: [] for name in timers}
    shortest = math.inf
    for repeat in range(repeats):
        for name, timer in timers.items():  # interleaved: a slow moment hits every path alike
            seconds = timer.train_seconds(steps[name])
            shortest = min(shortest, seconds)
            samples[name].append(timer.images_per_s(seconds, steps[name]))
        log(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.0f} img/s" for n, v in samples.items()))
    train = {name: statistics.median(values) for name, values in samples.items()}
    default = timers["default"]
    eval_steps = max(MIN_EVAL_STEPS, enough(default.eval_seconds, 1, min_seconds))
    eval_samples = [default.eval_seconds(eval_steps) for _ in range(repeats)]
    shortest = min(shortest, *eval_samples)
    evaluation = statistics.median(default.images_per_s(seconds, eval_steps) for seconds in eval_samples)

    workers = default_workers(fast.device)
    base = synthetic_cifar10(n_train=4096, n_test=10, seed=0)
    by_workers: dict[str, DataRate] = {}
    for count in sorted({*worker_counts, workers}):
        by_workers[str(count)] = data_images_per_s(cfg.replace(workers=count), fast, repeats, min_seconds, base)
        log(f"  data pipeline, {count} workers: {by_workers[str(count)].images_per_s:,.0f} img/s")
    data = by_workers[str(workers)].images_per_s
    flops = training_flops_per_image(timers["baseline"].model)
    feed = estimate_feed(train["default"], data, workers=workers)
    epoch_seconds = CIFAR_TRAIN / feed.images_per_s + CIFAR_TEST / evaluation
    range_test_seconds = Config.lr_find_iters * batch_size / feed.images_per_s
    record = {
        "device": fast.device.type,
        "hardware": hardware_name(fast.device),
        "path": fast.describe(),
        "baseline_path": baseline.describe(),
        "batch_size": batch_size,
        "repeats": repeats,
        "min_sample_seconds": min_seconds,
        "train_steps_per_sample": steps,
        "eval_steps_per_sample": eval_steps,
        "shortest_sample_seconds": shortest,
        "train_images_per_s": train["default"],
        "baseline_train_images_per_s": train["baseline"],
        "speedup": train["default"] / train["baseline"],
        "fp32_channels_last_train_images_per_s": train["fp32_channels_last"],
        "fp32_channels_last_speedup": train["fp32_channels_last"] / train["baseline"],
        "train_samples": samples,
        "eval_images_per_s": evaluation,
        "usable_cpus": usable_cpus(),
        "data_workers": workers,
        "data_images_per_s": data,
        "data_images_per_s_by_workers": {count: rate.images_per_s for count, rate in by_workers.items()},
        "data_images_per_pass": {count: rate.images for count, rate in by_workers.items()},
        "data_to_train_ratio": data / train["default"],
        "limited_by": feed.limited_by,
        "fed_train_images_per_s": feed.images_per_s,
        "train_gflop_per_image": flops / 1e9,
        "gflops_per_s": flops * train["default"] / 1e9,
        "est_epoch_seconds": epoch_seconds,
        "est_full_run_hours": (Config.epochs * epoch_seconds + range_test_seconds) / 3600,
        "versions": versions(),
    }
    if "compiled" in train:
        record["compiled_train_images_per_s"] = train["compiled"]
        record["compile_speedup"] = train["compiled"] / train["default"]
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"bench-{fast.device.type}.json"
    write_record(path, record)
    log(format_bench(record))
    log(f"record: {path}")
    return record


def bench_rows(r: dict) -> list[tuple[str, str]]:
    """(what, figure) rows of a benchmark record: for the terminal and for the README's table."""
    rows = [
        (f"Training step, {r['path']} (the trainer's default)", f"{r['train_images_per_s']:.0f} images/s"),
        (f"Training step, {r['baseline_path']} (baseline: what the original ran)",
         f"{r['baseline_train_images_per_s']:.0f} images/s"),
        ("Speedup of the default path", f"{r['speedup']:.2f}×"),
    ]
    if "fp32_channels_last_train_images_per_s" in r:  # records before this row lack it
        rows.append(("Training step, fp32, channels_last (decides fp32's layout)",
                     f"{r['fp32_channels_last_train_images_per_s']:.0f} images/s "
                     f"({r['fp32_channels_last_speedup']:.2f}× the baseline)"))
    if "compiled_train_images_per_s" in r:
        rows.append(("Training step with `torch.compile` (`--compile`)",
                     f"{r['compiled_train_images_per_s']:.0f} images/s ({r['compile_speedup']:.2f}× the default)"))
    limit = f", limited by the {r['limited_by']}" if "limited_by" in r else ""
    workers = f", {r['data_workers']} workers (the trainer's default)" if "data_workers" in r else ""
    ratio = f"{r['data_to_train_ratio']:.0f}" if r["data_to_train_ratio"] >= 2 else f"{r['data_to_train_ratio']:.2f}"
    rows += [
        ("Evaluation", f"{r['eval_images_per_s']:.0f} images/s"),
        (f"Data pipeline (albumentations + DataLoader{workers})",
         f"{r['data_images_per_s']:,.0f} images/s ({ratio}× the training step)"),
    ]
    if "data_images_per_s_by_workers" in r:  # records before the sweep lack it
        rows.append((f"Data pipeline by DataLoader workers ({r['usable_cpus']} usable CPU cores)",
                     ", ".join(f"{count}: {rate:,.0f}" for count, rate in r["data_images_per_s_by_workers"].items())
                     + " images/s"))
    rows += [
        ("Achieved in the training step",
         f"{r['gflops_per_s']:.0f} GFLOP/s ({r['train_gflop_per_image']:.2f} GFLOP/image)"),
        ("Estimated 24-epoch run with evaluation and range test", f"{r['est_full_run_hours']:.2f} h{limit}"),
    ]
    return rows


def format_bench(r: dict) -> str:
    rows = bench_rows(r)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
