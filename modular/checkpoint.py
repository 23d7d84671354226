"""What a run starts from, and the checkpoint written after every epoch.

Three kinds of start, one small type each: ``Weights`` (trained weights and the statistics they were
trained with: a weights file), ``RunSoFar`` (weights with the epochs and decisions of the run that made
them: the shipped weights with their record) and ``Checkpoint`` (a ``RunSoFar`` with what continuing it
bitwise needs: optimizer, scheduler, scaler, RNG, config). On disk a checkpoint is one dict
(torchvision's reference style), written atomically (``robust.save_atomic``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from modular.config import Config
from modular.robust import save_atomic

CHECKPOINT_FORMAT = "era-s10-checkpoint/1"
REQUIRED = ("format", "model", "optimizer", "scheduler", "epoch", "history", "config")
# what continuing a run reads besides: the RNG, the LR trace and the run's decisions (mean, std, LRMAX)
RESUME_REQUIRED = (*REQUIRED, "rng", "lr_per_step", "lr_max", "lr_min", "mean", "std")
START_OVER = "delete it to start over, or choose another --output-dir"  # the fix when a run's own checkpoint fails


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit this run; the message names the file."""


@dataclass
class RunFacts:
    """What a run decided before its first step; stored in every checkpoint and in the run record
    (these names are the record's fields)."""
    mean: list[float]
    std: list[float]
    lr_max: float | None = None                     # OneCycle's peak: from the range test or --max-lr
    lr_min: float | None = None                     # lr_max / div_factor, the schedule's first LR
    lr_find: dict | None = None                     # the range test (LRFindResult.to_dict()); None with --max-lr
    lr_find_seconds: float = 0.0
    commit: list[dict] = field(default_factory=list)  # the code of each part (start, every resume): the CLI notes it
    ran_on: list[dict] = field(default_factory=list)  # device, precision, hardware of each part

    @classmethod
    def from_dict(cls, values: dict) -> RunFacts:
        """From a checkpoint or a run record (other keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Weights:
    """Trained weights (a state_dict) and the channel statistics their inputs were normalized with."""
    model: dict[str, torch.Tensor]
    mean: list[float]
    std: list[float]
    source: str                                     # names them in messages: a file, usually


@dataclass(frozen=True)
class RunSoFar:
    """A run's weights after its last finished epoch, with its epochs and decisions."""
    weights: Weights
    facts: RunFacts
    history: list[dict]                             # one row per finished epoch
    lr_per_step: list[float]

    @property
    def epochs_done(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class Checkpoint(RunSoFar):
    """A ``RunSoFar`` with what continuing it needs to give the same bits as a run never stopped."""
    optimizer: dict
    scheduler: dict
    scaler: dict | None                             # GradScaler's (fp16 only)
    rng: torch.Tensor                               # torch's CPU generator
    config: dict                                    # the Config it was trained with
    ema: dict | None = None                         # the weights' moving average (cfg.ema_decay), if the run keeps one

    @classmethod
    def from_dict(cls, state: dict[str, Any], source: str) -> Checkpoint:
        facts = RunFacts.from_dict(state)
        return cls(Weights(state["model"], facts.mean, facts.std, source), facts, list(state["history"]),
                   list(state["lr_per_step"]), state["optimizer"], state["scheduler"], state.get("scaler"),
                   state["rng"]["torch"], state["config"], state.get("ema"))

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk (the same keys since the first version, so every checkpoint resumes)."""
        return {"format": CHECKPOINT_FORMAT, "model": self.weights.model, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.scaler, "epoch": self.epochs_done, "history": self.history,
                "lr_per_step": self.lr_per_step, "rng": {"torch": self.rng}, "config": self.config,
                **({"ema": self.ema} if self.ema is not None else {}), **self.facts.to_dict()}


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` atomically (``robust.save_atomic``): a crash mid-write leaves the previous one."""
    return save_atomic(checkpoint.to_dict(), path)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED, fix: str = START_OVER) -> dict[str, Any]:
    """Read a checkpoint's dict on the CPU; CheckpointError, ending with ``fix``, if it is missing,
    truncated, corrupt, foreign or lacks one of ``required`` (RESUME_REQUIRED to continue training it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, bad pickle, wrong file type: torch's own words say nothing more useful
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or damaged; {fix}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this project; {fix}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} (stripped, or written before this version); {fix}")
    return state


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path``, complete enough to continue its run."""
    return Checkpoint.from_dict(load_checkpoint(path, RESUME_REQUIRED), str(path))


def load_model_state(model: torch.nn.Module, weights: Weights) -> None:
    """Load weights, turning a shape or key mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(weights.model)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # line 0 is "Error(s) in loading state_dict for ..."
        raise CheckpointError(f"{weights.source} holds weights of another model ({detail.rstrip('.')})") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore a checkpoint's optimizer state, keeping this run's choice of fused kernels (the saved
    param groups carry the flag of the run that wrote them, possibly on another device) and this
    run's memory layout: buffers shaped like their parameter (momentum, Adam's averages) take its
    strides. A checkpoint written in NCHW (on MPS, or by an older CPU fp32 run) otherwise keeps NCHW
    buffers beside channels_last parameters, and fused SGD on CUDA refuses to step with them."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flag in zip(optimizer.param_groups, fused):
        group["fused"] = flag
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def checkpoint_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "checkpoint.pt"


def find_checkpoint(cfg: Config, resume: bool) -> Checkpoint | None:
    """The checkpoint in cfg.output_dir to continue, or None for a new run.

    Without ``resume`` an existing checkpoint is an error (finished epochs are never overwritten
    silently). With it, the checkpoint must come from the same configuration.
    """
    path = checkpoint_path(cfg)
    if not path.exists():
        return None
    if not resume:
        raise CheckpointError(f"{path} already exists: pass --resume to continue that run, "
                              "or choose another --output-dir")
    checkpoint = read_checkpoint(path)
    differences = cfg.differences(Config.from_dict(checkpoint.config))
    if differences:
        raise CheckpointError(f"{path} belongs to another configuration ({'; '.join(differences[:3])}); "
                              "rerun with the same flags, or choose another --output-dir")
    return checkpoint
