"""The training loop: one epoch, and ``fit`` over all epochs with a checkpoint after each.

Nothing lives at module level: ``fit`` returns the history and the LR of every step.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modular.checkpoint import load_model_state, save_checkpoint
from modular.config import Config
from modular.device import Runtime
from modular.evaluate import predict
from modular.prepare import Prepared
from modular.progress import ProgressLines, terminal
from modular.record import RunFacts
from modular.schedule import advance, one_cycle


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


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


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore a checkpoint's optimizer state, keeping this run's choice of fused kernels (the saved
    param groups carry the flag of the run that wrote them, possibly on another device) and this
    run's memory layout: buffers shaped like their parameter (momentum, Adam's averages) take its
    strides. A checkpoint written in NCHW (on MPS, or by an older CPU fp32 run) otherwise keeps NCHW
    buffers beside channels_last parameters, and fused SGD on CUDA refuses to step with them."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flag in zip(optimizer.param_groups, fused):
        group["fused"] = flag
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def build_criterion(cfg: Config) -> torch.nn.Module:
    """Cross-entropy on logits (the softmax lives here, not in the model)."""
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    lrs: list[float] = field(default_factory=list)


@dataclass
class Trainer:
    """The pieces every training step shares."""
    model: torch.nn.Module           # what the steps call: the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    scaler: torch.amp.GradScaler     # enabled on the fp16 path only
    runtime: Runtime

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward under the run's autocast, backward, optimizer step; returns (loss, logits), detached
        and still on the device. Nothing here reads a value back to the host."""
        with self.runtime.autocast():
            logits = self.model(images)
            loss = self.criterion(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()


READ_EVERY = 25  # steps between reads of the running loss on the host (progress bar, NaN check)


def train_epoch(trainer: Trainer, loader, scheduler, epoch: int, bar: bool = False,
                log: Callable[[str], None] = print) -> EpochStats:
    """One pass over ``loader``, the schedule advanced after every batch; progress in a tqdm bar
    (``bar``) or in lines through ``log`` (``progress.ProgressLines``: none in a short epoch).

    Loss sums, correct counts and the first step with a non-finite loss stay on the device; the
    host reads them every READ_EVERY steps and at the end, so a GPU never waits for the CPU inside
    the loop. A NaN/inf loss raises DivergenceError naming its step (the weights in memory are
    spoiled by then; the last checkpoint on disk is not).
    """
    from tqdm import tqdm

    runtime = trainer.runtime
    trainer.model.train()
    loader.sampler.set_epoch(epoch)
    steps = len(loader)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    first_bad = torch.zeros((), device=runtime.device, dtype=torch.long)  # 0: every loss so far finite
    seen = 0
    lrs: list[float] = []
    lines = ProgressLines(f"epoch {epoch}", steps, "steps", log)  # host clock only: no read from the device
    progress = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not bar, dynamic_ncols=True)
    for step, (images, targets) in enumerate(loader, start=1):
        images, targets = runtime.to_device(images), targets.to(runtime.device, non_blocking=True)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])  # the LR this step uses, recorded before stepping
        loss, logits = trainer.step(images, targets)
        advance(scheduler)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss.float() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if step % READ_EVERY == 0 or step == steps:
            if bad_step := int(first_bad):
                progress.close()
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
    return EpochStats(float(loss_sum) / seen, 100.0 * int(correct) / seen, lrs)


# "loss" is the training criterion (label smoothing included); "CE" the plain cross-entropy on the test set
TABLE_HEADER = (f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}  {'test loss':>9}  {'test CE':>7}  {'test acc':>8}  "
                f"{'lr':>9}  {'time':>6}")


def format_epoch(row: dict) -> str:
    test_ce = f"{row['test_ce']:>7.4f}" if "test_ce" in row else f"{'-':>7}"  # older records lack it
    return (f"{row['epoch']:>5}  {row['train_loss']:>10.4f}  {row['train_acc']:>8.2f}%  {row['test_loss']:>9.4f}  "
            f"{test_ce}  {row['test_acc']:>7.2f}%  {row['lr']:>9.2e}  {row['seconds']:>5.0f}s")


@dataclass
class FitResult:
    history: list[dict]
    lr_per_step: list[float]
    model: torch.nn.Module
    resumed_from: int = 0          # epochs already done when fit started


def fit(prepared: Prepared, model: torch.nn.Module, facts: RunFacts, checkpoint_path: str | Path,
        resume_state: dict | None = None, log: Callable[[str], None] = print,
        bar: bool | None = None) -> FitResult:
    """Train ``cfg.epochs`` epochs with OneCycle peaking at ``facts.lr_max``; evaluate and checkpoint
    after each. ``facts`` are stored in every checkpoint. ``resume_state`` (a loaded checkpoint)
    continues where it stopped: epochs already done are not redone. Progress within an epoch: a
    bar if ``bar`` (default: in a terminal), else lines through ``log``.
    """
    bar = terminal() if bar is None else bar
    cfg, runtime = prepared.cfg, prepared.runtime
    train_loader, test_loader = prepared.train_loader, prepared.test_loader
    model = runtime.prepare_model(model)
    optimizer = build_optimizer(model, cfg, facts.lr_min, fused=runtime.fused_optimizer)
    scheduler = one_cycle(optimizer, cfg, facts.lr_max, len(train_loader))
    scaler = runtime.grad_scaler()
    criterion = build_criterion(cfg)
    history: list[dict] = []
    lr_per_step: list[float] = []
    start = 0
    if resume_state is not None:
        load_model_state(model, resume_state, checkpoint_path)
        load_optimizer_state(optimizer, resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        history, lr_per_step = list(resume_state["history"]), list(resume_state["lr_per_step"])
        start = int(resume_state["epoch"])
    trainer = Trainer(torch.compile(model) if cfg.compile else model, optimizer, criterion, scaler, runtime)

    log(TABLE_HEADER)
    for row in history:
        log(format_epoch(row))
    with warnings.catch_warnings():
        # fp16: GradScaler skips the first steps while it calibrates, and torch then warns that
        # the scheduler stepped before the optimizer; that is expected here.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for epoch in range(start + 1, cfg.epochs + 1):
            began = time.perf_counter()
            stats = train_epoch(trainer, train_loader, scheduler, epoch, bar, log)
            test = predict(trainer.model, test_loader, runtime, criterion)
            if not math.isfinite(test.loss):  # diverged weights: keep the last good checkpoint
                raise DivergenceError(f"loss became NaN/inf at epoch {epoch}, step {len(train_loader)} "
                                      "(the test loss after the epoch's last step); lower --max-lr")
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy,
                   "test_loss": test.loss, "test_ce": test.cross_entropy, "test_acc": test.accuracy, "lr": stats.lrs[-1],
                   "seconds": time.perf_counter() - began}
            history.append(row)
            lr_per_step.extend(stats.lrs)
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "history": history, "lr_per_step": lr_per_step, "rng": {"torch": torch.get_rng_state()},
                "config": cfg.to_dict(), **facts.to_dict(),
            }, checkpoint_path)
            log(format_epoch(row))
    return FitResult(history, lr_per_step, model, resumed_from=start)
