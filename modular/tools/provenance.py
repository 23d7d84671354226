"""Which code made a run: the git commit of this checkout, whether its tree was clean, and the versions of
the libraries it ran with."""

from __future__ import annotations

import platform
import subprocess

import torch

from modular.tools import REPO


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def code_version(from_epoch: int = 0) -> dict:
    """{"commit", "clean", "from_epoch"}: the checkout's HEAD and whether it had uncommitted changes
    (None for both outside a git checkout, e.g. a copied folder); ``from_epoch``: epochs already done."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if head else None
    return {"commit": head.strip() if head else None, "clean": None if status is None else status.strip() == "",
            "from_epoch": from_epoch}


def versions() -> dict[str, str]:
    """Installed versions of what a run depends on, read from package metadata: nothing is imported
    (importing torch_lr_finder here once printed tqdm's warning into the notebook)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name, distribution in (("numpy", "numpy"), ("torchvision", "torchvision"), ("albumentations", "albumentations"),
                               ("torch_lr_finder", "torch-lr-finder")):
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    return found
