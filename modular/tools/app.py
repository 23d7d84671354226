"""The trained network in the browser: ``python -m modular app`` (Gradio 6).

Upload a picture (read by modular/tools/images.py) or pick one of ten test images, see the top-k classes,
Grad-CAM for a layer and a class with an opacity, browse misclassified test images (the committed
sample, modular/tools/app_samples.py), and read what the network is from the committed run records. The
handlers are plain functions in modular/tools/app_handlers.py; ``build_app`` binds them to Gradio. Offline:
no analytics (modular/tools/__init__.py), no share link, only the fonts Gradio bundles; 127.0.0.1 unless
told otherwise.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modular.tools import REPO, RESULTS
from modular.tools.app_handlers import (
    DISPLAY,
    HINT,
    PREDICTED,
    Explainer,
    about,
    browser_preview,
    shown_classify,
    shown_misclassified,
)
from modular.tools.app_samples import FOLDER, Sample, check_sample, load_sample
from modular.tools.gradcam import LAYERS
from modular.tools.weights import SHIPPED, load_weights

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


CSS = """
/* The picture in the upload box at the box's size, its pixels kept square: a 32x32 example is not a speck */
#upload .image-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* The misclassified gallery in the page, not in a box of its own (Gradio caps a gallery at 55% of the window) */
#misclassified .grid-wrap { max-height: none; min-height: 0; overflow-y: visible; }
/* As many columns of at least 112 px as fit; each caption under its picture, not on it */
#misclassified .grid-container { grid-template-columns: repeat(auto-fill, minmax(112px, 1fr)); grid-template-rows: none;
  grid-auto-rows: auto; }
#misclassified .grid-container .thumbnail-item { height: auto; aspect-ratio: auto; display: flex; flex-direction: column; }
#misclassified .grid-container .thumbnail-item > img { aspect-ratio: 1 / 1; height: auto; image-rendering: pixelated; }
#misclassified .grid-container .caption-label { position: static; max-width: none; white-space: normal; border: none;
  border-radius: 0; text-align: center; opacity: 1; }
/* On a phone: three columns of pictures, and the gallery's controls one under the other */
@media (max-width: 640px) {
  #misclassified .grid-container { grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)); }
  #gallery-controls .form > .block { min-width: 100% !important; }
}
"""


def theme(gr):
    """Gradio's default theme with faces that hold every glyph: its bundled Source Sans Pro and IBM Plex Mono
    in their regular (400) and bold (700) files. Their semibold (600) files hold 55 and 75 glyphs, so bold
    text mixed real letters with faked ones; text set at 600 is drawn with the 700 face instead."""
    return gr.themes.Default(
        font=(gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)), "ui-sans-serif", "system-ui", "sans-serif"),
        font_mono=(gr.themes.LocalFont("IBM Plex Mono", weights=(400, 700)), "ui-monospace", "Consolas", "monospace"))


def build_app(parts: AppParts):
    """The Gradio Blocks: a Classify tab, a Misclassified tab and an About tab. Every control answers as it
    changes: always_last keeps one call running and only the latest waiting, so a dragged slider does not
    queue a Grad-CAM call per position behind the model's lock."""
    gr = _gradio()

    explainer, sample = parts.explainer, parts.sample
    layers = [(label, key) for key, label in LAYERS.items()]
    live = {"trigger_mode": "always_last", "preprocess": False}  # the handlers check values and say what is wrong
    with gr.Blocks(title="Custom ResNet on CIFAR-10", analytics_enabled=False) as demo:
        gr.Markdown("# Custom ResNet on CIFAR-10\nA 32x32 classifier of airplanes, cars, birds, cats, deer, dogs, "
                    "frogs, horses, ships and trucks, and where it looks (Grad-CAM).")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    upload = gr.Image(type="filepath", sources=["upload", "clipboard"], height=300, elem_id="upload",
                                      label="Your picture (any size or format)")
                    top_k = gr.Slider(1, len(explainer.classes), value=3, step=1, label="Top-k classes", elem_id="top-k",
                                      buttons=[])  # no reset button: its "↺" is in no bundled font
                    show_cam = gr.Checkbox(value=True, label="Grad-CAM", elem_id="show-cam")
                    layer = gr.Dropdown(layers, value="layer3", label="Grad-CAM layer", elem_id="layer")
                    target = gr.Dropdown([PREDICTED, *explainer.classes], value=PREDICTED, label="Grad-CAM for the class",
                                         elem_id="target")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Grad-CAM opacity", elem_id="opacity", buttons=[])
                    button = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    message = gr.Markdown(HINT, elem_id="message")
                    label = gr.Label(num_top_classes=len(explainer.classes), label="Top classes", elem_id="top-classes")
                    cam = gr.Image(type="numpy", format="png", label=f"What the network sees ({DISPLAY}x{DISPLAY})",
                                   height=DISPLAY + 60, interactive=False, buttons=["download"], elem_id="gradcam")
                    note = gr.Markdown(elem_id="note")
            gr.Examples([[str(sample.path(item))] for item in sample.examples], inputs=[upload],
                        label="Examples: one test image per class", examples_per_page=len(sample.examples))
            # an upload, an example, a removed picture (an empty result) and every control answer at once
            gr.on([button.click, upload.change, top_k.change, show_cam.change, layer.change, target.change, opacity.change],
                  lambda *a: shown_classify(explainer, *a), [upload, top_k, show_cam, layer, target, opacity],
                  [label, cam, note, message], api_name="classify", **live)
            # a TIFF's own preview is broken in a browser: a PNG copy takes its place (and is classified as the TIFF)
            upload.upload(lambda picture: browser_preview(picture) or gr.skip(), upload, upload, preprocess=False,
                          api_visibility="private", show_progress="hidden")
        with gr.Tab("Misclassified", visible=bool(sample.misclassified)):
            most = max(1, len(sample.misclassified))
            gr.Markdown(f"Test images of the app's sample ({len(sample.misclassified)} in all) that the network gets "
                        "wrong, captioned true class → predicted class (its probability). Click one to enlarge it.")
            with gr.Row(elem_id="gallery-controls"):
                count = gr.Slider(1, most, value=min(40, most), step=1, label="How many",
                                  info="pictures shown, and Grad-CAM maps drawn", elem_id="how-many", buttons=[])
                wrong_cam = gr.Checkbox(value=False, label="Grad-CAM for the predicted class", elem_id="wrong-cam")
                wrong_layer = gr.Dropdown(layers, value="layer3", label="Grad-CAM layer", elem_id="wrong-layer")
                wrong_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Grad-CAM opacity", elem_id="wrong-opacity",
                                          buttons=[])
            wrong_message = gr.Markdown(elem_id="gallery-message")
            gallery = gr.Gallery(format="png", show_label=False, object_fit="contain", allow_preview=True,
                                 buttons=["download", "fullscreen"], elem_id="misclassified")  # no share: it needs the Hub
            gr.on([demo.load, count.change, wrong_cam.change, wrong_layer.change, wrong_opacity.change],
                  lambda *a: shown_misclassified(explainer, sample, *a), [count, wrong_cam, wrong_layer, wrong_opacity],
                  [gallery, wrong_message], api_name="misclassified", **live)
        with gr.Tab("About"):
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
    gr = _gradio()
    try:
        demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, prevent_thread_lock=True,
                    allowed_paths=[str(parts.sample.folder)], show_error=True, quiet=True, theme=theme(gr), css=CSS,
                    **options)
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
        requirements = REPO / "requirements-app.txt"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    parts = assemble(weights)
    demo = build_app(parts)
    launch(demo, parts, port=free_port(), inline=True, height=900)
    return demo
