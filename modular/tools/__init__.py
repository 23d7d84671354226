"""The tools around the assignment's core: the command line (``python -m modular``), run records and
the README tables written from them, the benchmark, several seeds' range tests, the test set's
identity, the shipped weights, predictions on pictures, Grad-CAM, the Gradio app with its sample and
its response time, the notebook's settings, and a synthetic CIFAR-10 (the notebook's quick mode, the
tests, the benchmark). They import the core (``modular``); the core imports none of them.

Here: the paths they share (the repository, its results/, the shipped weights), and the switches that
keep Gradio and Hugging Face from reporting home, set before any tool imports them."""

import os as _os
from pathlib import Path

# Nothing here talks to the internet on its own: no Gradio analytics or version check (Gradio and
# gradio_client read GRADIO_ANALYTICS_ENABLED each time an app or a client is made), no Hugging Face
# telemetry (huggingface_hub reads HF_HUB_DISABLE_TELEMETRY once, when it is first imported: by
# albumentations, so this holds where a tool is imported before the core's transforms, as
# ``python -m modular`` does; Gradio's own switch above is what keeps the app quiet either way).
for _name, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_name, _value)

REPO = Path(__file__).resolve().parents[2]  # the repository's root: results/, requirements-app.txt, git
RESULTS = REPO / "results"
# The trained weights the repository ships (relative to its root): tracked, so written only when named.
# modular/tools/weights.py reads and writes them; here, so that the command line's help names them without
# importing torch.
SHIPPED_WEIGHTS = "results/custom_resnet_cifar10.pt"
