"""The whole job, step by step: prepare (data, transforms, loaders, model) -> LR range test ->
OneCycle fit -> evaluation -> run record and figures. The command line (``run``) and the notebook
(one step per cell) call these same functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from modular.checkpoint import RESUME_REQUIRED, CheckpointError, load_checkpoint, load_model_state
from modular.config import Config
from modular.data import CifarData
from modular.evaluate import full_evaluation
from modular.figures import save_run_figures
from modular.jsonio import write_record
from modular.lr_finder import LRFindResult, range_test
from modular.plots import plot_lr_finder, save_figure
from modular.prepare import Prepared, new_model, prepare
from modular.record import RunFacts, build_lr_find_record, build_record
from modular.train import DivergenceError, FitResult, build_criterion, build_optimizer, fit


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


def lr_range_test(prepared: Prepared, model: torch.nn.Module, log: Callable[[str], None] = print) -> LRFindResult:
    """The range test with the training's own optimizer and loss; ``model`` is left as it was."""
    cfg = prepared.cfg
    model = prepared.runtime.prepare_model(model)
    optimizer = build_optimizer(model, cfg, cfg.lr_find_start)
    return range_test(model, optimizer, build_criterion(cfg), prepared.train_loader, prepared.runtime, cfg, log=log)


def describe_range_test(cfg: Config) -> str:
    """What the range test is about to cost, said before it starts: it does not shrink with --subset."""
    return (f"LR range test: {cfg.lr_find_iters} steps of {cfg.batch_size} images ({cfg.lr_find_iters * cfg.batch_size:,} "
            f"images; --max-lr skips it) from {cfg.lr_find_start:g} to {cfg.lr_find_end:g}")


def save_range_test(prepared: Prepared, found: LRFindResult, seconds: float) -> Path:
    """lr_find.json and lr_range_test.png in the output folder, written as soon as the test ends: a run
    of hours shows its pick (and ``lr-seeds`` can gather it) long before its run.json exists. Returns
    the plot's path."""
    out = prepare_output_dir(prepared.cfg.output_dir)
    write_record(out / "lr_find.json", build_lr_find_record(prepared, found, seconds))
    return save_figure(plot_lr_finder(**found.to_dict()), out / "lr_range_test.png")


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


def decide_lr(prepared: Prepared, model: torch.nn.Module, state: dict | None = None,
              log: Callable[[str], None] = print) -> RunFacts:
    """LRMAX and LRMIN for this run: from the checkpoint being resumed, from cfg.max_lr, or from
    the LR range test."""
    cfg = prepared.cfg
    if state is not None:
        facts = RunFacts.from_dict(state).resumed(prepared, int(state["epoch"]))
    elif cfg.max_lr is not None:
        facts = RunFacts.decided(prepared, cfg.max_lr)
    else:
        log(describe_range_test(cfg))
        tested = time.perf_counter()
        found = lr_range_test(prepared, model, log)
        seconds = time.perf_counter() - tested
        facts = RunFacts.decided(prepared, found.lr_max, found, seconds)
        plot = save_range_test(prepared, found, seconds)
        log(f"range test saved: {plot.with_name('lr_find.json')}, {plot}")
    log(f"LRMAX {facts.lr_max:.4g}, LRMIN {facts.lr_min:.4g} (OneCycle peak at epoch "
        f"{cfg.resolved_peak_epoch} of {cfg.epochs})")
    return facts


def train(prepared: Prepared, model: torch.nn.Module, facts: RunFacts, resume: bool = True,
          log: Callable[[str], None] = print, state: dict | None = None) -> FitResult:
    """Fit with OneCycle, continuing <output_dir>/checkpoint.pt when ``resume`` (a finished run
    is not retrained: its recorded table is shown). ``state``: that checkpoint if the caller
    already loaded it; otherwise it is read here (a rerun notebook cell sees the newest one)."""
    cfg = prepared.cfg
    prepare_output_dir(cfg.output_dir)
    if state is None:
        state = find_checkpoint(cfg, resume)
    if state is not None and int(state["epoch"]) >= cfg.epochs:
        log(f"{checkpoint_path(cfg)} holds a finished run ({state['epoch']} of {cfg.epochs} epochs): nothing left "
            "to train; its epochs:")
    elif state is not None:
        log(f"resuming {checkpoint_path(cfg)} after epoch {state['epoch']} of {cfg.epochs}")
    return fit(prepared, model, facts, checkpoint_path(cfg), resume_state=state, log=log)


def finish(prepared: Prepared, facts: RunFacts, result: FitResult, log: Callable[[str], None] = print,
           stopped: str | None = None) -> dict:
    """Evaluate the trained model, write <output_dir>/run.json and the plots; return the record.
    ``stopped``: why training ended before its last epoch (the record keeps the model of the last
    finished epoch, evaluated; with no finished epoch there is nothing to evaluate)."""
    out = prepare_output_dir(prepared.cfg.output_dir)
    evaluated = time.perf_counter()
    evaluation = {}
    if result.history:
        evaluation = full_evaluation(result.model, prepared.test_loader, prepared.runtime, prepared.data.classes,
                                     build_criterion(prepared.cfg), log=log)
    # compute time of the whole run, the same whether or not it was interrupted and resumed
    wall = facts.lr_find_seconds + sum(row["seconds"] for row in result.history)
    record = write_record(out / "run.json", build_record(prepared, facts, result.history, result.lr_per_step, evaluation,
                                                         wall + time.perf_counter() - evaluated, stopped))
    if not result.history:
        log(f"no epoch finished: nothing to evaluate; record: {out / 'run.json'}")
        return record
    save_run_figures(record, prepared, out)
    log(f"test accuracy {record['test_acc']:.2f}% (best {record['best_test_acc']:.2f}% at epoch "
        f"{record['best_epoch']}), flip TTA {record['tta_test_acc']:.2f}%; record: {out / 'run.json'}")
    return record


def finish_stopped(prepared: Prepared, facts: RunFacts, reason: str, log: Callable[[str], None] = print,
                   state: dict | None = None) -> dict:
    """The record of a run that stopped early (a NaN/inf loss, or --record-so-far): the last finished
    epoch (its checkpoint) evaluated, and why it stopped. A run that diverges is a result, not just an error.
    ``state``: that checkpoint if the caller already loaded it; otherwise it is read here."""
    path = checkpoint_path(prepared.cfg)
    if state is None and path.exists():
        state = load_checkpoint(path)
    model = prepared.runtime.prepare_model(new_model(prepared.cfg))
    if state is None:
        return finish(prepared, facts, FitResult([], [], model), log, stopped=reason)
    load_model_state(model, state, path)
    log(f"stopped: {reason}; evaluating the last finished epoch ({state['epoch']})")
    return finish(prepared, facts, FitResult(list(state["history"]), list(state["lr_per_step"]), model), log,
                  stopped=reason)


def record_so_far(cfg: Config, data: CifarData | None = None, log: Callable[[str], None] = print) -> dict:
    """run.json for an unfinished run, without training further: its finished epochs, the last one
    evaluated, and "stopped" saying so. The checkpoint stays; ``--resume`` goes on, and the run's
    end writes its full record over this one (a Colab session that ran out at epoch 18 still gets
    its record and plots)."""
    cfg.validate()
    state = find_checkpoint(cfg, resume=True)
    if state is None:
        raise CheckpointError(f"{checkpoint_path(cfg)} does not exist: no finished epoch to record (check --output-dir)")
    epoch = int(state["epoch"])
    if epoch >= cfg.epochs:
        raise CheckpointError(f"{checkpoint_path(cfg)} holds a finished run: --resume (without --record-so-far) "
                              "writes its full record")
    prepared = prepare(cfg, data, state["mean"], state["std"])
    facts = RunFacts.from_dict(state)
    return finish_stopped(prepared, facts, f"recorded with --record-so-far after epoch {epoch} of {cfg.epochs}; "
                                           "--resume continues the run", log, state)


def run(cfg: Config, resume: bool = False, data: CifarData | None = None,
        log: Callable[[str], None] = print) -> dict:
    """The whole pipeline; returns the run record, also written to <output_dir>/run.json."""
    cfg.validate()
    out = prepare_output_dir(cfg.output_dir)
    state = find_checkpoint(cfg, resume)
    if resume and state is None:
        log(f"--resume: no checkpoint in {out}, so this starts a new run")
    prepared = prepare(cfg, data, *((state["mean"], state["std"]) if state else (None, None)))
    data = prepared.data
    log(f"data: {data.source}: {len(data.train_labels):,} train / {len(data.test_labels):,} test images; "
        f"device: {prepared.runtime.describe()}")
    model = new_model(cfg)
    facts = decide_lr(prepared, model, state, log)
    try:
        result = train(prepared, model, facts, resume, log, state=state)
    except DivergenceError as error:
        finish_stopped(prepared, facts, str(error), log)
        raise  # still a failure for the command line (exit 1), after the record is written
    return finish(prepared, facts, result, log)
