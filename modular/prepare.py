"""Everything a run needs before its first step: the data, its statistics, the transforms, the
loaders, the runtime, and the model initialised from the seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from custom_resnet import CustomResNet
from modular.config import Config
from modular.data import CifarData, channel_stats, load_cifar10
from modular.device import Runtime, select_runtime
from modular.loaders import make_loaders
from modular.transforms import test_transforms, train_transforms


@dataclass
class Prepared:
    """A run's inputs, built once by ``prepare`` and read by every later step."""
    cfg: Config
    runtime: Runtime
    data: CifarData
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_transform: object
    test_transform: object
    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader


def load_data(cfg: Config, setting: str = "--data-dir") -> CifarData:
    """CIFAR-10 from cfg.data_dir (or torchvision's download), reduced to cfg.subset if set; errors
    name ``setting``, what the user gives cfg.data_dir with."""
    data = load_cifar10(cfg.data_dir, cfg.download_root, setting)
    return data.subset(cfg.subset, cfg.seed) if cfg.subset else data


def prepare(cfg: Config, data: CifarData | None = None, mean=None, std=None) -> Prepared:
    """Validate the config, pick the device, load the data, compute its statistics (unless given:
    a resumed run or a weights file keeps its own), build the transforms and the loaders."""
    cfg.validate()
    runtime = select_runtime(cfg.device, cfg.precision)
    data = data if data is not None else load_data(cfg)
    if mean is None or std is None:
        mean, std = channel_stats(data.train_images)
    train_tf = train_transforms(mean, std, cfg.cutout_p, cfg.cutout_size, seed=cfg.seed)
    test_tf = test_transforms(mean, std)
    train_loader, test_loader = make_loaders(data, train_tf, test_tf, cfg, runtime)
    return Prepared(cfg, runtime, data, tuple(mean), tuple(std), train_tf, test_tf, train_loader, test_loader)


def new_model(cfg: Config) -> CustomResNet:
    """The prescribed model, initialised from cfg.seed."""
    torch.manual_seed(cfg.seed)
    return CustomResNet(logit_scale=cfg.logit_scale)
