"""A trained model from a checkpoint or a weights file in a Learner, with the test data it is judged on
(what ``evaluate``, ``gradcam`` and ``app-samples`` share), and the Grad-CAM figure of a Learner's model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from modular import galleries
from modular.checkpoint import Weights
from modular.config import Config
from modular.data import channel_stats, load_data
from modular.device import fp32_cpu_copy
from modular.evaluate import gallery_sample, misclassified, predict
from modular.learner import Learner
from modular.tools.gradcam import gradcam_pair
from modular.tools.weights import load_weights, read_run_checkpoint


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
        start = Weights(state["model"], list(mean), list(std), checkpoint)
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
        return galleries.plot_message("Grad-CAM: no misclassified test images, so nothing to explain")
    indices = [w["index"] for w in wrong]
    normalized = torch.stack([learner.test_loader.dataset[i][0] for i in indices])
    predicted, actual = [w["predicted"] for w in wrong], [w["actual"] for w in wrong]
    maps_predicted, maps_actual = gradcam_pair(fp32_cpu_copy(model), normalized, predicted, actual)  # one scale per image
    return galleries.plot_gradcam(np.asarray(data.test_images[indices]), maps_predicted, maps_actual, predicted,
                                  actual, data.classes)
