"""The prescribed "custom ResNet" for CIFAR-10 (David Page's ResNet-9 layout).

PrepLayer  Conv3x3(3->64) -> BN -> ReLU
Layer1     X = Conv3x3(64->128) -> MaxPool(2) -> BN -> ReLU;  out = X + R1(X)
Layer2     Conv3x3(128->256) -> MaxPool(2) -> BN -> ReLU
Layer3     X = Conv3x3(256->512) -> MaxPool(2) -> BN -> ReLU;  out = X + R2(X)
Head       MaxPool(4) -> Linear(512->10)
where R = Conv-BN-ReLU-Conv-BN-ReLU at the same width.

Every block is an nn.Sequential, so torchsummary prints one row per Conv/Pool/BN/ReLU/Linear
(29 rows, 6,575,370 parameters). ``forward`` returns logits: the softmax belongs to the loss.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """Conv3x3 (stride 1, padding 1) -> [MaxPool2d(2)] -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool = False):
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Residual(nn.Sequential):
    """out = x + (Conv-BN-ReLU-Conv-BN-ReLU)(x)."""

    def __init__(self, channels: int):
        super().__init__(ConvBlock(channels, channels), ConvBlock(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class CustomResNet(nn.Module):
    """The prescribed network. ``logit_scale`` multiplies the logits (Page uses 0.125); it has
    no parameters, so the summary table is the same for every value."""

    def __init__(self, num_classes: int = 10, logit_scale: float = 1.0):
        super().__init__()
        self.logit_scale = logit_scale
        self.prep = ConvBlock(3, 64)
        self.layer1 = nn.Sequential(ConvBlock(64, 128, pool=True), Residual(128))
        self.layer2 = ConvBlock(128, 256, pool=True)
        self.layer3 = nn.Sequential(ConvBlock(256, 512, pool=True), Residual(512))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x) * self.logit_scale
