"""What only the notebook needs: its configuration from the environment, the model summary, a summary
table, and the path that uses the shipped weights instead of training (ERA_USE_WEIGHTS=1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from modular import pipeline
from modular.config import Config
from modular.data import CifarData, synthetic_cifar10, write_image_tree
from modular.device import fp32_cpu_copy, hardware_name
from modular.evaluate import full_evaluation
from modular.prepare import Prepared
from modular.prepare import load_data as load_data_as_configured
from modular.record import RunFacts
from modular.train import TABLE_HEADER, FitResult, format_epoch
from modular.trained.weights import SHIPPED, load_weights

HEADLINE = Path(__file__).resolve().parents[1] / "results" / "headline.json"  # the run the shipped weights come from
DATA_SETTING = "CIFAR10_DIR"  # what names the data in the notebook (the command line's --data-dir)


def notebook_config(quick: bool, workdir: str | Path = ".", output_dir: str | None = None,
                    use_weights: bool = False) -> Config:
    """The notebook's Config. Quick mode (ERA_QUICK=1): a learnable synthetic CIFAR-10 written
    at run time (no internet), 2 epochs, a short range test, in a throwaway runs/quick that is
    cleared each time (so an old quick run never gets resumed; ``output_dir`` is not used, so a real
    run folder is never cleared). Full mode: the defaults, with data from $CIFAR10_DIR if set (else
    torchvision's download) and output in ``output_dir`` ($ERA_OUTPUT_DIR), else runs/headline.
    ``use_weights`` (the shipped weights, no training): fp32, as ``evaluate --weights`` evaluates them."""
    workdir = Path(workdir)
    precision = "fp32" if use_weights else Config.precision
    if not quick:
        return Config(data_dir=os.environ.get(DATA_SETTING), output_dir=output_dir or str(workdir / "runs" / "headline"),
                      precision=precision)
    out = workdir / "runs" / "quick"
    shutil.rmtree(out, ignore_errors=True)
    tree = write_image_tree(synthetic_cifar10(n_train=1000, n_test=200, seed=0), out / "data")
    return Config(data_dir=str(tree), epochs=2, batch_size=64, lr_find_iters=20, output_dir=str(out), precision=precision)


def load_data(cfg: Config) -> CifarData:
    """The data of ``cfg``; an error names CIFAR10_DIR, the notebook's way to give a local copy."""
    return load_data_as_configured(cfg, DATA_SETTING)


def print_model_summary(model: torch.nn.Module) -> None:
    """torchsummary's table on a (3, 32, 32) input, in eval mode so BatchNorm statistics stay put."""
    from torchsummary import summary

    probe = fp32_cpu_copy(model).eval()
    summary(probe, (3, 32, 32), device="cpu")


def summary_table(record: dict) -> str:
    """The headline numbers of a run record as a small aligned table."""
    rows = [
        (f"test accuracy, epoch {len(record['history'])}", f"{record['test_acc']:.2f}%"),
        ("best test accuracy", f"{record['best_test_acc']:.2f}% (epoch {record['best_epoch']})"),
        ("flip-TTA accuracy (not counted)", f"{record['tta_test_acc']:.2f}%"),
        ("LRMAX / LRMIN", f"{record['lr_max']:.4g} / {record['lr_min']:.4g}"),
        ("epochs", f"{len(record['history'])}"),
        ("seconds per epoch", f"{record['seconds_per_epoch']:.0f}"),
        ("total time", f"{record['wall_seconds'] / 3600:.2f} h"),
        ("ran on", f"{record['hardware']}, {record['precision']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def recorded_run(record_path: Path = HEADLINE) -> dict:
    """The run record the shipped weights come from (read once; the notebook passes it on)."""
    return json.loads(Path(record_path).read_text())


def decide_lr(prepared: Prepared, model: torch.nn.Module, recorded: dict | None) -> RunFacts:
    """The run's LRMAX/LRMIN: with the shipped weights (``recorded``: their run record), the recorded
    run's (no range test is run); otherwise the pipeline's decision (from the checkpoint being
    resumed, or a new range test)."""
    if recorded is not None:
        facts = RunFacts.from_dict(recorded)
        print(f"recorded run (seed {recorded['seed']}): LRMAX {facts.lr_max:.4g}, LRMIN {facts.lr_min:.4g}")
        return facts
    return pipeline.decide_lr(prepared, model, pipeline.find_checkpoint(prepared.cfg, resume=True))


def train_or_load(prepared: Prepared, model: torch.nn.Module, facts: RunFacts, recorded: dict | None,
                  weights: Path = SHIPPED) -> FitResult:
    """Train (or resume) ``model`` as the pipeline does; with the shipped weights (``recorded``: their
    run record) return their model instead and show the recorded run's per-epoch table."""
    if recorded is None:
        return pipeline.train(prepared, model, facts, resume=True)
    trained = load_weights(weights)
    print(f"loaded {Path(weights).name} instead of training; the recorded run's epochs:")
    print("\n".join([TABLE_HEADER] + [format_epoch(row) for row in recorded["history"]]))
    return FitResult(recorded["history"], recorded["lr_per_step"], prepared.runtime.prepare_model(trained.model),
                     resumed_from=len(recorded["history"]))


def finish(prepared: Prepared, facts: RunFacts, result: FitResult, recorded: dict | None) -> dict:
    """The run record to show. A run trained here: the pipeline's (evaluated, written to run.json).
    With the shipped weights (``recorded``: their run record): the record as recorded, nothing
    written; the weights are evaluated again on this machine, in a line of their own that says where."""
    if recorded is None:
        return pipeline.finish(prepared, facts, result)
    runtime = prepared.runtime
    again = full_evaluation(result.model, prepared.test_loader, runtime, prepared.data.classes)
    print(f"the shipped weights evaluated again here ({hardware_name(runtime.device)}, {runtime.describe()}): test "
          f"accuracy {again['test_acc']:.2f}%, flip TTA {again['tta_test_acc']:.2f}% on "
          f"{len(prepared.data.test_labels):,} test images")
    print(f"the recorded run (seed {recorded['seed']}, {recorded['hardware']}, {recorded['precision']}), as recorded:")
    return recorded
