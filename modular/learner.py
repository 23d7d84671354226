"""The Learner: a run's config, data loaders, model, optimizer and device in one object, and what a run
does with them: ``lr_find()`` (the LR range test), ``fit_one_cycle(epochs)`` (OneCycle training, a
checkpoint after every epoch, resumable) and ``evaluate()``.

Shaped after fastai's Learner; the step loop reads top-down like torchvision's reference
``train_one_epoch``. From ``fit_one_cycle`` to ``optimizer.step`` everything is in this file:
``fit_one_cycle`` -> ``train_one_epoch`` -> the step, inline. The Learner writes nothing but its
checkpoint: the run record and the plots are made from what it returns (modular/tools/train_command.py).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from custom_resnet import CustomResNet
from modular.checkpoint import (
    RESUME_REQUIRED,
    CheckpointError,
    RunFacts,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    save_checkpoint,
)
from modular.config import Config, ConfigError
from modular.data import CifarData, channel_stats, load_data
from modular.device import Runtime, runtime_part, select_runtime
from modular.evaluate import Evaluation, full_evaluation, predict
from modular.loaders import make_loaders
from modular.lr_finder import LRFinderError, LRFindResult, range_test
from modular.progress import TABLE_HEADER, ProgressLines, format_epoch, terminal
from modular.schedule import advance, one_cycle
from modular.transforms import test_transforms, train_transforms


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def new_model(cfg: Config) -> CustomResNet:
    """The prescribed model, initialised from cfg.seed."""
    torch.manual_seed(cfg.seed)
    return CustomResNet(logit_scale=cfg.logit_scale)


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (Page's recipe, default) or Adam (the original's). ``fused``: the
    single-kernel update (``Runtime.fused_optimizer`` decides), which also lets GradScaler step without
    reading its inf check back to the host."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.adam_weight_decay, fused=fused or None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, fused=fused or None)  # None: torch picks foreach
    if fused and cfg.momentum:
        # Fused SGD allocates its momentum buffers uninitialised on the first step and keeps them even
        # when GradScaler skips that step (fp16's first steps overflow as the scale calibrates); the
        # next step then adds that garbage to the weights (torch 2.14; tests/test_gpu_path.py shows it).
        # Zeros give the same first update as a fresh buffer (0.9 * 0 + grad = grad), and a skipped
        # step leaves them as they are.
        for param in model.parameters():
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return optimizer


def build_criterion(cfg: Config) -> torch.nn.Module:
    """Cross-entropy on logits (the softmax lives here, not in the model)."""
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    lrs: list[float]  # the LR of every step


READ_EVERY = 25  # steps between reads of the running loss on the host (progress, NaN check)


def train_one_epoch(model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    scaler: torch.amp.GradScaler, batches, runtime: Runtime, epoch: int, bar: bool = False,
                    log: Callable[[str], None] = print) -> EpochStats:
    """One pass over ``batches`` (the training loader), the schedule advanced after every step; progress
    in a tqdm bar (``bar``) or in lines through ``log`` (``progress.ProgressLines``: none in a short epoch).

    Loss sums, correct counts and the first step with a non-finite loss stay on the device; the host
    reads them every READ_EVERY steps and at the end, so a GPU never waits for the CPU inside the loop.
    A NaN/inf loss raises DivergenceError naming its step (the weights in memory are spoiled by then;
    the last checkpoint on disk is not).
    """
    from tqdm import tqdm

    model.train()
    steps = len(batches)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    first_bad = torch.zeros((), device=runtime.device, dtype=torch.long)  # 0: every loss so far finite
    seen = 0
    lrs: list[float] = []
    lines = ProgressLines(f"epoch {epoch}", steps, "steps", log)  # host clock only: no read from the device
    progress = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not bar, dynamic_ncols=True)
    for step, (images, targets) in enumerate(batches, start=1):
        images, targets = runtime.to_device(images), targets.to(runtime.device, non_blocking=True)
        lrs.append(optimizer.param_groups[0]["lr"])  # the LR this step uses, recorded before stepping
        with runtime.autocast():                     # bf16/fp16 where the hardware has it (device.py)
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()                # the scaler is a pass-through except on the fp16 path
        scaler.step(optimizer)                       # skipped when fp16 gradients overflowed
        scaler.update()
        advance(scheduler)
        loss, logits = loss.detach(), logits.detach()
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss.float() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if step % READ_EVERY == 0 or step == steps:
            if bad_step := int(first_bad):
                progress.close()
                lines.close()
                raise DivergenceError(f"loss became NaN/inf at epoch {epoch}, step {bad_step}; lower --max-lr")
            if step < steps:  # running figures for the bar or the next line (the epoch's own line follows its last step)
                loss_so_far, acc_so_far = float(loss_sum) / seen, 100 * int(correct) / seen
                lines.note = f"train loss {loss_so_far:.3f}, train acc {acc_so_far:.1f}%"
                if bar:
                    progress.set_postfix(loss=f"{loss_so_far:.3f}", lr=f"{lrs[-1]:.2e}", acc=f"{acc_so_far:.1f}%")
        progress.update(1)
        if not bar:
            lines.update(step)
    progress.close()
    lines.close()
    return EpochStats(float(loss_sum) / seen, 100.0 * int(correct) / seen, lrs)


@dataclass
class FitResult:
    """What a run has done so far: the run record and the figures are made from it."""
    history: list[dict]         # one row per finished epoch, as the table prints it
    lr_per_step: list[float]
    facts: RunFacts             # mean, std, LRMAX and LRMIN, the range test
    model: torch.nn.Module      # the weights after the last finished epoch


class Learner:
    """cfg, data, transforms, loaders, model, loss, optimizer and device of one run.

    ``state``: what to start from instead of a new model initialised from cfg.seed: a checkpoint
    (``checkpoint.find_checkpoint``), continued by ``fit_one_cycle`` after its last epoch; a finished run
    (``tools.weights.shipped_run``), which has nothing left to train; or weights with the mean and std
    they were trained with (evaluating a weights file). Its optional "source" names it in messages.
    ``log`` takes every line the Learner prints: the epoch table, progress, the LR it picked.
    """

    def __init__(self, cfg: Config, data: CifarData | None = None, state: dict | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.log, self.state = cfg.validate(), log, state
        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.data = data if data is not None else load_data(cfg)
        state = state or {}
        self.source = str(state.get("source", self.checkpoint_path))
        if "mean" in state and "std" in state:  # a resumed run or a weights file keeps its own statistics
            mean, std = state["mean"], state["std"]
        else:
            mean, std = channel_stats(self.data.train_images)
        self.train_transform = train_transforms(mean, std, cfg.cutout_p, cfg.cutout_size, seed=cfg.seed)
        self.test_transform = test_transforms(mean, std)
        self.train_loader, self.test_loader = make_loaders(self.data, self.train_transform, self.test_transform, cfg,
                                                           self.runtime)
        self.model = self.runtime.prepare_model(new_model(cfg))
        if "model" in state:
            load_model_state(self.model, state, self.source)
        self.criterion = build_criterion(cfg)
        self.optimizer = build_optimizer(self.model, cfg, cfg.lr_find_start, fused=self.runtime.fused_optimizer)
        self.epochs_done = int(state.get("epoch", 0))
        self.history, self.lr_per_step = list(state.get("history", [])), list(state.get("lr_per_step", []))
        lr_min = None if cfg.max_lr is None else cfg.max_lr / cfg.div_factor
        self.facts = RunFacts.from_dict({"lr_max": cfg.max_lr, "lr_min": lr_min, **state, "mean": list(mean),
                                         "std": list(std)})
        self.facts.ran_on = [*self.facts.ran_on, runtime_part(self.runtime, self.epochs_done)]
        self._interrupted = False

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.cfg)

    def lr_find(self) -> LRFindResult:
        """The LR range test (torch-lr-finder) with the training's loss and optimizer settings: the curve,
        and LRMAX and LRMIN read off it by lr_finder.RULE, which ``fit_one_cycle`` then uses. The model
        is left as it was. A run with finished epochs shows the range test it was started with."""
        if self.epochs_done:
            if self.facts.lr_find is None:
                raise LRFinderError(f"{self.source} was started with LRMAX {self.facts.lr_max:g} given (--max-lr): "
                                    "it has no range test")
            self.log(f"{self.source}: the range test its run was started with (not run again)")
            found = LRFindResult(**self.facts.lr_find)
        else:
            started = time.perf_counter()  # the range test restores the model's and optimizer's state after it
            found = range_test(self.model, self.optimizer, self.criterion, self.train_loader, self.runtime, self.cfg,
                               log=self.log)
            self.facts.lr_max, self.facts.lr_min = found.lr_max, found.lr_min
            self.facts.lr_find, self.facts.lr_find_seconds = found.to_dict(), time.perf_counter() - started
        self.log(f"LRMAX {found.lr_max:.4g}, LRMIN {found.lr_min:.4g} (OneCycle peak at epoch "
                 f"{self.cfg.resolved_peak_epoch} of {self.cfg.epochs})")
        return found

    def fit_one_cycle(self, epochs: int | None = None, lr_max: float | None = None, bar: bool | None = None) -> FitResult:
        """Train cfg.epochs epochs with OneCycle from LRMIN up to ``lr_max`` (default: what ``lr_find``
        picked, or cfg.max_lr) at the last step of cfg's peak epoch and down to ~0; after every epoch
        evaluate on the test set, print a table row and write <output_dir>/checkpoint.pt. A run begun
        from a checkpoint goes on after its last finished epoch; a finished run shows its table. ``bar``:
        progress within an epoch as a bar (default: in a terminal), else as lines through ``log``."""
        cfg, runtime = self.cfg, self.runtime
        if epochs is not None and epochs != cfg.epochs:
            raise ConfigError(f"this Learner's schedule and checkpoints are planned for {cfg.epochs} epochs (its "
                              f"config): make it with Config(epochs={epochs}) to train {epochs}")
        if lr_max is not None and self.epochs_done and lr_max != self.facts.lr_max:
            raise CheckpointError(f"{self.source} was trained with LRMAX {self.facts.lr_max:g}, not {lr_max:g}")
        if lr_max is not None:
            self.facts.lr_max, self.facts.lr_min = lr_max, lr_max / cfg.div_factor
        if self.facts.lr_max is None:
            raise LRFinderError("no LRMAX yet: call lr_find() first, or give lr_max (--max-lr)")
        if self._interrupted:
            raise CheckpointError("an earlier fit_one_cycle stopped mid-epoch and left this Learner's model and "
                                  "optimizer there: make the Learner again (it continues from its checkpoint)")
        if self.epochs_done >= cfg.epochs:
            self.log(f"{self.source} holds a finished run ({self.epochs_done} of {cfg.epochs} epochs): nothing left "
                     "to train; its epochs:")
        elif self.epochs_done:
            self.log(f"resuming {self.source} after epoch {self.epochs_done} of {cfg.epochs}")
        self.log(TABLE_HEADER)
        for row in self.history:
            self.log(format_epoch(row))
        if self.epochs_done >= cfg.epochs:
            return self.result()
        scheduler = one_cycle(self.optimizer, cfg, self.facts.lr_max, len(self.train_loader))
        scaler = runtime.grad_scaler()
        if self.epochs_done:  # the state the checkpoint saved after its last epoch
            if "optimizer" not in self.state:
                raise CheckpointError(f"{self.source} holds weights only, no run to continue")
            load_optimizer_state(self.optimizer, self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            if self.state.get("scaler"):
                scaler.load_state_dict(self.state["scaler"])
            torch.set_rng_state(self.state["rng"]["torch"])
        model = torch.compile(self.model) if cfg.compile else self.model
        bar = terminal() if bar is None else bar
        self._interrupted = True  # until the last epoch is saved
        with warnings.catch_warnings():
            # fp16: GradScaler skips the first steps while it calibrates, and torch then warns that
            # the scheduler stepped before the optimizer; that is expected here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for epoch in range(self.epochs_done + 1, cfg.epochs + 1):
                began = time.perf_counter()
                self.train_loader.sampler.set_epoch(epoch)  # the epoch's order and augmentations: seed and epoch
                stats = train_one_epoch(model, self.criterion, self.optimizer, scheduler, scaler, self.train_loader,
                                        runtime, epoch, bar, self.log)
                test = predict(model, self.test_loader, runtime, self.criterion)
                if not math.isfinite(test.loss):  # diverged weights: keep the last good checkpoint
                    raise DivergenceError(f"loss became NaN/inf at epoch {epoch}, step {len(self.train_loader)} "
                                          "(the test loss after the epoch's last step); lower --max-lr")
                row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy, "test_loss": test.loss,
                       "test_ce": test.cross_entropy, "test_acc": test.accuracy, "lr": stats.lrs[-1],
                       "seconds": time.perf_counter() - began}
                self.history.append(row)
                self.lr_per_step.extend(stats.lrs)
                self.epochs_done = epoch
                save_checkpoint({
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                    "history": self.history, "lr_per_step": self.lr_per_step, "rng": {"torch": torch.get_rng_state()},
                    "config": cfg.to_dict(), **self.facts.to_dict(),
                }, self.checkpoint_path)
                self.log(format_epoch(row))
        self._interrupted = False
        return self.result()

    def result(self) -> FitResult:
        """The epochs finished so far, with the model as it is now."""
        return FitResult(list(self.history), list(self.lr_per_step), self.facts, self.model)

    def rewind(self) -> FitResult:
        """Back to the last finished epoch after a failed one (a NaN loss spoils the weights in memory):
        the checkpoint's weights and epochs, or none when no epoch finished."""
        path = self.checkpoint_path
        state = load_checkpoint(path, RESUME_REQUIRED) if path.exists() else {"epoch": 0, "history": [], "lr_per_step": []}
        if "model" in state:
            load_model_state(self.model, state, path)
        self.state, self.epochs_done = state, int(state["epoch"])
        self.history, self.lr_per_step = list(state["history"]), list(state["lr_per_step"])
        return self.result()

    def evaluate(self) -> Evaluation:
        """The model on the test set: accuracy, loss, flip TTA, per class, confusion matrix, misclassified."""
        return full_evaluation(self.model, self.test_loader, self.runtime, self.data.classes, self.criterion, log=self.log)
