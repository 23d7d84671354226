"""Ways to train the same network better, each a Config setting, off by default: how the weights start
(whitening and Dirac initialisation), which parameters train and how fast (frozen BatchNorm scales, fast
BatchNorm biases), and which weights are evaluated (an exponential moving average). None of them changes
the model's layers; the published evidence for each is in docs/experiments.md."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from custom_resnet import CustomResNet, Residual
from modular.config import Config

WHITENING_IMAGES = 10_000  # training images whose 3x3 patches give the covariance (Page's number)
WHITENING_EPS = 1e-2       # added to each eigenvalue before the square root: keeps the smallest components finite


def prepare_model(model: CustomResNet, cfg: Config, train_images: np.ndarray, mean, std,
                  initialise: bool = True) -> CustomResNet:
    """Apply the levers ``cfg`` turns on to a freshly initialised model: the initialisation levers only
    when ``initialise`` (not when weights are loaded over them), the training levers always."""
    if initialise and cfg.whiten_init:
        whiten_prep_conv(model, train_images, mean, std)
    if initialise and cfg.dirac_init:
        dirac_residual_convs(model)
    if cfg.frozen_bn_scale:
        freeze_bn_scales(model)
    if cfg.bn_bias_lr_factor != 1.0:
        speed_up_bn_biases(model, cfg.bn_bias_lr_factor)
    return model


def patch_covariance(train_images: np.ndarray, mean, std, n: int = WHITENING_IMAGES) -> torch.Tensor:
    """27 x 27 covariance of every 3x3 patch of the first ``n`` training images, normalized as the
    model sees them (mean and std per channel, fractions of 255)."""
    images = torch.as_tensor(train_images[:n]).permute(0, 3, 1, 2).double() / 255.0
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    total, outer, count = torch.zeros(27, dtype=torch.float64), torch.zeros(27, 27, dtype=torch.float64), 0
    for chunk in images.split(1000):  # 1000 images: 900,000 patches of 27 values at a time
        patches = nn.functional.unfold(chunk, 3).transpose(1, 2).reshape(-1, 27)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    average = total / count
    return outer / count - torch.outer(average, average)


def whiten_prep_conv(model: CustomResNet, train_images: np.ndarray, mean, std) -> None:
    """The prep conv's first 54 filters become the 27 eigenvectors of the patch covariance, each scaled
    by 1/sqrt(eigenvalue) and taken with both signs (ReLU follows: each sign keeps one half); its other
    filters keep their random start. All stay trainable: an initialisation, not a frozen layer."""
    eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(train_images, mean, std))
    order = eigenvalues.argsort(descending=True)
    filters = (eigenvectors[:, order] / torch.sqrt(eigenvalues[order] + WHITENING_EPS)).T.reshape(27, 3, 3, 3)
    conv = model.prep[0]
    with torch.no_grad():
        conv.weight[:54] = torch.cat([filters, -filters]).to(conv.weight.dtype)
        conv.bias[:54] = 0


def dirac_residual_convs(model: CustomResNet) -> None:
    """Every convolution inside a residual block starts as the identity (``nn.init.dirac_``), so each
    block starts close to passing its input through."""
    for block in model.modules():
        if isinstance(block, Residual):
            for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
                nn.init.dirac_(conv.weight)
                nn.init.zeros_(conv.bias)


def freeze_bn_scales(model: nn.Module) -> None:
    """Every BatchNorm's scale fixed at 1 and not trained; its bias still trains."""
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.ones_(bn.weight)
        bn.weight.requires_grad_(False)


def speed_up_bn_biases(model: nn.Module, factor: float) -> None:
    """BatchNorm biases at ``factor`` x the LR with weight decay / ``factor`` (SGD only): their gradients
    multiplied by ``factor`` give exactly that update, since SGD with momentum is linear in the gradient,
    while the optimizer and the range test keep one LR (torch-lr-finder keeps no ratio between groups)."""
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.bias.register_hook(lambda grad: grad * factor)


def ema_model(model: nn.Module, cfg: Config) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics, starting as a copy of
    ``model`` (as Page's starts); None when off. ``update_ema`` moves it towards the model."""
    if cfg.ema_decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay ** cfg.ema_every), use_buffers=True)


def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """ema = rho * ema + (1 - rho) * model over every floating-point parameter and buffer, rho = ema_decay **
    ema_every: called every cfg.ema_every steps, the average spans about 1 / (1 - ema_decay) steps whatever
    the interval (Page's update_ema). AveragedModel.update_parameters would do the same after its first call,
    but reads its count back every call, and on a GPU each read makes the CPU wait for the GPU."""
    pairs = [(averaged.detach(), current.detach())
             for averaged, current in zip([*ema.module.parameters(), *ema.module.buffers()],
                                          [*model.parameters(), *model.buffers()], strict=True)
             if averaged.is_floating_point()]  # not num_batches_tracked, as in Page's code
    ema.multi_avg_fn([averaged for averaged, _ in pairs], [current for _, current in pairs], ema.n_averaged)
    ema.n_averaged += 1
