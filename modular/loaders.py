"""The Dataset, the epoch-keyed sampler, the batch collation and the DataLoaders over in-memory CIFAR-10."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from modular.config import Config
from modular.data import CifarData
from modular.device import Runtime
from modular.robust import guard_workers
from modular.transforms import reseed


class CifarDataset(Dataset):
    """uint8 images through an albumentations pipeline -> (float tensor 3x32x32, label).

    Keys are ``epoch * len(self) + index`` (see ``EpochSampler``), so the epoch travels with
    each batch into any worker, persistent or not. Each batch reseeds the pipeline from
    (seed, epoch, first key): augmentation is reproducible, differs between epochs and workers,
    and a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, seed: int = 0):
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed

    def __len__(self) -> int:
        return len(self.labels)

    def _sample(self, key: int):
        index = key % len(self.labels)
        image = self.transform(image=self.images[index])["image"]
        return image, int(self.labels[index])

    def __getitem__(self, key: int):
        return self._sample(key)

    def __getitems__(self, keys: list[int]):
        if hasattr(self.transform, "set_random_state"):
            epoch = keys[0] // len(self.labels)
            state = np.random.SeedSequence([self.seed, epoch, keys[0] % len(self.labels)])
            reseed(self.transform, int(state.generate_state(1)[0]))
        return [self._sample(k) for k in keys]


class EpochSampler(Sampler[int]):
    """Yields keys ``epoch * n + index``; the order is shuffled by (seed, epoch) when ``shuffle``.

    Call ``set_epoch`` before iterating: the order then depends on nothing but seed and epoch.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))
        return iter((self.epoch * self.n + order).tolist())


def usable_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may use: those its affinity allows (taskset, a container's or Slurm's
    cpuset; all of them where the OS has no affinity), fewer under a cgroup v2 CPU quota (``docker
    --cpus``), which ``cpu_max`` holds as "quota period". ``os.cpu_count()`` counts the machine's."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
    except (OSError, ValueError):  # no cgroup v2 (macOS, Windows, older Linux)
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, math.ceil(int(quota) / int(period))))


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes: 0 on the CPU (the pipeline takes a small share of a CPU training
    step's time, and a worker process would take a core from it); on a GPU every usable CPU but one,
    which the main process keeps for driving the GPU, and at least 1 (Colab's 2 vCPUs: 1 worker; a
    16-core machine: 15, since there the data pipeline, not the GPU, sets the pace)."""
    if device.type == "cpu":
        return 0
    return max(1, usable_cpus() - 1)


class Collate:
    """Stack samples into one batch already in the run's memory layout, so that pinning and the copy
    to the device keep it (both preserve strides) and no second copy on the device is needed.
    ToTensorV2 returns CHW views of HWC arrays: stacking those as NHWC is a single copy."""

    def __init__(self, memory_format: torch.memory_format = torch.contiguous_format):
        self.memory_format = memory_format

    def __call__(self, samples):
        images, labels = zip(*samples)
        if self.memory_format == torch.channels_last:
            batch = torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
        else:
            batch = torch.stack(images)
        return batch, torch.tensor(labels, dtype=torch.long)


def make_loaders(data: CifarData, train_transform, test_transform, cfg: Config,
                 runtime: Runtime) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled per epoch, augmented) and test loader (in order), collating in the
    run's layout into pinned memory where the device is a GPU."""
    workers = default_workers(runtime.device) if cfg.workers is None else cfg.workers
    common = dict(batch_size=cfg.batch_size, num_workers=workers, pin_memory=runtime.pin_memory,
                  collate_fn=Collate(runtime.memory_format))
    train_set = CifarDataset(data.train_images, data.train_labels, train_transform, cfg.seed)
    test_set = CifarDataset(data.test_images, data.test_labels, test_transform, cfg.seed)
    # the training loader's workers live through the run (no restart each epoch); the test loader's
    # start for each evaluation and end with it, so none sit idle beside training on a small machine
    train_loader = DataLoader(train_set, sampler=EpochSampler(len(train_set), True, cfg.seed),
                              persistent_workers=workers > 0, **common)
    test_loader = DataLoader(test_set, sampler=EpochSampler(len(test_set), False), **common)
    return guard_workers(train_loader), guard_workers(test_loader)


