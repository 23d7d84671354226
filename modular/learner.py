"""The Learner: a run's config, data loaders, model, optimizer and device in one object, and what a run
does with them: ``lr_find()`` (the LR range test), ``fit_one_cycle()`` (OneCycle training, a
checkpoint after every epoch, resumable) and ``evaluate()``.

Shaped after fastai's Learner; the step loop reads top-down like torchvision's reference
``train_one_epoch``. From ``fit_one_cycle`` to ``optimizer.step`` everything is in this file:
``fit_one_cycle`` -> ``train_one_epoch`` -> the step, inline. The Learner writes nothing but its
checkpoint: the run record and the plots are made from what it returns (modular/tools/train_command.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.swa_utils import AveragedModel

from custom_resnet import CustomResNet
from modular.checkpoint import (
    Checkpoint,
    CheckpointError,
    RunFacts,
    RunSoFar,
    Weights,
    checkpoint_path,
    load_model_state,
    load_optimizer_state,
    read_checkpoint,
    save_checkpoint,
)
from modular.config import Config
from modular.data import CifarData, channel_stats, load_data
from modular.device import Runtime, runtime_part, select_runtime
from modular.evaluate import Evaluation, full_evaluation, predict
from modular.loaders import make_loaders
from modular.lr_finder import LRFinderError, LRFindResult, find_lr
from modular.progress import Progress, format_epoch, table_header
from modular.recipe import ema_model, prepare_model, update_ema
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
                    scaler: torch.amp.GradScaler, batches, runtime: Runtime, epoch: int, bar: bool | None = None,
                    log: Callable[[str], None] = print, ema: AveragedModel | None = None,
                    ema_every: int = 1) -> EpochStats:
    """One pass over ``batches`` (the training loader), the schedule advanced after every step, and
    ``ema`` (if any) updated from ``model`` every ``ema_every`` steps of the run.

    Loss sums, correct counts and the first step with a non-finite loss stay on the device; the host
    reads them every READ_EVERY steps and at the end, so a GPU never waits for the CPU inside the loop.
    A NaN/inf loss raises DivergenceError naming its step (the weights in memory are spoiled by then;
    the last checkpoint on disk is not).
    """
    model.train()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    first_bad = torch.zeros((), device=runtime.device, dtype=torch.long)  # 0: every loss so far finite
    seen, lrs, note = 0, [], None
    with Progress(f"epoch {epoch}", len(batches), "steps", log, bar) as progress:
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
            if ema is not None and ((epoch - 1) * len(batches) + step) % ema_every == 0:
                update_ema(ema, model)

            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            loss_sum += loss.detach().float() * len(targets)
            correct += (logits.detach().argmax(1) == targets).sum()
            seen += len(targets)
            if step % READ_EVERY == 0 or step == len(batches):
                if bad_step := int(first_bad):
                    raise DivergenceError(f"loss became NaN/inf at epoch {epoch}, step {bad_step}; lower --max-lr")
                note = f"train loss {float(loss_sum) / seen:.3f}, train acc {100 * int(correct) / seen:.1f}%"
            progress.update(step, note)
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

    ``start``: what to begin from instead of a new model initialised from cfg.seed: ``Weights`` (to
    evaluate them), a ``RunSoFar`` (a finished run: its epochs and range test are shown, not redone) or
    a ``Checkpoint``, which ``fit_one_cycle`` continues after its last finished epoch (see
    modular/checkpoint.py). ``log`` takes every line the Learner prints: the epoch table, progress, its LR.
    """

    def __init__(self, cfg: Config, data: CifarData | None = None, start: Weights | RunSoFar | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.log = cfg.validate(), log
        self.runtime = select_runtime(cfg.device, cfg.precision)
        self.data = data if data is not None else load_data(cfg)
        weights = start.weights if isinstance(start, RunSoFar) else start
        # a run keeps the statistics it was trained with; a new one computes them from its training images
        mean, std = (weights.mean, weights.std) if weights else channel_stats(self.data.train_images)
        self.train_transform = train_transforms(mean, std, cfg.cutout_p, cfg.cutout_size, seed=cfg.seed)
        self.test_transform = test_transforms(mean, std)
        self.train_loader, self.test_loader = make_loaders(self.data, self.train_transform, self.test_transform, cfg,
                                                           self.runtime)
        self.model = self.runtime.prepare_model(prepare_model(new_model(cfg), cfg, self.data.train_images, mean, std,
                                                              initialise=weights is None))
        self.criterion = build_criterion(cfg)
        self.optimizer = build_optimizer(self.model, cfg, cfg.lr_find_start, fused=self.runtime.fused_optimizer)
        lr_min = None if cfg.max_lr is None else cfg.max_lr / cfg.div_factor
        self.facts = (dataclasses.replace(start.facts) if isinstance(start, RunSoFar)
                      else RunFacts(list(mean), list(std), cfg.max_lr, lr_min))
        self.source = weights.source if weights else str(self.checkpoint_path)
        self._begin_from(start)
        self.facts.ran_on = [*self.facts.ran_on, runtime_part(self.runtime, self.epochs_done)]
        self._interrupted = False

    def _begin_from(self, start: Weights | RunSoFar | None) -> None:
        """The model's weights and the finished epochs of ``start`` (nothing for a new run), and the weights'
        moving average where the run trains on (a given model's weights are already the ones it is judged by)."""
        weights = start.weights if isinstance(start, RunSoFar) else start
        if weights is not None:
            load_model_state(self.model, weights)
        run = start if isinstance(start, RunSoFar) else None
        self.history = list(run.history) if run else []
        self.lr_per_step = list(run.lr_per_step) if run else []
        self.checkpoint = start if isinstance(start, Checkpoint) else None
        self.ema = ema_model(self.model, self.cfg) if start is None or self.checkpoint else None
        if self.ema is not None and self.checkpoint is not None and self.checkpoint.ema is not None:
            self.ema.load_state_dict(self.checkpoint.ema)

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights a run is judged by and ships: their moving average when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def epochs_done(self) -> int:
        return len(self.history)

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
            started = time.perf_counter()
            found = find_lr(self.model, self.optimizer, self.criterion, self.train_loader, self.runtime, self.cfg,
                            log=self.log)
            self.facts.lr_max, self.facts.lr_min = found.lr_max, found.lr_min
            self.facts.lr_find, self.facts.lr_find_seconds = found.to_dict(), time.perf_counter() - started
        self.log(f"LRMAX {found.lr_max:.4g}, LRMIN {found.lr_min:.4g} (OneCycle peak at epoch "
                 f"{self.cfg.resolved_peak_epoch} of {self.cfg.epochs})")
        return found

    def fit_one_cycle(self, lr_max: float | None = None, bar: bool | None = None) -> FitResult:
        """Train the epochs left of cfg.epochs with OneCycle from LRMIN up to ``lr_max`` (default: what
        ``lr_find`` picked, or cfg.max_lr) at the last step of cfg's peak epoch and down to ~0. After every
        epoch: evaluate on the test set, write <output_dir>/checkpoint.pt, print the epoch's row of the
        table (which starts with the epochs already finished). ``bar``: progress within an epoch as a bar
        (default: in a terminal), else as lines through ``log``."""
        cfg = self.cfg
        self._set_lr_max(lr_max)
        scheduler, scaler = self._schedule_and_scaler()
        model = torch.compile(self.model) if cfg.compile else self.model
        self.log(table_header(cfg.evaluated_on))
        for row in self.history:
            self.log(format_epoch(row))
        self._interrupted = True  # until the last epoch is saved
        for epoch in range(self.epochs_done + 1, cfg.epochs + 1):
            began = time.perf_counter()
            self.train_loader.sampler.set_epoch(epoch)  # the epoch's order and augmentations: seed and epoch
            stats = train_one_epoch(model, self.criterion, self.optimizer, scheduler, scaler, self.train_loader,
                                    self.runtime, epoch, bar, self.log, self.ema, cfg.ema_every)
            test = predict(self.evaluated_model, self.test_loader, self.runtime, self.criterion)
            if not math.isfinite(test.loss):  # diverged weights: keep the last good checkpoint
                raise DivergenceError(f"loss became NaN/inf at epoch {epoch}, step {len(self.train_loader)} "
                                      "(the test loss after the epoch's last step); lower --max-lr")
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy, "test_loss": test.loss,
                   "test_ce": test.cross_entropy, "test_acc": test.accuracy, "lr": stats.lrs[-1],
                   "seconds": time.perf_counter() - began, "checkpoint_seconds": None}
            self.history.append(row)
            self.lr_per_step.extend(stats.lrs)
            saving = time.perf_counter()
            self._save_checkpoint(scheduler, scaler)
            # an epoch's time includes its checkpoint's write (on Google Drive, seconds): the checkpoint can
            # hold only the time before its write for its own last epoch, the next epoch's holds both
            row["checkpoint_seconds"] = time.perf_counter() - saving
            row["seconds"] = time.perf_counter() - began
            self.log(format_epoch(row))
        self._interrupted = False
        return self.result()

    def _set_lr_max(self, lr_max: float | None) -> None:
        """OneCycle's peak: ``lr_max`` if given (a continued run must keep its own), else the one decided."""
        if self._interrupted:
            raise CheckpointError("an earlier fit_one_cycle stopped mid-epoch and left this Learner's model and "
                                  "optimizer there: make the Learner again (it continues from its checkpoint)")
        if lr_max is not None and self.epochs_done and lr_max != self.facts.lr_max:
            raise CheckpointError(f"{self.source} was trained with LRMAX {self.facts.lr_max:g}, not {lr_max:g}")
        if lr_max is not None:
            self.facts.lr_max, self.facts.lr_min = lr_max, lr_max / self.cfg.div_factor
        if self.facts.lr_max is None:
            raise LRFinderError("no LRMAX yet: call lr_find() first, or give lr_max (--max-lr)")

    def _schedule_and_scaler(self) -> tuple[OneCycleLR, torch.amp.GradScaler]:
        """OneCycle and the GradScaler, as they were after the last finished epoch when continuing a run."""
        scheduler = one_cycle(self.optimizer, self.cfg, self.facts.lr_max, len(self.train_loader))
        scaler = self.runtime.grad_scaler()
        if self.epochs_done < self.cfg.epochs and self.epochs_done:
            if self.checkpoint is None:
                raise CheckpointError(f"{self.source} holds weights and epochs only, no run to continue")
            load_optimizer_state(self.optimizer, self.checkpoint.optimizer)
            scheduler.load_state_dict(self.checkpoint.scheduler)
            if self.checkpoint.scaler:
                scaler.load_state_dict(self.checkpoint.scaler)
            torch.set_rng_state(self.checkpoint.rng)
        return scheduler, scaler

    def _save_checkpoint(self, scheduler: OneCycleLR, scaler: torch.amp.GradScaler) -> None:
        weights = Weights(self.model.state_dict(), self.facts.mean, self.facts.std, str(self.checkpoint_path))
        save_checkpoint(Checkpoint(weights, self.facts, self.history, self.lr_per_step, self.optimizer.state_dict(),
                                   scheduler.state_dict(), scaler.state_dict(), torch.get_rng_state(),
                                   self.cfg.to_dict(), self.ema.state_dict() if self.ema is not None else None),
                        self.checkpoint_path)

    def result(self) -> FitResult:
        """The epochs finished so far, with the model as it is now."""
        return FitResult(list(self.history), list(self.lr_per_step), self.facts, self.evaluated_model)

    def rewind(self) -> FitResult:
        """Back to the last finished epoch after a failed one (a NaN loss spoils the weights in memory):
        the checkpoint's weights and epochs, or none when no epoch finished."""
        path = self.checkpoint_path
        self._begin_from(read_checkpoint(path) if path.exists() else None)
        return self.result()

    def evaluate(self) -> Evaluation:
        """The model on the test set: accuracy, loss, flip TTA, per class, confusion matrix, misclassified."""
        return full_evaluation(self.evaluated_model, self.test_loader, self.runtime, self.data.classes, self.criterion,
                               log=self.log, multiview=self.cfg.multiview_tta)
