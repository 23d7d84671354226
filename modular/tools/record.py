"""The run record (run.json) and the range test's record (lr_find.json), made from what a Learner
returns, with what the Learner does not know: the commit (noted by the command line) and the library
versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modular.device import Runtime, runtime_part
from modular.evaluate import Evaluation
from modular.tools.provenance import code_version, versions
from modular.tools.testset import TestSetIdentity

if TYPE_CHECKING:  # annotations only
    from modular.learner import FitResult, Learner
    from modular.lr_finder import LRFindResult


TIMINGS = ("seconds", "checkpoint_seconds")  # the fields of an epoch's row that differ between two identical runs


def without_timings(history: list[dict]) -> list[dict]:
    """A run's epoch rows without their timings: what a rerun of the same seed reproduces exactly."""
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in history]


def _what_ran(learner: Learner) -> dict:
    """The fields a run record and a range-test record share about what ran: config, seed, training data."""
    return {"config": learner.cfg.to_dict(), "seed": learner.cfg.seed, "data_source": learner.data.source,
            "train_images": int(len(learner.data.train_labels))}


def _where_it_ran(runtime: Runtime) -> dict:
    """...and where: device, precision, layout, hardware (as in ``runtime_part``), library versions."""
    part = runtime_part(runtime)
    del part["from_epoch"]
    return {**part, "versions": versions()}


def build_record(learner: Learner, result: FitResult, evaluation: Evaluation | None, wall_seconds: float,
                 stopped: str | None = None) -> dict:
    """The run record (run.json): config, LRs, history, per-step LRs and the final evaluation;
    ``stopped``: why a run ended before its last epoch (then "stopped" says so, and after which epoch)."""
    history = result.history
    best = max(history, key=lambda row: row["test_acc"]) if history else {"test_acc": None, "epoch": None}
    data = learner.data
    return {
        **_what_ran(learner),
        "test_images": int(len(data.test_labels)),
        "test_set": TestSetIdentity.of(data).to_dict(),  # what the misclassified indices point into
        "classes": list(data.classes),
        **result.facts.to_dict(),
        "steps_per_epoch": len(learner.train_loader),
        "peak_epoch": learner.cfg.resolved_peak_epoch,
        "history": history,
        "lr_per_step": result.lr_per_step,
        **(evaluation.to_dict() if evaluation else {}),
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        **({"stopped": {"reason": stopped, "after_epoch": len(history)}} if stopped else {}),
        "seconds_per_epoch": sum(row["seconds"] for row in history) / len(history) if history else None,
        "wall_seconds": wall_seconds,
        **_where_it_ran(learner.runtime),      # the last part's (all parts': ran_on)
    }


def build_lr_find_record(learner: Learner, found: LRFindResult, seconds: float) -> dict:
    """The record of a range test alone (lr_find.json): the range test under "lr_find", as in a run
    record, with what it ran on, so several seeds' tests can be gathered and compared."""
    return {
        **_what_ran(learner),
        "mean": list(learner.facts.mean),
        "std": list(learner.facts.std),
        "lr_find": found.to_dict(),
        "lr_find_seconds": seconds,
        "commit": [code_version()],
        **_where_it_ran(learner.runtime),
    }
