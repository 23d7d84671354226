"""Figures written to PNG files: a run's plots, the Grad-CAM figure, the seeds' range tests."""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders created), close it and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format="png")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a figure the caller made with pyplot: release it (no-op for ours)
        pyplot.close(fig)
    return path
