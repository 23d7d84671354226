"""Which code made a run: the git commit of this checkout and whether its tree was clean."""

from __future__ import annotations

import subprocess

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
