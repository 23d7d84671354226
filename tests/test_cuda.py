"""The CUDA path on a real GPU: what tests/test_gpu_path.py can only reason about with mocks on the CPU.

Skipped where no CUDA GPU is visible (CI has none: it says "skipped", never fails). On a GPU (the prepared
call: tools/gpu_check.sh) they check that fused SGD under GradScaler, over steps forced to overflow, trains
exactly as foreach SGD does; that a training batch arrives pinned and channels_last and reaches the GPU in
one copy; that the step loop (``learner.train_one_epoch``) waits for the GPU only when it reads its loss,
every READ_EVERY steps, the weights' moving average adding no wait; and that the fp16 path a T4 gets and
the bf16 path each train a few hundred steps on synthetic data without a NaN, fp16's loss scale staying >= 1.
"""

from __future__ import annotations

import math
import warnings

import helpers  # noqa: F401  (environment and sys.path)
import pytest
import torch

from modular import device as device_module
from modular.checkpoint import read_checkpoint
from modular.config import Config
from modular.device import Runtime, select_runtime
from modular.learner import READ_EVERY, Learner, build_criterion, build_optimizer, new_model, train_one_epoch
from modular.loaders import make_loaders
from modular.recipe import ema_model
from modular.schedule import one_cycle
from modular.tools.synthetic import synthetic_cifar10
from modular.transforms import test_transforms as make_test_transforms
from modular.transforms import train_transforms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh runs "
                                "these on one)")

CUDA = torch.device("cuda")
STATS = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def t4_or_ampere(monkeypatch, precision: str) -> None:
    """Make select_runtime decide as on a T4 (compute capability 7.5: fp16 with GradScaler) or on an A100
    (8.0: bf16), whatever this GPU is; only the decision is patched, torch's CUDA queries are left alone."""
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no native bf16 (compute capability below 8.0)")
    decide = device_module.cuda_autocast_dtype
    capability = (7, 5) if precision == "fp16" else (8, 0)
    monkeypatch.setattr(device_module, "cuda_autocast_dtype", lambda _: decide(capability))


def pinned_batches(steps: int, batch_size: int = 64, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random batches as the loader hands them over: pinned host memory, images in channels_last."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last).pin_memory(),
             torch.randint(0, 10, (batch_size,), generator=g).pin_memory()) for _ in range(steps)]


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()]).cpu()


# --------------------------------------------------------------------------------------------
# Fused SGD's momentum buffers under GradScaler's skipped steps
# --------------------------------------------------------------------------------------------

HUGE_SCALE = 2.0 ** 40  # every fp16 gradient overflows until GradScaler has halved this some 25 times
FP16 = Runtime(CUDA, torch.float16, channels_last=True)


def train_fp16(optimizer_for, steps: int = 48) -> tuple[torch.Tensor, float, torch.Tensor]:
    """``steps`` fp16 steps of the model from seed 0 with a GradScaler starting at HUGE_SCALE, the optimizer
    made by ``optimizer_for(model)``: (final weights, final scale, initial weights)."""
    cfg = Config(batch_size=64)
    model = FP16.prepare_model(new_model(cfg))
    before = weights(model)
    optimizer = optimizer_for(model)
    scheduler = one_cycle(optimizer, cfg, 0.05, steps)
    scaler = torch.amp.GradScaler("cuda", init_scale=HUGE_SCALE)
    train_one_epoch(model, build_criterion(cfg), optimizer, scheduler, scaler, pinned_batches(steps), FP16, epoch=1,
                    log=lambda _: None)
    torch.cuda.synchronize()
    return weights(model), scaler.get_scale(), before


@pytest.fixture
def deterministic(monkeypatch):
    """The same kernels in both runs, so that fused and foreach SGD are compared and nothing else."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


def test_fused_sgd_over_forced_overflows_trains_as_foreach_sgd(deterministic):
    """build_optimizer zeroes fused SGD's momentum buffers: the CUDA kernel, whose first step is skipped here
    (and the next twenty-odd), must then give the weights foreach SGD gives."""
    fused, fused_scale, before = train_fp16(lambda model: build_optimizer(model, Config(), 0.0005, fused=True))
    foreach, foreach_scale, _ = train_fp16(lambda model: build_optimizer(model, Config(), 0.0005, fused=False))
    assert max(fused_scale, foreach_scale) < HUGE_SCALE / 2 ** 10  # ten steps or more were skipped ...
    assert not torch.equal(fused, before)                          # ... and the later ones were taken
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, foreach, rtol=1e-3, atol=1e-5)


def test_the_check_above_sees_fused_sgds_own_uninitialised_buffers(deterministic):
    """torch's fused SGD without the zeroed buffers, after freed GPU memory was filled with NaN: the buffers it
    allocates on a skipped first step keep what that memory held. If the allocator happens to hand out other
    memory there is nothing to see, and this says so (skips) instead of passing."""
    def raw_fused_sgd(model):
        poison = [torch.full_like(p, math.nan) for p in model.parameters() for _ in range(4)]
        del poison  # back to the caching allocator, NaN still in it
        return torch.optim.SGD(model.parameters(), lr=0.0005, momentum=0.9, nesterov=True, weight_decay=5e-4,
                               fused=True)

    raw, _, _ = train_fp16(raw_fused_sgd)
    foreach, _, _ = train_fp16(lambda model: build_optimizer(model, Config(), 0.0005, fused=False))
    if torch.isfinite(raw).all() and torch.allclose(raw, foreach, rtol=1e-3, atol=1e-5):
        pytest.skip("the momentum buffers got clean memory this time: nothing to show")
    assert not torch.isfinite(raw).all() or not torch.allclose(raw, foreach, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------------------------
# One copy per batch: pinned, channels_last
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_a_training_batch_arrives_pinned_in_channels_last_and_reaches_the_gpu_in_one_copy(workers):
    runtime = select_runtime("cuda")
    data = synthetic_cifar10(n_train=128, n_test=20, seed=0)
    train, _ = make_loaders(data, train_transforms(*STATS), make_test_transforms(*STATS),
                            Config(batch_size=32, workers=workers), runtime)
    images, labels = next(iter(train))
    assert images.is_pinned() and labels.is_pinned()
    assert images.is_contiguous(memory_format=torch.channels_last)
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        moved = runtime.to_device(images)
        torch.cuda.synchronize()
    names = [event.name for event in profile.events()]
    assert names.count("aten::copy_") == 1 and "aten::clone" not in names, names   # no second copy on the GPU
    copies = [name for name in names if name.startswith("Memcpy")]
    assert copies == ["Memcpy HtoD (Pinned -> Device)"], names                    # one asynchronous copy
    assert moved.device.type == "cuda" and moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.cpu(), images)


# --------------------------------------------------------------------------------------------
# The step loop waits for the GPU every READ_EVERY steps, not every step
# --------------------------------------------------------------------------------------------

def syncs_in_an_epoch(steps: int, runtime: Runtime, criterion=None, ema: bool = False) -> int:
    """How many times one epoch of ``steps`` steps made the CPU wait for the GPU, as torch's sync debug mode
    counts them (a warning for each synchronizing call: .item(), int(), float(), a blocking copy, ...).
    The model is warmed up first (cuDNN's kernel choice), outside the count; ``ema``: a moving average of the
    weights updated every 5 steps."""
    cfg = Config(batch_size=64)
    model = runtime.prepare_model(new_model(cfg))
    optimizer = build_optimizer(model, cfg, 0.0005, fused=runtime.fused_optimizer)
    scheduler, scaler = one_cycle(optimizer, cfg, 0.05, steps + 2), runtime.grad_scaler()
    loss = criterion(build_criterion(cfg)) if criterion else build_criterion(cfg)
    average = ema_model(model, Config(ema_decay=0.99)) if ema else None
    train_one_epoch(model, loss, optimizer, scheduler, scaler, pinned_batches(2), runtime, epoch=1, log=lambda _: None,
                    ema=average, ema_every=5)
    batches = pinned_batches(steps)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(model, loss, optimizer, scheduler, scaler, batches, runtime, epoch=2, log=lambda _: None,
                            ema=average, ema_every=5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_step_loop_waits_for_the_gpu_only_when_it_reads_every_read_every_steps(monkeypatch, precision):
    """An epoch of READ_EVERY + 5 steps reads twice (step READ_EVERY and the last), one of 3 * READ_EVERY + 5
    steps four times: the waits grow with the reads, never with the steps. Each read takes at most 3 (the
    NaN check, the loss sum, the correct count), and the end of the epoch 2 more."""
    t4_or_ampere(monkeypatch, precision)
    runtime = select_runtime("cuda")
    assert runtime.precision == precision and runtime.fused_optimizer
    short, long = syncs_in_an_epoch(READ_EVERY + 5, runtime), syncs_in_an_epoch(3 * READ_EVERY + 5, runtime)
    assert 0 < short <= 2 * 3 + 2 and 0 < long <= 4 * 3 + 2, (short, long)
    assert long - short <= 2 * 3, (short, long)


def test_the_moving_average_adds_no_wait_for_the_gpu():
    """update_ema every 5 steps: as many waits with the moving average as without (AveragedModel's own update
    would add one per update)."""
    runtime = select_runtime("cuda")
    steps = 3 * READ_EVERY + 5
    assert syncs_in_an_epoch(steps, runtime, ema=True) == syncs_in_an_epoch(steps, runtime)


def test_the_sync_count_sees_a_read_in_every_step():
    """The count above can fail: a loss read with .item() in every step shows as a wait in every step."""
    def reading(criterion):
        def loss_and_read(logits, targets):
            loss = criterion(logits, targets)
            loss.item()
            return loss
        return loss_and_read

    runtime = select_runtime("cuda")
    steps = READ_EVERY + 5
    assert syncs_in_an_epoch(steps, runtime, reading) - syncs_in_an_epoch(steps, runtime) >= steps


# --------------------------------------------------------------------------------------------
# fp16 (a T4's path) and bf16 train a few hundred steps
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_each_precision_trains_a_few_hundred_steps_without_nan(monkeypatch, tmp_path, precision):
    """300 steps (3 epochs of 100, batch 128) of the full model through Learner.fit_one_cycle on synthetic data:
    every loss finite, the synthetic classes learnt, and on fp16 the GradScaler's scale >= 1 after every step
    (a scale below 1 would mean it kept finding overflows: gradients that fp16 cannot hold)."""
    t4_or_ampere(monkeypatch, precision)
    scales = []
    update = torch.amp.GradScaler.update

    def recorded_update(self, new_scale=None):
        update(self, new_scale)
        if self.is_enabled():
            scales.append(self._scale.detach().clone())  # stays on the GPU: no wait added to the loop

    monkeypatch.setattr(torch.amp.GradScaler, "update", recorded_update)
    cfg = Config(device="cuda", batch_size=128, epochs=3, max_lr=0.2, workers=2, output_dir=str(tmp_path))
    learner = Learner(cfg, synthetic_cifar10(n_train=12_800, n_test=1_000, seed=0), log=lambda _: None)
    assert learner.runtime.precision == precision and learner.runtime.needs_grad_scaler == (precision == "fp16")
    result = learner.fit_one_cycle(bar=False)
    assert len(result.history) == 3 and len(result.lr_per_step) == 300
    for row in result.history:
        assert all(math.isfinite(row[key]) for key in ("train_loss", "test_loss", "test_ce")), row
    assert result.history[-1]["test_acc"] > 50.0  # chance is 10%
    assert torch.isfinite(weights(learner.model)).all()
    if precision == "fp16":
        assert len(scales) == 300 and float(torch.stack(scales).min()) >= 1.0
        assert read_checkpoint(learner.checkpoint_path).scaler["scale"] >= 1.0
    else:
        assert scales == []
