"""A trained model from a checkpoint or a weights file, with the test data it is judged on: what
``evaluate``, ``gradcam`` and the notebook's no-training path share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from modular import galleries
from modular.checkpoint import load_checkpoint, load_model_state
from modular.config import Config
from modular.device import fp32_cpu_copy
from modular.evaluate import gallery_sample, misclassified, predict
from modular.prepare import Prepared, new_model, prepare
from modular.train import build_criterion
from modular.trained.gradcam import gradcam_pair
from modular.trained.weights import load_weights


@dataclass
class Loaded:
    model: torch.nn.Module        # in eval mode, prepared for setup.runtime
    prepared: Prepared            # data, loaders and runtime, normalized with the model's own mean and std
    criterion: torch.nn.Module    # the training criterion (label-smoothed)
    description: str              # one line: where the weights came from


def load_for_evaluation(checkpoint: str | None, weights: str | None, data_dir: str | None = None,
                        device: str = "auto") -> Loaded:
    """The model of ``checkpoint`` (a training checkpoint) or ``weights`` (a weights file) and the test
    set: the checkpoint's own data unless ``data_dir`` is given; for weights, ``data_dir`` or torchvision's."""
    if weights is not None:
        trained = load_weights(weights)
        cfg = Config(data_dir=data_dir, device=device, precision="fp32")
        model, mean, std = trained.model, trained.mean, trained.std
        description = f"weights {weights} (fp16 on disk, evaluated in fp32)"
    else:
        state = load_checkpoint(checkpoint)
        cfg = Config.from_dict(state["config"]).replace(device=device)
        cfg = cfg.replace(data_dir=data_dir) if data_dir else cfg
        mean, std = state.get("mean"), state.get("std")  # None: computed from the data
        model = new_model(cfg)
        load_model_state(model, state, checkpoint)
        description = f"checkpoint {checkpoint}: epoch {state['epoch']} of {cfg.epochs}"
    prepared = prepare(cfg, mean=mean, std=std)
    return Loaded(prepared.runtime.prepare_model(model).eval(), prepared, build_criterion(cfg), description)


def gradcam_figure(model: torch.nn.Module, prepared: Prepared, record: dict | None = None) -> Figure:
    """Grad-CAM maps for the predicted and the true class of the misclassified test images shown in
    misclassified.png: the record's (same images, same classes) when given, else the model's own.
    The maps are computed on an fp32 copy on the CPU (``model`` is left as it is)."""
    if record is not None:
        wrong = gallery_sample(record["misclassified"])
    else:
        test = predict(model, prepared.test_loader, prepared.runtime)
        wrong = gallery_sample(misclassified(test.labels, test.predicted))
    if not wrong:
        return galleries.plot_message("Grad-CAM: no misclassified test images, so nothing to explain")
    indices = [w["index"] for w in wrong]
    normalized = torch.stack([prepared.test_loader.dataset[i][0] for i in indices])
    cpu_model = fp32_cpu_copy(model)
    predicted, actual = [w["predicted"] for w in wrong], [w["actual"] for w in wrong]
    maps_predicted, maps_actual = gradcam_pair(cpu_model, normalized, predicted, actual)  # one scale per image
    return galleries.plot_gradcam(np.asarray(prepared.data.test_images[indices]), maps_predicted, maps_actual, predicted,
                                  actual, prepared.data.classes)
