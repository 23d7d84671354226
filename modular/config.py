"""The settings a run may change, in one dataclass (the airbench ``hyp`` idea): ``Config`` holds the
training recipe's hyperparameters, the range test's span and rule, and where and how a run happens. The
command line and the notebook build one, each run's record and checkpoint store it whole, and a resume
refuses one that differs outside RUNTIME_FIELDS.

The defaults are David Page's ResNet-9 recipe for this exact layout (94% in 24 epochs on the
official CIFAR-10 files in his report): SGD Nesterov, batch 512, weight decay 5e-4, OneCycle peaking
at epoch 5, cutout 8x8 on every image, logits scaled by 0.125, label smoothing 0.2.

The fixed values that no run changes live beside the code that uses them, not in Config:

* the LR rule's own constants, in ``modular/lr_finder.py``: SMOOTH_F, GIVE_BACK, MIN_RISE, MIN_POINTS,
  SKIP_START/SKIP_END, FLAT_DEPTH and FLAT_WIDTH, from which its RULE states the rule in words (and the
  library's own divergence stop, ``diverge_th=5``, written in ``find_lr``'s call of the library);
* the prescription's augmentation, in ``modular/transforms.py``: pad to 40 (reflect), random crop 32,
  horizontal flip with p 0.5 (cutout's size and probability are settings here);
* how often the training loop reads the loss back to the host, READ_EVERY in ``modular/learner.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

OPTIMIZERS = ("sgd", "adam")
# How LRMAX is read off the range test: "minimum" is the project's divergence-aware rule
# (lr_finder.RULE: the smoothed minimum, or the steepest descent below a wide flat valley); "steepest" is
# torch-lr-finder's own suggestion, what the original used.
LR_RULES = ("minimum", "steepest")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32")
MAX_SEED = 2**32 - 1  # numpy's seed range; a negative seed ends in a numpy traceback otherwise


# Fields that describe where or how fast a run happens, not what it computes: a checkpoint
# may be resumed with different values of these.
RUNTIME_FIELDS = frozenset({"data_dir", "download_root", "output_dir", "device", "workers", "compile"})


class ConfigError(ValueError):
    """A configuration value is out of range; the message says which and what is allowed."""


@dataclass
class Config:
    # data
    data_dir: str | None = None          # None: torchvision's CIFAR10, downloaded into download_root
    download_root: str = "data"
    subset: int | None = None            # class-balanced sample of N training images (quick runs)
    val_split: int | None = None         # hold out N class-balanced training images and evaluate on them, not the test set
    test_subset: int | None = None       # ... and of N test images (quick runs; a noisier accuracy)
    batch_size: int = 512
    workers: int | None = None           # None: chosen for the device
    cutout_p: float = 1.0                # the prescription: "followed by CutOut(8, 8)" on every image
    cutout_size: int = 8

    # schedule: OneCycle, linear, two phases (no annihilation)
    epochs: int = 24
    peak_epoch: int | None = None        # None: 5/24 of the run (epoch 5 of 24), at least 1
    max_lr: float | None = None          # None: LRMAX from the LR range test
    div_factor: float = 100.0            # LRMIN = LRMAX / div_factor, the schedule's first LR
    final_div_factor: float = 1e4        # last LR = LRMIN / final_div_factor, about 0

    # optimizer and loss
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    adam_weight_decay: float = 1e-4
    label_smoothing: float = 0.2
    logit_scale: float = 0.125           # Page's parameter-free output scale

    # levers that train the same network better (modular/recipe.py), off by default
    whiten_init: bool = False            # prep conv's filters from the training patches' covariance
    dirac_init: bool = False             # the residual blocks' convs start as the identity
    frozen_bn_scale: bool = False        # every BatchNorm scale fixed at 1
    bn_bias_lr_factor: float = 1.0       # BatchNorm biases at this x the LR, weight decay / this (SGD)
    ema_decay: float | None = None       # None: no EMA; else the decay per training step of the weights' moving average...
    ema_every: int = 5                   # ...updated every this many steps (by decay ** every), evaluated and shipped
    multiview_tta: bool = False          # also report TTA over flips and one-pixel shifts (never the headline)

    # LR range test (torch-lr-finder)
    lr_find_start: float = 1e-4
    lr_find_end: float = 10.0
    lr_find_iters: int = 100
    lr_rule: str = "minimum"             # one of LR_RULES

    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"              # "auto": bf16/fp16 autocast where supported; "fp32" forces fp32
    compile: bool = False
    output_dir: str = "runs/default"

    @property
    def resolved_peak_epoch(self) -> int:
        """The epoch whose last step carries the peak LR: 5 of 24 unless set."""
        if self.peak_epoch is not None:
            return self.peak_epoch
        return max(1, round(self.epochs * 5 / 24))

    @property
    def evaluated_on(self) -> str:
        """What a run's "test" figures measure: the held-out training images of val_split, or the test set."""
        return "validation" if self.val_split else "test"

    def validate(self) -> Config:
        """Raise ConfigError naming the first value that is out of range."""
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1 (got {self.epochs})"),
            (self.peak_epoch is None or 1 <= self.peak_epoch <= self.epochs,
             f"peak epoch must lie in 1..{self.epochs} (got {self.peak_epoch})"),
            (self.batch_size >= 1, f"batch size must be at least 1 (got {self.batch_size})"),
            (self.max_lr is None or 0 < self.max_lr < math.inf, f"max LR must be a number > 0 (got {self.max_lr})"),
            (self.subset is None or self.subset >= 10,
             f"subset must hold at least one image per class, 10 or more (got {self.subset})"),
            (self.test_subset is None or self.test_subset >= 10,
             f"test subset must hold at least one image per class, 10 or more (got {self.test_subset})"),
            (self.workers is None or self.workers >= 0, f"workers must be >= 0 (got {self.workers})"),
            (0 <= self.seed <= MAX_SEED, f"seed must lie in 0..{MAX_SEED} (got {self.seed})"),
            (0.0 <= self.cutout_p <= 1.0, f"cutout probability must lie in [0, 1] (got {self.cutout_p})"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)} (got {self.device!r})"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})"),
            (0 < self.lr_find_start < self.lr_find_end,
             f"LR range test needs 0 < start < end (got {self.lr_find_start}, {self.lr_find_end})"),
            (self.lr_rule in LR_RULES, f"LR rule must be one of {', '.join(LR_RULES)} (got {self.lr_rule!r})"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must lie in [0, 1) (got {self.label_smoothing})"),
            (0 < self.logit_scale < math.inf, f"logit scale must be a number > 0 (got {self.logit_scale})"),
            (self.lr_find_iters >= 20, f"LR range test needs at least 20 iterations (got {self.lr_find_iters})"),
            (self.val_split is None or self.val_split >= 10,
             f"validation split must hold at least one image per class, 10 or more (got {self.val_split})"),
            (0 < self.bn_bias_lr_factor < math.inf, f"BN bias LR factor must be a number > 0 (got {self.bn_bias_lr_factor})"),
            (self.bn_bias_lr_factor == 1.0 or self.optimizer == "sgd",
             f"BN bias LR factor {self.bn_bias_lr_factor:g} works with SGD only (Adam ignores a gradient's scale): "
             "use --optimizer sgd or --bn-bias-lr-factor 1"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, f"EMA decay must lie in (0, 1) (got {self.ema_decay})"),
            (self.ema_every >= 1, f"EMA interval must be at least 1 step (got {self.ema_every})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def differences(self, other: Config) -> list[str]:
        """Fields (outside RUNTIME_FIELDS) whose values differ, as 'name: mine != other'."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {theirs[k]!r} != {mine[k]!r}" for k in mine
                if k not in RUNTIME_FIELDS and mine[k] != theirs[k]]
