"""What ``python -m modular train`` and ``lr-find`` do with a Learner, and the files they write:
lr_find.json and lr_range_test.png as soon as the range test ends, checkpoint.pt after every epoch (the
Learner's), then run.json and the plots, made from what the Learner returns. The notebook calls the
same Learner one step per cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from modular import figures, plots
from modular.checkpoint import Checkpoint, CheckpointError, checkpoint_path, find_checkpoint
from modular.config import Config
from modular.data import CifarData
from modular.learner import DivergenceError, FitResult, Learner
from modular.lr_finder import LRFindResult
from modular.plots import plot_lr_finder
from modular.tools.figure_files import save_figure
from modular.tools.jsonio import write_record
from modular.tools.provenance import code_version
from modular.tools.record import build_lr_find_record, build_record


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


def describe_range_test(cfg: Config) -> str:
    """What the range test is about to cost, said before it starts: it does not shrink with --subset."""
    return (f"LR range test: {cfg.lr_find_iters} steps of {cfg.batch_size} images ({cfg.lr_find_iters * cfg.batch_size:,} "
            f"images; --max-lr skips it) from {cfg.lr_find_start:g} to {cfg.lr_find_end:g}")


def lr_find_and_save(learner: Learner) -> LRFindResult:
    """``learner.lr_find()``, its record (lr_find.json) and plot (lr_range_test.png) written at once: a run
    of hours shows its pick (and ``lr-seeds`` can gather it) long before its run.json exists."""
    learner.log(describe_range_test(learner.cfg))
    found = learner.lr_find()
    out = Path(learner.cfg.output_dir)
    write_record(out / "lr_find.json", build_lr_find_record(learner, found, learner.facts.lr_find_seconds))
    plot = save_figure(plot_lr_finder(**found.to_dict()), out / "lr_range_test.png")
    learner.log(f"range test saved: {out / 'lr_find.json'}, {plot}")
    return found


def start(cfg: Config, checkpoint: Checkpoint | None, data: CifarData | None, log: Callable[[str], None]) -> Learner:
    """The Learner of a run begun or continued here, with this checkout's commit noted for this part."""
    learner = Learner(cfg, data, checkpoint, log=log)
    learner.facts.commit = [*learner.facts.commit, code_version(from_epoch=learner.epochs_done)]
    return learner


def train(cfg: Config, resume: bool = False, data: CifarData | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole run: range test (unless cfg.max_lr, or continuing), OneCycle fit, evaluation, run.json and
    the plots; returns the run record. A NaN loss writes the record of the last finished epoch, then raises."""
    out = prepare_output_dir(cfg.output_dir)
    checkpoint = find_checkpoint(cfg, resume)
    if resume and checkpoint is None:
        log(f"--resume: no checkpoint in {out}, so this starts a new run")
    learner = start(cfg, checkpoint, data, log)
    log(f"data: {learner.data.source}: {len(learner.data.train_labels):,} train / {len(learner.data.test_labels):,} "
        f"{cfg.evaluated_on} images; device: {learner.runtime.describe()}")
    if checkpoint is not None:
        done, source = checkpoint.epochs_done, checkpoint.weights.source
        log(f"{source} holds a finished run ({done} of {cfg.epochs} epochs): nothing left to train; its epochs:"
            if done >= cfg.epochs else f"resuming {source} after epoch {done} of {cfg.epochs}")
    if checkpoint is None and cfg.max_lr is None:
        lr_find_and_save(learner)
    else:
        log(f"LRMAX {learner.facts.lr_max:.4g}, LRMIN {learner.facts.lr_min:.4g} (OneCycle peak at epoch "
            f"{cfg.resolved_peak_epoch} of {cfg.epochs})")
    try:
        result = learner.fit_one_cycle()
    except DivergenceError as error:
        finish(learner, learner.rewind(), stopped=str(error))
        raise  # still a failure for the command line (exit 1), after the record is written
    return finish(learner, result)


def record_so_far(cfg: Config, data: CifarData | None = None, log: Callable[[str], None] = print) -> dict:
    """run.json for an unfinished run, without training further: its finished epochs, the last one
    evaluated, and "stopped" saying so. The checkpoint stays; ``--resume`` goes on, and the run's
    end writes its full record over this one (a Colab session that ran out at epoch 18 still gets
    its record and plots)."""
    checkpoint = find_checkpoint(cfg, resume=True)
    if checkpoint is None:
        raise CheckpointError(f"{checkpoint_path(cfg)} does not exist: no finished epoch to record (check --output-dir)")
    epoch = checkpoint.epochs_done
    if epoch >= cfg.epochs:
        raise CheckpointError(f"{checkpoint_path(cfg)} holds a finished run: --resume (without --record-so-far) "
                              "writes its full record")
    learner = start(cfg, checkpoint, data, log)
    return finish(learner, learner.result(), stopped=f"recorded with --record-so-far after epoch {epoch} of "
                                                     f"{cfg.epochs}; --resume continues the run")


def finish(learner: Learner, result: FitResult, stopped: str | None = None) -> dict:
    """Evaluate ``result.model``, write <output_dir>/run.json and the plots; return the record.
    ``stopped``: why training ended before its last epoch (the record keeps the model of the last
    finished epoch, evaluated; with no finished epoch there is nothing to evaluate)."""
    out, log = Path(learner.cfg.output_dir), learner.log
    if stopped and result.history:
        log(f"stopped: {stopped}; evaluating the last finished epoch ({len(result.history)})")
    evaluated = time.perf_counter()
    evaluation = learner.evaluate() if result.history else None
    # compute time of the whole run, the same whether or not it was interrupted and resumed
    wall = result.facts.lr_find_seconds + sum(row["seconds"] for row in result.history)
    record = write_record(out / "run.json", build_record(learner, result, evaluation,
                                                         wall + time.perf_counter() - evaluated, stopped))
    if evaluation is None:
        log(f"no epoch finished: nothing to evaluate; record: {out / 'run.json'}")
        return record
    save_run_figures(record, learner.data, learner.train_transform, out)
    log(f"{learner.cfg.evaluated_on} accuracy {record['test_acc']:.2f}% (best {record['best_test_acc']:.2f}% at epoch "
        f"{record['best_epoch']}), flip TTA {record['tta_test_acc']:.2f}%; record: {out / 'run.json'}")
    return record


def run_figures(record: dict, data: CifarData, train_transform) -> dict[str, Figure]:
    """Every figure of a finished run, by name, as drawn into its run folder and the README's images/.
    All but the sample grids are drawn from the record alone (the misclassified gallery also looks up
    its test images by index in ``data``, the test set the record names)."""
    classes = record["classes"]
    drawn = {
        "train_samples": figures.augmented_samples(data, train_transform, record["mean"], record["std"]),
        "test_samples": figures.sample_of_test_images(data),
        "loss_accuracy": plots.plot_history(record["history"]),
        "one_cycle_lr": plots.plot_lr_schedule(record["lr_per_step"], record["steps_per_epoch"], record["peak_epoch"]),
        "misclassified": figures.misclassified_gallery(data, record["misclassified"]),
        "confusion_matrix": plots.plot_confusion_matrix(record["confusion_matrix"], classes),
        "per_class_accuracy": plots.plot_per_class_accuracy(record["per_class_acc"], classes),
    }
    if record.get("lr_find"):
        drawn["lr_range_test"] = plots.plot_lr_finder(**record["lr_find"])
    return drawn


def save_run_figures(record: dict, data: CifarData, train_transform, folder: str | Path) -> list[Path]:
    """Every figure of a run as <folder>/<name>.png."""
    return [save_figure(fig, Path(folder) / f"{name}.png")
            for name, fig in run_figures(record, data, train_transform).items()]
