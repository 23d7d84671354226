"""Grad-CAM (the pytorch-grad-cam package) on the output of Layer3's residual block: X + R2, 4x4
cells of 8x8 pixels, the last spatial map before the head's MaxPool(4); or, for the app, on Layer1's
residual output or Layer2's output (finer maps)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from custom_resnet import CustomResNet

# The layers a map can be taken from: name -> what it is (its grid, one cell per 32/grid pixels)
LAYERS = {"layer1": "Layer1's residual output (X + R1, 16x16)", "layer2": "Layer2's output (8x8)",
          "layer3": "Layer3's residual output (X + R2, 4x4)"}


def fp32_cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32, NCHW copy of ``model`` on the CPU, for tools that expect one (torchsummary, Grad-CAM);
    ``model`` itself is left as it is."""
    return copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)


def target_layer(model: CustomResNet, layer: str = "layer3") -> torch.nn.Module:
    """The module whose output is explained: Layer1's or Layer3's residual block (forward returns
    X + R(X)), or Layer2 (one ConvBlock)."""
    return {"layer1": model.layer1[1], "layer2": model.layer2, "layer3": model.layer3[1]}[layer]


def gradcam_maps(model: CustomResNet, images: torch.Tensor, classes: Sequence[int], layer: str = "layer3") -> np.ndarray:
    """(N, 32, 32) maps >= 0 of where ``images`` (normalized, N x 3 x 32 x 32) carry evidence for
    ``classes`` (one class index per image) at ``layer`` (a key of LAYERS), on their own scale: the
    library's Grad-CAM before it min-max normalises each map by itself (which would show every map at
    full strength). The model is used in eval mode, in fp32 on its device; gradients are on here
    whatever the calling thread's grad mode."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    was_training = model.training
    inputs = images.float().to(device)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    explained = target_layer(model, layer)
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[explained]) as cam:
            cam(input_tensor=inputs, targets=targets)  # forward and backward: keeps the layer's activations and gradients
            kept = cam.activations_and_grads
            activations, gradients = kept.activations[0].cpu().numpy(), kept.gradients[0].cpu().numpy()
            coarse = np.maximum(cam.get_cam_image(inputs, explained, targets, activations, gradients), 0)
    finally:
        model.train(was_training)
    size = (images.shape[-1], images.shape[-2])  # upsampled as the library does (cv2, bilinear)
    return np.stack([cv2.resize(np.float32(m), size) for m in coarse]).astype(np.float32)


def on_own_scale(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its own peak (0 stays 0: no evidence): for a map shown alone."""
    peak = maps.max(axis=(1, 2), keepdims=True)
    return (maps / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def gradcam_pair(model: CustomResNet, images: torch.Tensor, first: Sequence[int],
                 second: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Maps for two classes of each image (the predicted and the true one), normalised together: both
    divided by the larger of their two peaks, so the two share one scale, 0 (no evidence) to 1 (the
    stronger map's peak), and the weaker evidence looks weaker."""
    a, b = gradcam_maps(model, images, first), gradcam_maps(model, images, second)
    peak = np.maximum(a.max(axis=(1, 2)), b.max(axis=(1, 2)))[:, None, None]
    peak = np.where(peak > 0, peak, 1.0)  # no evidence for either class: both maps stay 0
    return (a / peak).astype(np.float32), (b / peak).astype(np.float32)
