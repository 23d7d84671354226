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
    """(N, 32, 32) maps >= 0 of where ``images`` (normalized, N x 3 x 32 x 32) carry evidence for
    ``classes`` (one class index per image), on their own scale: the library's Grad-CAM before it
    min-max normalises each map by itself (which would show every map at full strength). The model
    is used in eval mode, in fp32 on its device."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    was_training = model.training
    inputs = images.float().to(device)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    layer = target_layer(model)
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            cam(input_tensor=inputs, targets=targets)  # forward and backward: keeps the layer's activations and gradients
            kept = cam.activations_and_grads
            activations, gradients = kept.activations[0].cpu().numpy(), kept.gradients[0].cpu().numpy()
            coarse = np.maximum(cam.get_cam_image(inputs, layer, targets, activations, gradients), 0)
    finally:
        model.train(was_training)
    size = (images.shape[-1], images.shape[-2])  # upsampled as the library does (cv2, bilinear)
    return np.stack([cv2.resize(np.float32(m), size) for m in coarse]).astype(np.float32)


def gradcam_pair(model: CustomResNet, images: torch.Tensor, first: Sequence[int],
                 second: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Maps for two classes of each image (the predicted and the true one), normalised together: both
    divided by the larger of their two peaks, so the two share one scale, 0 (no evidence) to 1 (the
    stronger map's peak), and the weaker evidence looks weaker."""
    a, b = gradcam_maps(model, images, first), gradcam_maps(model, images, second)
    peak = np.maximum(a.max(axis=(1, 2)), b.max(axis=(1, 2)))[:, None, None]
    peak = np.where(peak > 0, peak, 1.0)  # no evidence for either class: both maps stay 0
    return (a / peak).astype(np.float32), (b / peak).astype(np.float32)
