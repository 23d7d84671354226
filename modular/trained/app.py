"""The trained network in the browser: ``python -m modular app`` (Gradio 6).

Upload a picture (read by modular/trained/images.py) or pick one of ten test images, see the top-k classes,
Grad-CAM for a layer and a class with an opacity, browse misclassified test images (the committed
sample, modular/trained/samples.py), and read what the network is from the committed run records. The
handlers are plain functions in modular/trained/handlers.py; ``build_app`` binds them to Gradio. Offline:
no analytics (modular/__init__.py), no share link, the default theme's bundled fonts; 127.0.0.1 unless
told otherwise.
"""

from __future__ import annotations

import html
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modular.trained.gradcam import LAYERS
from modular.trained.handlers import DISPLAY, PREDICTED, AppInputError, Explainer, about, classify, misclassified
from modular.trained.samples import FOLDER, Sample, check_sample, load_sample
from modular.trained.weights import SHIPPED, load_weights

RESULTS = Path(__file__).resolve().parents[2] / "results"
RECORDS = (RESULTS / "headline.json", RESULTS / "official-seed1.json", RESULTS / "official-seed2.json")
LOOPBACK = "127.0.0.1"


class AppSetupError(RuntimeError):
    """The app cannot start (no Gradio 6, a port in use); the message says what to do."""


# --------------------------------------------------------------------------------------------
# The app: the handlers bound to Gradio components
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppParts:
    """What the app shows, loaded and checked before the server starts."""
    explainer: Explainer
    sample: Sample
    about: str


def assemble(weights: str | os.PathLike = SHIPPED, records: Sequence[str | os.PathLike] = RECORDS,
             samples: str | os.PathLike = FOLDER) -> AppParts:
    """Load the weights and the sample, check the sample against the first record's test set."""
    trained = load_weights(weights)
    sample = load_sample(samples)
    if records:
        check_sample(sample, json.loads(Path(records[0]).read_text()), str(records[0]))
    return AppParts(Explainer(trained), sample, about([Path(r) for r in records], trained))


def _gradio():
    """Gradio 6, or AppSetupError saying how to install it (the training path does not need it)."""
    try:
        import gradio as gr
    except ImportError:
        raise AppSetupError("the app needs Gradio: pip install -r requirements-app.txt") from None
    if not gr.__version__.startswith("6."):
        raise AppSetupError(f"the app needs Gradio 6 (found {gr.__version__}): pip install -r requirements-app.txt")
    return gr


def _shown_in_page(handler):
    """``handler`` with AppInputError turned into gr.Error: a message in the page, not a traceback."""
    gr = _gradio()

    def run(*args):
        try:
            return handler(*args)
        except AppInputError as error:
            # the modal renders HTML: a file's name must not become markup
            raise gr.Error(html.escape(str(error)), duration=None, print_exception=False) from None

    return run


def build_app(parts: AppParts):
    """The Gradio Blocks: a Classify tab, a Misclassified tab and an About tab."""
    gr = _gradio()

    explainer, sample = parts.explainer, parts.sample
    layers = [(label, key) for key, label in LAYERS.items()]
    with gr.Blocks(title="Custom ResNet on CIFAR-10", analytics_enabled=False) as demo:
        gr.Markdown("# Custom ResNet on CIFAR-10\nA 32x32 classifier of airplanes, cars, birds, cats, deer, dogs, "
                    "frogs, horses, ships and trucks, and where it looks (Grad-CAM).")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    upload = gr.Image(type="filepath", sources=["upload", "clipboard"], height=300, elem_id="upload",
                                      label="A picture (any size or format: centre-cropped to a square, resized to 32x32)")
                    top_k = gr.Slider(1, len(explainer.classes), value=3, step=1, label="Top-k classes")
                    show_cam = gr.Checkbox(value=True, label="Grad-CAM")
                    layer = gr.Dropdown(layers, value="layer3", label="Grad-CAM layer")
                    target = gr.Dropdown([PREDICTED, *explainer.classes], value=PREDICTED, label="Grad-CAM for the class")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Grad-CAM opacity")
                    button = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    label = gr.Label(num_top_classes=len(explainer.classes), label="Top classes", elem_id="top-classes")
                    cam = gr.Image(type="numpy", format="png", label=f"What the network sees ({DISPLAY}x{DISPLAY})",
                                   height=DISPLAY + 60, interactive=False, buttons=["download"], elem_id="gradcam")
                    note = gr.Markdown()
            gr.Examples([[str(sample.path(item))] for item in sample.examples], inputs=[upload],
                        label="Examples: one test image per class", examples_per_page=len(sample.examples))
            button.click(_shown_in_page(lambda *a: classify(explainer, *a)), [upload, top_k, show_cam, layer, target, opacity],
                         [label, cam, note], api_name="classify", preprocess=False)
        with gr.Tab("Misclassified test images", visible=bool(sample.misclassified)) as wrong_tab:
            most = max(1, len(sample.misclassified))
            with gr.Row():
                count = gr.Slider(1, most, value=min(20, most), step=1,
                                  label=f"How many (of the {len(sample.misclassified)} in the app's sample)")
                wrong_cam = gr.Checkbox(value=False, label="Grad-CAM for the predicted class")
                wrong_layer = gr.Dropdown(layers, value="layer3", label="Grad-CAM layer")
                wrong_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Grad-CAM opacity")
            show = gr.Button("Show", variant="primary", elem_id="show")
            gallery = gr.Gallery(columns=5, format="png", label="True class → predicted class (its probability)",
                                 object_fit="contain",
                                 height="auto", allow_preview=True, elem_id="misclassified")
            gr.on([wrong_tab.select, show.click], _shown_in_page(lambda *a: misclassified(explainer, sample, *a)),
                  [count, wrong_cam, wrong_layer, wrong_opacity], gallery, api_name="misclassified")
        with gr.Tab("About the network"):
            gr.Markdown(parts.about, elem_id="about")
    return demo


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on now (for tests and the latency measurement)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(demo, parts: AppParts, host: str = LOOPBACK, port: int = 7860, **options) -> str:
    """Start serving ``demo`` on host:port in the background, offline (no share link, no SSR server),
    one request per event at a time; returns its URL. ``demo.close()`` stops it."""
    for name in ("NO_PROXY", "no_proxy"):  # Gradio checks its own server over HTTP: never through a proxy
        listed = [entry for entry in os.environ.get(name, "").split(",") if entry]
        os.environ[name] = ",".join(listed + [h for h in (LOOPBACK, "localhost") if h not in listed])
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, prevent_thread_lock=True,
                    allowed_paths=[str(parts.sample.folder)], show_error=True, quiet=True, **options)
    except OSError as error:  # Gradio: "Cannot find empty port in range ..."
        raise AppSetupError(f"cannot serve on {host}:{port} ({str(error).split('.')[0]}); pass another --port") from None
    return demo.local_url


def serve(weights: str | os.PathLike = SHIPPED, records: Sequence[str | os.PathLike] = RECORDS,
          samples: str | os.PathLike = FOLDER, host: str = LOOPBACK, port: int = 7860) -> None:
    """``python -m modular app``: serve until Ctrl-C."""
    parts = assemble(weights, records, samples)
    demo = build_app(parts)
    url = launch(demo, parts, host, port)
    if host != LOOPBACK:
        print(f"note: serving on {host}: anyone who can reach this computer on port {port} can use the app")
    print(f"the app is at {url} (Ctrl-C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()


def launch_in_notebook(weights: str | os.PathLike = SHIPPED):
    """The app below the notebook cell: in Colab through its port proxy (no share link, which would need
    the internet), elsewhere from 127.0.0.1. Returns the Blocks (``.close()`` stops it). In Colab, Gradio 6
    is installed from requirements-app.txt first if it is missing."""
    import importlib.util
    import subprocess
    import sys

    if "google.colab" in sys.modules and importlib.util.find_spec("gradio") is None:
        requirements = Path(__file__).resolve().parents[2] / "requirements-app.txt"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    parts = assemble(weights)
    demo = build_app(parts)
    launch(demo, parts, port=free_port(), inline=True, height=900)
    return demo
