"""The run record: what a run decided before its first step (``RunFacts``, also in every
checkpoint) and the record written as run.json when it ends."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from modular.device import Runtime, hardware_name, versions
from modular.prepare import Prepared
from modular.provenance import code_version
from modular.testset import TestSetIdentity

if TYPE_CHECKING:  # annotation only: the record needs no range-test code at run time
    from modular.lr_finder import LRFindResult


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
    ran_on: list[dict] = field(default_factory=list)  # device, precision, hardware: likewise (older runs: empty)

    @classmethod
    def decided(cls, prepared: Prepared, max_lr: float, found: LRFindResult | None = None, seconds: float = 0.0) -> RunFacts:
        """For a new run: ``max_lr`` from the range test ``found`` or from --max-lr."""
        return cls(list(prepared.mean), list(prepared.std), max_lr, max_lr / prepared.cfg.div_factor,
                   found.to_dict() if found else None, seconds, [code_version()], [runtime_part(prepared.runtime)])

    def resumed(self, prepared: Prepared, epoch: int) -> RunFacts:
        """These facts for the part of the run that resumes after ``epoch`` epochs: its code and its
        machine added (a T4 run resumed on an A100 goes from fp16 to bf16: the record says so)."""
        self.commit = [*self.commit, code_version(from_epoch=epoch)]
        self.ran_on = [*self.ran_on, runtime_part(prepared.runtime, from_epoch=epoch)]
        return self

    @classmethod
    def from_dict(cls, values: dict) -> RunFacts:
        """From a checkpoint or a run record (other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict:
        return asdict(self)


def runtime_part(runtime: Runtime, from_epoch: int = 0) -> dict:
    """What one part of a run (the start, or a resume after ``from_epoch`` epochs) ran on."""
    return {"from_epoch": from_epoch, "device": runtime.device.type, "precision": runtime.precision,
            "channels_last": runtime.channels_last, "hardware": hardware_name(runtime.device)}


def _what_ran(prepared: Prepared) -> dict:
    """The fields a run record and a range-test record share about what ran: config, seed, training data."""
    return {"config": prepared.cfg.to_dict(), "seed": prepared.cfg.seed, "data_source": prepared.data.source,
            "train_images": int(len(prepared.data.train_labels))}


def _where_it_ran(runtime: Runtime) -> dict:
    """...and where: device, precision, layout, hardware (as in ``runtime_part``), library versions."""
    part = runtime_part(runtime)
    del part["from_epoch"]
    return {**part, "versions": versions()}


def build_record(prepared: Prepared, facts: RunFacts, history: list[dict], lr_per_step: list[float],
                 evaluation: dict, wall_seconds: float, stopped: str | None = None) -> dict:
    """The run record (run.json): config, LRs, history, per-step LRs and the final evaluation;
    ``stopped``: why a run ended before its last epoch (then "stopped" says so, and after which epoch)."""
    best = max(history, key=lambda row: row["test_acc"]) if history else {"test_acc": None, "epoch": None}
    data = prepared.data
    return {
        **_what_ran(prepared),
        "test_images": int(len(data.test_labels)),
        "test_set": TestSetIdentity.of(data).to_dict(),  # what the misclassified indices point into
        "classes": list(data.classes),
        **facts.to_dict(),
        "steps_per_epoch": len(prepared.train_loader),
        "peak_epoch": prepared.cfg.resolved_peak_epoch,
        "history": history,
        "lr_per_step": lr_per_step,
        **evaluation,
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        **({"stopped": {"reason": stopped, "after_epoch": len(history)}} if stopped else {}),
        "seconds_per_epoch": sum(row["seconds"] for row in history) / len(history) if history else None,
        "wall_seconds": wall_seconds,
        **_where_it_ran(prepared.runtime),      # the last part's (all parts': ran_on)
    }


def build_lr_find_record(prepared: Prepared, found: LRFindResult, seconds: float) -> dict:
    """The record of a range test alone (lr_find.json): the range test under "lr_find", as in a run
    record, with what it ran on, so several seeds' tests can be gathered and compared."""
    return {
        **_what_ran(prepared),
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "lr_find": found.to_dict(),
        "lr_find_seconds": seconds,
        "commit": [code_version()],
        **_where_it_ran(prepared.runtime),
    }

