"""The whole job, step by step: data -> transforms -> model -> LR range test -> OneCycle fit ->
evaluation -> plots -> run record. The command line (``run``) and the notebook (one step per
cell) call these same functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from custom_resnet import CustomResNet
from modular import plots
from modular.checkpoint import RESUME_REQUIRED, CheckpointError, load_checkpoint
from modular.config import Config
from modular.data import CifarData, channel_stats, load_cifar10
from modular.device import Runtime, hardware_name, select_runtime, versions
from modular.evaluate import full_evaluation, gallery_sample
from modular.loaders import make_loaders
from modular.lr_finder import LRFindResult, range_test
from modular.provenance import code_version
from modular.train import FitResult, build_criterion, build_optimizer, fit, interactive
from modular.transforms import test_transforms, train_transforms


class OutputDirError(RuntimeError):
    """The output folder cannot be written."""


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path`` and prove it writable now, before hours of training, not after."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"cannot write to --output-dir {path} ({error.strerror or error}); "
                             "choose a folder you can write to") from None
    return path


def load_data(cfg: Config) -> CifarData:
    """CIFAR-10 from cfg.data_dir (or torchvision's download), reduced to cfg.subset if set."""
    data = load_cifar10(cfg.data_dir, cfg.download_root)
    return data.subset(cfg.subset, cfg.seed) if cfg.subset else data


@dataclass
class Setup:
    """Everything a run needs before its first step."""
    cfg: Config
    runtime: Runtime
    data: CifarData
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_transform: object
    test_transform: object
    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader


def setup(cfg: Config, data: CifarData | None = None, mean=None, std=None) -> Setup:
    """Validate the config, pick the device, load the data, compute its statistics (unless given),
    build the transforms and the loaders."""
    cfg.validate()
    runtime = select_runtime(cfg.device, cfg.precision)
    data = data if data is not None else load_data(cfg)
    if mean is None or std is None:
        mean, std = channel_stats(data.train_images)
    train_tf = train_transforms(mean, std, cfg.cutout_p, cfg.cutout_size, seed=cfg.seed)
    test_tf = test_transforms(mean, std)
    train_loader, test_loader = make_loaders(data, train_tf, test_tf, cfg, runtime)
    return Setup(cfg, runtime, data, tuple(mean), tuple(std), train_tf, test_tf, train_loader, test_loader)


def new_model(cfg: Config) -> CustomResNet:
    """The prescribed model, initialised from cfg.seed."""
    torch.manual_seed(cfg.seed)
    return CustomResNet(logit_scale=cfg.logit_scale)


def lr_range_test(s: Setup, model: torch.nn.Module) -> LRFindResult:
    """The range test with the training's own optimizer and loss; ``model`` is left as it was."""
    model = s.runtime.prepare_model(model)
    optimizer = build_optimizer(model, s.cfg, s.cfg.lr_find_start)
    return range_test(model, optimizer, build_criterion(s.cfg), s.train_loader, s.runtime, s.cfg,
                      show_progress=interactive())


def checkpoint_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "checkpoint.pt"


def find_checkpoint(cfg: Config, resume: bool) -> dict | None:
    """The checkpoint to continue from, or None for a fresh run.

    Without ``resume`` an existing checkpoint is an error (finished epochs are never overwritten
    silently). With it, the checkpoint must come from the same configuration.
    """
    path = checkpoint_path(cfg)
    if not path.exists():
        return None
    if not resume:
        raise CheckpointError(f"{path} already exists: pass --resume to continue that run, "
                              "or choose another --output-dir")
    state = load_checkpoint(path, RESUME_REQUIRED)
    differences = cfg.differences(Config.from_dict(state["config"]))
    if differences:
        raise CheckpointError(f"{path} belongs to another configuration ({'; '.join(differences[:3])}); "
                              "rerun with the same flags, or choose another --output-dir")
    return state


@dataclass
class RunFacts:
    """What a run decided before its first step; stored in every checkpoint and in the run record."""
    mean: list[float]
    std: list[float]
    lr_max: float
    lr_min: float                                   # lr_max / div_factor, the schedule's first LR
    lr_find: dict | None = None                     # the range test (LRFindResult.to_dict()); None with --max-lr
    lr_find_seconds: float = 0.0
    commit: list[dict] = field(default_factory=list)  # the code: one entry at the start, one more at every resume

    @classmethod
    def decided(cls, s: Setup, max_lr: float, found: LRFindResult | None = None, seconds: float = 0.0) -> RunFacts:
        return cls(list(s.mean), list(s.std), max_lr, max_lr / s.cfg.div_factor, found.to_dict() if found else None,
                   seconds, [code_version()])

    @classmethod
    def from_dict(cls, values: dict) -> RunFacts:
        """From a checkpoint or a run record (other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict:
        return asdict(self)


def build_record(s: Setup, facts: RunFacts, result: FitResult, evaluation: dict, wall_seconds: float) -> dict:
    """The run record (run.json): config, LRs, history, per-step LRs and the final evaluation."""
    history = result.history
    best = max(history, key=lambda row: row["test_acc"])
    return {
        "config": s.cfg.to_dict(),
        "seed": s.cfg.seed,
        "data_source": s.data.source,
        "train_images": int(len(s.data.train_labels)),
        "test_images": int(len(s.data.test_labels)),
        "classes": list(s.data.classes),
        **facts.to_dict(),
        "steps_per_epoch": len(s.train_loader),
        "peak_epoch": s.cfg.resolved_peak_epoch,
        "history": history,
        "lr_per_step": result.lr_per_step,
        **evaluation,
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "seconds_per_epoch": sum(row["seconds"] for row in history) / len(history),
        "wall_seconds": wall_seconds,
        "device": s.runtime.device.type,
        "precision": s.runtime.precision,
        "channels_last": s.runtime.channels_last,
        "hardware": hardware_name(s.runtime.device),
        "versions": versions(),
    }


def figures(record: dict, s: Setup) -> dict:
    """Every figure of a run by name. All but the two sample grids are drawn from the record alone
    (the misclassified gallery also looks up its test images by index)."""
    classes = record["classes"]
    images, labels = next(iter(s.train_loader))
    wrong = gallery_sample(record["misclassified"])
    found = {
        "train_samples": plots.plot_samples(images[:16], labels[:16].numpy(), classes, "augmented training images",
                                            mean=s.mean, std=s.std),
        "test_samples": plots.plot_samples(s.data.test_images[:16], s.data.test_labels[:16], classes, "test images"),
        "loss_accuracy": plots.plot_history(record["history"]),
        "one_cycle_lr": plots.plot_lr_schedule(record["lr_per_step"], record["steps_per_epoch"], record["peak_epoch"]),
        "misclassified": plots.plot_misclassified(
            s.data.test_images[[w["index"] for w in wrong]], [w["predicted"] for w in wrong],
            [w["actual"] for w in wrong], classes),
        "confusion_matrix": plots.plot_confusion_matrix(record["confusion_matrix"], classes),
        "per_class_accuracy": plots.plot_per_class_accuracy(record["per_class_acc"], classes),
    }
    if record.get("lr_find"):
        found["lr_range_test"] = plots.plot_lr_finder(**record["lr_find"])
    return found


def save_plots(record: dict, s: Setup, folder: str | Path) -> list[Path]:
    """Every figure of a run as <folder>/<name>.png."""
    return [plots.save_figure(fig, Path(folder) / f"{name}.png") for name, fig in figures(record, s).items()]


def decide_lr(s: Setup, model: torch.nn.Module, state: dict | None = None,
              log: Callable[[str], None] = print) -> RunFacts:
    """LRMAX and LRMIN for this run: from the checkpoint being resumed, from cfg.max_lr, or from
    the LR range test."""
    cfg = s.cfg
    if state is not None:
        facts = RunFacts.from_dict(state)
        facts.commit = [*facts.commit, code_version(from_epoch=int(state["epoch"]))]
    elif cfg.max_lr is not None:
        facts = RunFacts.decided(s, cfg.max_lr)
    else:
        log(f"LR range test: {cfg.lr_find_iters} steps from {cfg.lr_find_start:g} to {cfg.lr_find_end:g}")
        tested = time.perf_counter()
        found = lr_range_test(s, model)
        facts = RunFacts.decided(s, found.lr_max, found, time.perf_counter() - tested)
    log(f"LRMAX {facts.lr_max:.4g}, LRMIN {facts.lr_min:.4g} (OneCycle peak at epoch "
        f"{cfg.resolved_peak_epoch} of {cfg.epochs})")
    return facts


def train(s: Setup, model: torch.nn.Module, facts: RunFacts, resume: bool = True,
          log: Callable[[str], None] = print, state: dict | None = None) -> FitResult:
    """Fit with OneCycle, continuing <output_dir>/checkpoint.pt when ``resume`` (a finished run
    is not retrained: its recorded table is shown). ``state``: that checkpoint if the caller
    already loaded it; otherwise it is read here (a rerun notebook cell sees the newest one)."""
    prepare_output_dir(s.cfg.output_dir)
    if state is None:
        state = find_checkpoint(s.cfg, resume)
    if state is not None:
        log(f"resuming {checkpoint_path(s.cfg)} after epoch {state['epoch']} of {s.cfg.epochs}")
    return fit(model, s.train_loader, s.test_loader, s.cfg, s.runtime, facts.lr_max, checkpoint_path(s.cfg),
               facts=facts.to_dict(), resume_state=state, log=log)


def finish(s: Setup, facts: RunFacts, result: FitResult, log: Callable[[str], None] = print) -> dict:
    """Evaluate the trained model, write <output_dir>/run.json and the plots; return the record."""
    out = prepare_output_dir(s.cfg.output_dir)
    evaluated = time.perf_counter()
    evaluation = full_evaluation(result.model, s.test_loader, s.runtime, s.data.classes, build_criterion(s.cfg))
    # compute time of the whole run, the same whether or not it was interrupted and resumed
    wall = facts.lr_find_seconds + sum(row["seconds"] for row in result.history)
    record = build_record(s, facts, result, evaluation, wall + time.perf_counter() - evaluated)
    (out / "run.json").write_text(json.dumps(record, indent=1))
    save_plots(record, s, out)
    log(f"test accuracy {record['test_acc']:.2f}% (best {record['best_test_acc']:.2f}% at epoch "
        f"{record['best_epoch']}), flip TTA {record['tta_test_acc']:.2f}%; record: {out / 'run.json'}")
    return record


def run(cfg: Config, resume: bool = False, data: CifarData | None = None,
        log: Callable[[str], None] = print) -> dict:
    """The whole pipeline; returns the run record, also written to <output_dir>/run.json."""
    cfg.validate()
    out = prepare_output_dir(cfg.output_dir)
    state = find_checkpoint(cfg, resume)
    if resume and state is None:
        log(f"no checkpoint in {out}: starting a new run")
    s = setup(cfg, data, *((state["mean"], state["std"]) if state else (None, None)))
    log(f"data: {s.data.source}: {len(s.data.train_labels):,} train / {len(s.data.test_labels):,} test images; "
        f"device: {s.runtime.describe()}")
    model = new_model(cfg)
    facts = decide_lr(s, model, state, log)
    result = train(s, model, facts, resume, log, state=state)
    return finish(s, facts, result, log)
