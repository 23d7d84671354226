"""The app's handlers as plain functions (tested without a server): the top-k classes of a picture with
its Grad-CAM map, the misclassified test images of the committed sample, and what the network is, from
the committed run records. ``shown_*`` are what the page calls: input they cannot use is a message in
place of the result, never an exception. modular/tools/app.py binds them to Gradio."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modular.tools.app_samples import Sample
from modular.tools.gradcam import LAYERS, gradcam_maps, on_own_scale
from modular.tools.images import ImageError, UserImage, open_image, read_image, upright_rgb
from modular.tools.weights import TrainedModel, sha256
from modular.transforms import test_transforms

DISPLAY = 256             # side of the picture with its Grad-CAM map: 8 screen pixels per input pixel
THUMB = 128               # side of a misclassified image in the gallery
PREDICTED = "the predicted class"
SMALL = 16                # a picture with a side under this many pixels is warned about: enlarged, it holds little
HINT = "Upload a picture, or click one of the examples below."
BROWSER_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "ICO")  # Pillow's names of formats browsers show
PREVIEW = ".preview.png"  # suffix of the PNG shown in place of an upload the browser cannot show, beside it
PREVIEW_SIDE = 1024       # the preview's longest side at most


class AppInputError(ValueError):
    """Input the app cannot use; the message is shown in the page."""


class Explainer:
    """The trained model behind every handler. One lock covers every use: pytorch-grad-cam zeroes the
    gradients and calls backward on this shared model, and two calls at once crash the process."""

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self.classes = trained.classes
        self._normalize = test_transforms(trained.mean, trained.std)
        self._lock = threading.Lock()

    def _batch(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.stack([self._normalize(image=image)["image"] for image in pixels])

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """N x classes softmax of uint8 N x 32 x 32 x 3 pictures."""
        batch = self._batch(pixels)
        with self._lock, torch.no_grad():
            return torch.softmax(self.trained.model(batch), 1).numpy()

    def maps(self, pixels: np.ndarray, classes: Sequence[int], layer: str) -> np.ndarray:
        """N x 32 x 32 Grad-CAM maps >= 0, not normalised, for one class per picture at ``layer`` (a key of LAYERS)."""
        batch = self._batch(pixels)
        with self._lock:
            return gradcam_maps(self.trained.model, batch, classes, layer)


def overlay(pixels: np.ndarray, heat: np.ndarray | None, opacity: float, side: int) -> np.ndarray:
    """The 32x32 picture at side x side, its pixels kept square (nearest), with the map (smoothly
    enlarged) blended over it at ``opacity`` by pytorch-grad-cam's own colouring."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    big = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_NEAREST)
    if heat is None or opacity == 0:
        return big
    mask = cv2.resize(heat, (side, side), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(big.astype(np.float32) / 255.0, mask, use_rgb=True, image_weight=1.0 - opacity)


def literal(text: str) -> str:
    """``text`` (a file name, a message) shown as it is in Markdown: no markup, no emphasis, no link."""
    return re.sub(r"([\\`*_\[\]])", r"\\\1", html.escape(text, quote=False))


def _whole(value, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not low <= value <= high:
        raise AppInputError(f"{what} must be a whole number from {low} to {high} (got {value!r})")
    return int(value)


def _checked(explainer: Explainer, layer: str, opacity, target: str | None = None) -> tuple[str, float, str | None]:
    if layer not in LAYERS:
        raise AppInputError(f"layer must be one of {', '.join(LAYERS)} (got {layer!r})")
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise AppInputError(f"opacity must be from 0 to 1 (got {opacity!r})")
    if target is not None and target != PREDICTED and target not in explainer.classes:
        raise AppInputError(f"Grad-CAM class must be {PREDICTED!r} or one of {', '.join(explainer.classes)} (got {target!r})")
    return layer, float(opacity), target


def _path_and_name(upload) -> tuple[str, str]:
    """A path, or Gradio's file payload (a dict with "path" and "orig_name")."""
    path = str(upload.get("path") if isinstance(upload, dict) else upload)
    return path, (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(path).name


def read_upload(upload) -> UserImage:
    """The uploaded picture; for the PNG preview that browser_preview put beside an upload, the upload itself."""
    if not upload:
        raise AppInputError("upload a picture or click one of the examples first")
    path, name = _path_and_name(upload)
    original = Path(path[:-len(PREVIEW)]) if path.endswith(PREVIEW) else None
    if original is not None and original.is_file():
        path, name = str(original), original.name
    try:
        return read_image(path, name)
    except ImageError as error:
        raise AppInputError(str(error)) from None


def browser_preview(upload) -> str | None:
    """For a picture in a format browsers cannot show (TIFF, for one): a PNG of it, upright and in RGB as the
    network reads it, written beside the upload (read_upload reads the upload in its place). None for a
    format browsers show, and for a file that cannot be read (classify says why)."""
    path, name = _path_and_name(upload)
    try:
        with open_image(path, name) as opened:
            if opened.format in BROWSER_FORMATS:
                return None
            opened.load()
            picture, _ = upright_rgb(opened, [])
    except (ImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    preview = path + PREVIEW
    try:
        picture.save(preview)
    except OSError:  # a folder it cannot write to: the upload keeps its own (broken) preview, and is classified
        return None
    return preview


def small_warning(image: UserImage) -> str:
    """A warning for a picture with a side under SMALL pixels, '' otherwise."""
    width, height = image.size
    if min(width, height) >= SMALL:
        return ""
    return (f"**{literal(image.name)} is only {width}x{height} pixels**: enlarged to 32x32 it holds too little for the "
            f"answer to mean much. Upload a picture at least {SMALL}x{SMALL} pixels (32x32 or larger is best).")


def grad_cam(explainer: Explainer, pixels: np.ndarray, probabilities: np.ndarray, explained: int,
             layer: str) -> tuple[np.ndarray, str]:
    """The map of class ``explained`` on the predicted class's scale, as the README's figure shows two maps:
    both divided by the larger of their two peaks, so a class with less evidence looks fainter; and one
    line saying which scale it is, with the class's probability and its map's peak."""
    names, predicted = explainer.classes, int(np.argmax(probabilities))
    wanted = [predicted] if explained == predicted else [predicted, explained]
    maps = explainer.maps(np.repeat(pixels[None], len(wanted), 0), wanted, layer)
    peaks = maps.max(axis=(1, 2))
    heat = maps[-1] / peaks.max() if peaks.max() > 0 else maps[-1]
    where, prediction = f"Grad-CAM on {LAYERS[layer]}", f"**{names[predicted]}**, {probabilities[predicted]:.1%}"
    this = f"**{names[explained]}** ({probabilities[explained]:.1%})"
    if peaks.max() == 0:
        return heat, f"{where} for {this}: no evidence at this layer (the map is 0 everywhere)."
    if explained == predicted:
        return heat, (f"{where} for **{names[predicted]}**, the predicted class ({probabilities[predicted]:.1%}). Scale: "
                      "0 = no evidence, 1 = the peak of the predicted class's map; other classes are drawn on this scale.")
    if peaks[1] <= peaks[0]:
        return heat, (f"{where} for {this}, on the scale of the predicted class's map ({prediction}): 0 = no evidence, "
                      f"1 = its peak; {names[explained]}'s map peaks at {peaks[1] / peaks[0]:.2f}.")
    if peaks[0] == 0:
        return heat, (f"{where} for {this}: the predicted class's map ({prediction}) is 0 everywhere at this layer, "
                      f"so 1 = the peak of {names[explained]}'s map.")
    return heat, (f"{where} for {this}: its map peaks {peaks[1] / peaks[0]:.1f}x as high as the predicted "
                  f"class's map ({prediction}), so 1 = the peak of {names[explained]}'s map, where the predicted "
                  f"class's peaks at {peaks[0] / peaks[1]:.2f}.")


def classify(explainer: Explainer, upload, k, show_cam: bool, layer: str, target: str,
             opacity) -> tuple[dict[str, float], np.ndarray, str, str]:
    """(the top ``k`` classes with their probabilities, the picture as the network sees it at DISPLAY x
    DISPLAY with its Grad-CAM map when ``show_cam``, a note on the map's scale and what was done to the
    file, a warning for a picture too small to mean much or ''). AppInputError for input it cannot use."""
    k = _whole(k, 1, len(explainer.classes), "top-k")
    layer, opacity, target = _checked(explainer, layer, opacity, target)
    image = read_upload(upload)
    probabilities = explainer.probabilities(image.pixels[None])[0]
    ranked = np.argsort(-probabilities)[:k]
    top = {explainer.classes[i]: float(probabilities[i]) for i in ranked}
    explained = int(ranked[0]) if target == PREDICTED else explainer.classes.index(target)
    note = f"**{literal(image.name)}**: {image.describe() or 'already 32x32 RGB, used as it is'}."
    heat = None
    if show_cam:
        heat, scale = grad_cam(explainer, image.pixels, probabilities, explained, layer)
        note = f"{scale}\n\n{note}"
    return top, overlay(image.pixels, heat, opacity, DISPLAY), note, small_warning(image)


def shown_classify(explainer: Explainer, upload, k, show_cam: bool, layer: str, target: str, opacity) -> tuple:
    """What the Classify tab shows: classify's answer; without a picture (removed, or none yet) an empty
    result under the hint; for input classify cannot use, an empty result under its message."""
    if not upload:
        return None, None, "", HINT
    try:
        return classify(explainer, upload, k, show_cam, layer, target, opacity)
    except AppInputError as error:
        return None, None, "", f"**No answer**: {literal(str(error))}."


def misclassified_items(explainer: Explainer, sample: Sample, n, show_cam: bool, layer: str,
                  opacity) -> list[tuple[np.ndarray, str]]:
    """The first ``n`` misclassified images of the sample at THUMB x THUMB, each captioned "true class →
    predicted class (its probability)", with the Grad-CAM map of the predicted class when ``show_cam``
    (on its own scale: the predicted class's, as in the Classify tab)."""
    n = _whole(n, 1, len(sample.misclassified), "the number of images")
    layer, opacity, _ = _checked(explainer, layer, opacity)
    chosen = sample.misclassified[:n]
    pixels = np.stack([read_image(sample.path(item)).pixels for item in chosen])
    probabilities = explainer.probabilities(pixels)
    predicted = probabilities.argmax(1)
    maps = on_own_scale(explainer.maps(pixels, predicted.tolist(), layer)) if show_cam else [None] * n
    names = explainer.classes
    return [(overlay(image, heat, opacity, THUMB),
             f"{names[item.label]} → {names[p]} ({probabilities[i, p]:.0%})")
            for i, (image, heat, item, p) in enumerate(zip(pixels, maps, chosen, predicted))]


def shown_misclassified(explainer: Explainer, sample: Sample, n, show_cam: bool, layer: str, opacity) -> tuple:
    """What the Misclassified tab shows: the gallery and '', or no pictures and the message."""
    try:
        return misclassified_items(explainer, sample, n, show_cam, layer, opacity), ""
    except AppInputError as error:
        return [], f"**No pictures**: {literal(str(error))}."


def _headed(table: str, names: Sequence[str]) -> str:
    """A Markdown table whose header row is empty (as the README prints it) with ``names`` in that row."""
    lines = table.splitlines()
    if lines and not lines[0].replace("|", "").strip():
        lines[0] = "| " + " | ".join(names) + " |"
    return "\n".join(lines)


def about(records: Sequence[Path], trained: TrainedModel) -> str:
    """What the network is, from the committed run records (the first: the run the weights come from,
    the others: its other seeds): the Results and Seeds tables that ``report`` writes into the README."""
    from modular.tools.report import results_table, seeds_table

    runs = [json.loads(Path(p).read_text()) for p in records]
    if not runs or runs[0].get("weights", {}).get("sha256") != sha256(trained.source):
        return (f"No committed run record describes `{Path(trained.source).name}`: its accuracy is not known here "
                "(`python -m modular evaluate --weights ...` measures it).")
    head = runs[0]
    parameters = sum(p.numel() for p in trained.model.parameters())
    text = [f"The prescribed custom ResNet (David Page's ResNet-9 layout, {parameters:,} parameters), trained in run "
            f"`{Path(records[0]).name}`: seed {head['seed']}, {len(head['history'])} epochs, OneCycle up to LRMAX "
            f"{head['lr_max']:.4g} found by the LR range test. These are its final weights, stored in fp16.",
            "", _headed(results_table(head), ("What", "Value"))]
    if len(runs) > 1:
        text += ["", "The same configuration over several seeds:", "", seeds_table(runs, [Path(p).name for p in records])]
    return "\n".join(text)
