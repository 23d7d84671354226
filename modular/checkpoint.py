"""Atomic checkpoint writes and validated reads.

A checkpoint is one dict (torchvision's reference style): model, optimizer, scheduler, scaler,
epoch, history, lr_per_step, rng, config, and the run's facts (mean, std, lr_max, lr_min, lr_find).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMAT = "era-s10-checkpoint/1"
WEIGHTS_FORMAT = "era-s10-weights/1"  # modular/weights.py's file: told apart here so the error can say so
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
    """Write a training checkpoint (tagged with FORMAT) atomically; see ``save_atomic``."""
    return save_atomic({"format": FORMAT, **state}, path)


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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project; delete it or choose another --output-dir")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} (written by an older version, or stripped); "
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
