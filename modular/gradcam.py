"""Grad-CAM (the pytorch-grad-cam package) on the output of Layer3's residual block: X + R2, 4x4
cells of 8x8 pixels, the last spatial map before the head's MaxPool(4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from custom_resnet import CustomResNet


def target_layer(model: CustomResNet) -> torch.nn.Module:
    """Layer3's residual block, whose forward returns X + R2(X)."""
    return model.layer3[1]


def gradcam_maps(model: CustomResNet, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """(N, 32, 32) maps in [0, 1]: where ``images`` (normalized, N x 3 x 32 x 32) carry evidence for
    ``classes`` (one class index per image). The model is used in eval mode, in fp32 on its device."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    was_training = model.training
    try:
        with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
            maps = cam(input_tensor=images.float().to(device), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.clip(maps.astype(np.float32), 0.0, 1.0)
