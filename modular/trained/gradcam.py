"""Grad-CAM (the pytorch-grad-cam package) on the output of Layer3's residual block: X + R2, 4x4
cells of 8x8 pixels, the last spatial map before the head's MaxPool(4); or, for the app, on Layer1's
residual output or Layer2's output (finer maps)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from custom_resnet import CustomResNet

# The layers a map can be taken from: name -> what it is (its grid, one cell per 32/grid pixels)
LAYERS = {"layer1": "Layer1's residual output (X + R1, 16x16)", "layer2": "Layer2's output (8x8)",
          "layer3": "Layer3's residual output (X + R2, 4x4)"}


def target_layer(model: CustomResNet, layer: str = "layer3") -> torch.nn.Module:
    """The module whose output is explained: Layer1's or Layer3's residual block (forward returns
    X + R(X)), or Layer2 (one ConvBlock)."""
    return {"layer1": model.layer1[1], "layer2": model.layer2, "layer3": model.layer3[1]}[layer]


def gradcam_maps(model: CustomResNet, images: torch.Tensor, classes: Sequence[int], layer: str = "layer3") -> np.ndarray:
    """(N, 32, 32) maps in [0, 1]: where ``images`` (normalized, N x 3 x 32 x 32) carry evidence for
    ``classes`` (one class index per image) at ``layer`` (a key of LAYERS). The model is used in eval
    mode, in fp32 on its device; gradients are on here whatever the calling thread's grad mode."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model, layer)]) as cam:
            maps = cam(input_tensor=images.float().to(device), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.clip(maps.astype(np.float32), 0.0, 1.0)
