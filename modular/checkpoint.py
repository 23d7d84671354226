"""Atomic checkpoint writes and validated reads, and what a run keeps in every checkpoint.

A checkpoint is one dict (torchvision's reference style): model, optimizer, scheduler, scaler,
epoch, history, lr_per_step, rng, config, and the run's facts (``RunFacts``: mean, std, lr_max, lr_min,
lr_find, ...).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from modular.config import Config

CHECKPOINT_FORMAT = "era-s10-checkpoint/1"
WEIGHTS_FORMAT = "era-s10-weights/1"  # modular/tools/weights.py's file: told apart here so the error can say so
REQUIRED = ("format", "model", "optimizer", "scheduler", "epoch", "history", "config")
# what continuing a run reads besides: the RNG, the LR trace and the run's decisions (mean, std, LRMAX)
RESUME_REQUIRED = (*REQUIRED, "rng", "lr_per_step", "lr_max", "lr_min", "mean", "std")
# Another machine's temporary file is its own business while it may still be written: a folder on
# Google Drive is shared by Colab VMs, and a pid says nothing about another machine. Left this long
# untouched, though, it is a dead machine's leftover (a write takes seconds to minutes).
FOREIGN_TMP_STALE_SECONDS = 24 * 3600


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit this run; the message names the file."""


def save_atomic(payload: Any, path: str | os.PathLike) -> Path:
    """torch.save ``payload`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, renamed over the old one, then the folder synced so the rename itself survives a power cut.
    A crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{host_tag()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    _remove_orphans(path)
    return path


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def host_tag() -> str:
    """This machine's name as temporary files carry it: letters, digits and '-' (no dots)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown-host"


def _remove_orphans(path: Path) -> None:
    """Delete temporary files (``.<name>.<host>.<pid>.<random>.tmp``) left by writers killed mid-write.
    On this machine: those whose process is gone; a file a live process is still writing stays.
    Another machine's (a shared folder): only once untouched for FOREIGN_TMP_STALE_SECONDS, its pid
    meaning nothing here. Files named otherwise (older versions wrote no host) are left alone."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        parts = stale.name[len(path.name) + 2:-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        host, pid = parts[0], int(parts[1])
        if host == host_tag():
            if pid != os.getpid() and _alive(pid):
                continue
        else:
            try:
                if time.time() - stale.stat().st_mtime < FOREIGN_TMP_STALE_SECONDS:
                    continue
            except OSError:  # removed meanwhile
                continue
        stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training checkpoint (tagged with CHECKPOINT_FORMAT) atomically; see ``save_atomic``."""
    return save_atomic({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """Read a checkpoint on the CPU; CheckpointError if it is missing, truncated, corrupt, foreign or
    lacks one of ``required`` (RESUME_REQUIRED to continue training it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, wrong file type...
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path} ({reason}); delete it to start over") from None
    if isinstance(state, dict) and state.get("format") == WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is a weights file, not a training checkpoint: evaluate, predict and gradcam "
                              "take it with --weights")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project; delete it or choose another --output-dir")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} (stripped, or written before this version); "
                              "delete it to start over, or choose another --output-dir")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """Load weights, turning a shape or key mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # line 0 is "Error(s) in loading state_dict for ..."
        raise CheckpointError(f"{path} holds weights of another model ({detail.rstrip('.')})") from None


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


def checkpoint_path(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "checkpoint.pt"


def find_checkpoint(cfg: Config, resume: bool) -> dict | None:
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
    state = load_checkpoint(path, RESUME_REQUIRED)
    differences = cfg.differences(Config.from_dict(state["config"]))
    if differences:
        raise CheckpointError(f"{path} belongs to another configuration ({'; '.join(differences[:3])}); "
                              "rerun with the same flags, or choose another --output-dir")
    return state
