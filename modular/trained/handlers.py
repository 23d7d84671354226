"""The app's handlers as plain functions (tested without a server): the top-k classes of a picture with
its Grad-CAM map, the misclassified test images of the committed sample, and what the network is, from
the committed run records. modular/trained/app.py binds them to Gradio."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from modular.trained.gradcam import LAYERS, gradcam_maps, on_own_scale
from modular.trained.images import ImageError, UserImage, read_image
from modular.trained.samples import Sample
from modular.trained.weights import TrainedModel, sha256
from modular.transforms import test_transforms

DISPLAY = 256             # side of the picture with its Grad-CAM map: 8 screen pixels per input pixel
THUMB = 128               # side of a misclassified image in the gallery
PREDICTED = "the predicted class"


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
        """N x 32 x 32 Grad-CAM maps in [0, 1] for one class per picture, at ``layer`` (a key of LAYERS)."""
        batch = self._batch(pixels)
        with self._lock:
            return on_own_scale(gradcam_maps(self.trained.model, batch, classes, layer))


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


# --------------------------------------------------------------------------------------------
# Handlers: plain values in, plain values out; AppInputError for input the app cannot use
# --------------------------------------------------------------------------------------------

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


def read_upload(upload) -> UserImage:
    """The uploaded picture: a path, or Gradio's file payload (a dict with "path" and "orig_name")."""
    if not upload:
        raise AppInputError("upload a picture or pick one of the examples first")
    path = upload.get("path") if isinstance(upload, dict) else upload
    name = (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(str(path)).name
    try:
        return read_image(path, name)
    except ImageError as error:
        raise AppInputError(str(error)) from None


def classify(explainer: Explainer, upload, k, show_cam: bool, layer: str, target: str,
             opacity) -> tuple[dict[str, float], np.ndarray, str]:
    """(the top ``k`` classes with their probabilities, the picture as the network sees it at
    DISPLAY x DISPLAY with its Grad-CAM map when ``show_cam``, a note on what was done)."""
    k = _whole(k, 1, len(explainer.classes), "top-k")
    layer, opacity, target = _checked(explainer, layer, opacity, target)
    image = read_upload(upload)
    probabilities = explainer.probabilities(image.pixels[None])[0]
    ranked = np.argsort(-probabilities)[:k]
    top = {explainer.classes[i]: float(probabilities[i]) for i in ranked}
    explained = int(ranked[0]) if target == PREDICTED else explainer.classes.index(target)
    heat = explainer.maps(image.pixels[None], [explained], layer)[0] if show_cam else None
    read = image.describe() or "already 32x32 RGB, used as it is"
    note = f"**{html.escape(image.name)}**: {read}."
    if show_cam:
        note += f" Grad-CAM on {LAYERS[layer]} for **{explainer.classes[explained]}**" + \
            (" (the predicted class)." if target == PREDICTED else ".")
    return top, overlay(image.pixels, heat, opacity, DISPLAY), note


def misclassified(explainer: Explainer, sample: Sample, n, show_cam: bool, layer: str,
                  opacity) -> list[tuple[np.ndarray, str]]:
    """The first ``n`` misclassified images of the sample at THUMB x THUMB, each captioned "true class →
    predicted class (its probability)", with the Grad-CAM map of the predicted class when ``show_cam``."""
    n = _whole(n, 1, len(sample.misclassified), "the number of images")
    layer, opacity, _ = _checked(explainer, layer, opacity)
    chosen = sample.misclassified[:n]
    pixels = np.stack([read_image(sample.path(item)).pixels for item in chosen])
    probabilities = explainer.probabilities(pixels)
    predicted = probabilities.argmax(1)
    maps = explainer.maps(pixels, predicted.tolist(), layer) if show_cam else [None] * n
    names = explainer.classes
    return [(overlay(image, heat, opacity, THUMB),
             f"{names[item.label]} → {names[p]} ({probabilities[i, p]:.0%})")
            for i, (image, heat, item, p) in enumerate(zip(pixels, maps, chosen, predicted))]


def about(records: Sequence[Path], trained: TrainedModel) -> str:
    """What the network is, from the committed run records (the first: the run the weights come from,
    the others: its other seeds): the Results and Seeds tables that ``report`` writes into the README."""
    from modular.report import results_table, seeds_table

    runs = [json.loads(Path(p).read_text()) for p in records]
    if not runs or runs[0].get("weights", {}).get("sha256") != sha256(trained.source):
        return (f"No committed run record describes `{Path(trained.source).name}`: its accuracy is not known here "
                "(`python -m modular evaluate --weights ...` measures it).")
    head = runs[0]
    parameters = sum(p.numel() for p in trained.model.parameters())
    text = [f"The prescribed custom ResNet (David Page's ResNet-9 layout, {parameters:,} parameters), trained in run "
            f"`{Path(records[0]).name}`: seed {head['seed']}, {len(head['history'])} epochs, OneCycle up to LRMAX "
            f"{head['lr_max']:.4g} found by the LR range test. These are its final weights, stored in fp16.",
            "", results_table(head)]
    if len(runs) > 1:
        text += ["", "The same configuration over several seeds:", "", seeds_table(runs, [Path(p).name for p in records])]
    return "\n".join(text)
