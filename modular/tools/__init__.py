"""The tools around the assignment's core: the command line (``python -m modular``), run records and
the README tables written from them, the benchmark, several seeds' range tests, the test set's
identity, the shipped weights, predictions on pictures, Grad-CAM, and the Gradio app with its sample
and its response time. They import the core (``modular``); the core imports none of them."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root: results/, requirements-app.txt, git
RESULTS = REPO / "results"
