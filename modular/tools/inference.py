"""A trained model from a checkpoint or a weights file in a Learner, with the test data it is judged on
(what ``evaluate``, ``gradcam`` and ``app-samples`` share), and the Grad-CAM figure of a Learner's model:
each misclassified image beside its maps for the predicted and the true class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from modular.checkpoint import Weights
from modular.config import Config
from modular.data import channel_stats, load_data
from modular.evaluate import gallery_sample, misclassified, predict
from modular.galleries import class_name
from modular.learner import Learner
from modular.plots import new_figure
from modular.tools.gradcam import fp32_cpu_copy, gradcam_pair
from modular.tools.weights import evaluated_weights, load_weights, read_run_checkpoint


@dataclass
class Loaded:
    learner: Learner              # its model holds the weights; its data is normalized with their mean and std
    description: str              # one line: where the weights came from


def load_for_evaluation(checkpoint: str | None, weights: str | None, data_dir: str | None = None,
                        device: str = "auto") -> Loaded:
    """The model of ``checkpoint`` (a training checkpoint) or ``weights`` (a weights file) in a Learner
    with the test set: the checkpoint's own data unless ``data_dir`` is given; for weights, ``data_dir``
    or torchvision's. Weights are evaluated in fp32."""
    if weights is not None:
        trained, data = load_weights(weights), None
        cfg = Config(data_dir=data_dir, device=device, precision="fp32", logit_scale=trained.model.logit_scale)
        start = Weights(trained.model.state_dict(), list(trained.mean), list(trained.std), weights)
        description = f"weights {weights} (fp16 on disk, evaluated in fp32)"
    else:
        state = read_run_checkpoint(checkpoint)
        cfg = Config.from_dict(state["config"]).replace(device=device)
        cfg = cfg.replace(data_dir=data_dir) if data_dir else cfg
        data = load_data(cfg)
        # an old checkpoint without its run's statistics: those of the training images, as its run computed them
        mean, std = (state["mean"], state["std"]) if "mean" in state else channel_stats(data.train_images)
        start = Weights(evaluated_weights(state), list(mean), list(std), checkpoint)
        description = f"checkpoint {checkpoint}: epoch {state['epoch']} of {cfg.epochs}"
    learner = Learner(cfg, data, start=start)
    learner.model.eval()
    return Loaded(learner, description)


def gradcam_figure(learner: Learner, wrong: list[dict[str, int]] | None = None) -> Figure:
    """Grad-CAM maps of ``learner.model`` for the predicted and the true class of misclassified test
    images: those of the misclassified gallery when ``wrong`` (a run's misclassified list) is given,
    else the ones the model gets wrong now. The maps are computed on an fp32 copy on the CPU (the
    model is left as it is)."""
    model, data = learner.model, learner.data
    if wrong is None:
        test = predict(model, learner.test_loader, learner.runtime)
        wrong = misclassified(test.labels, test.predicted)
    wrong = gallery_sample(wrong)
    if not wrong:
        return plot_message("Grad-CAM: no misclassified test images, so nothing to explain")
    indices = [w["index"] for w in wrong]
    normalized = torch.stack([learner.test_loader.dataset[i][0] for i in indices])
    predicted, actual = [w["predicted"] for w in wrong], [w["actual"] for w in wrong]
    maps_predicted, maps_actual = gradcam_pair(fp32_cpu_copy(model), normalized, predicted, actual)  # one scale per image
    return plot_gradcam(np.asarray(data.test_images[indices]), maps_predicted, maps_actual, predicted,
                        actual, data.classes)


def plot_message(text: str) -> Figure:
    """A small figure that only says ``text`` (where a gallery has nothing to show)."""
    fig = new_figure(height=0.8)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    return fig


def plot_gradcam(images: np.ndarray, maps_predicted: np.ndarray, maps_actual: np.ndarray, predicted: Sequence[Any],
                 actual: Sequence[Any], classes: Sequence[str], per_row: int = 2) -> Figure:
    """Each misclassified image (uint8 N x H x W x 3) beside its Grad-CAM maps (N x H x W in [0, 1])
    for the predicted class and for the true class, ``per_row`` images to a row. The two maps of an
    image are drawn on the same colour scale: normalise them together (``gradcam.gradcam_pair``)."""
    n = len(images)
    rows = max(1, math.ceil(n / per_row))
    fig = new_figure(height=rows * 1.45 + 0.5, width=per_row * 3 * 1.35)
    axes = fig.subplots(rows, per_row * 3, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        row, col = divmod(i, per_row)
        image_ax, pred_ax, true_ax = axes[row, 3 * col: 3 * col + 3]
        image_ax.imshow(images[i], interpolation="nearest")
        image_ax.set_title(f"image {i + 1}", fontsize=7)
        for ax, heat, label in ((pred_ax, maps_predicted[i], f"pred: {class_name(predicted[i], classes)}"),
                                (true_ax, maps_actual[i], f"true: {class_name(actual[i], classes)}")):
            ax.imshow(images[i], interpolation="nearest")
            # the map has the image's 32x32 cells and is drawn like it, cell by cell (which also keeps the PNG small)
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(label, fontsize=7)
    fig.suptitle("Grad-CAM on Layer3's residual output (X + R2): evidence for the predicted and for the true class;\n"
                 "the two maps of an image share one colour scale (1 = the stronger map's peak)", fontsize=9)
    return fig
