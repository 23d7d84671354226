"""The CUDA path, tested on the CPU: precision by compute capability (CUDA queries mocked), no host
read per training step (``learner.train_one_epoch``) on the fp16 path, a fused SGD that survives GradScaler's skipped first steps,
and one copy per batch. The same on a real GPU, skipped without one: tests/test_cuda.py."""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel
from torch.overrides import TorchFunctionMode

from modular import device as device_module
from modular import learner as learner_module
from modular.checkpoint import load_optimizer_state
from modular.config import Config
from modular.device import Runtime, select_runtime
from modular.learner import READ_EVERY, DivergenceError, build_criterion, build_optimizer, train_one_epoch
from modular.loaders import make_loaders
from modular.recipe import ema_model
from modular.schedule import one_cycle
from modular.tools.synthetic import synthetic_cifar10
from modular.transforms import test_transforms as make_test_transforms
from modular.transforms import train_transforms

# name, compute capability, the autocast dtype it must get
GPUS = [("Tesla T4", (7, 5), torch.float16), ("Tesla V100", (7, 0), torch.float16),
        ("A100", (8, 0), torch.bfloat16), ("L4", (8, 9), torch.bfloat16), ("H100", (9, 0), torch.bfloat16)]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch.cuda report one GPU of the given compute capability. is_bf16_supported says True
    for all of them, as torch's default (emulation counted) does on a T4: the choice must not follow it."""

    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    return install


@pytest.mark.parametrize("name, capability, dtype", GPUS, ids=[g[0] for g in GPUS])
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_precision_scaler_and_layout_by_compute_capability(fake_gpu, monkeypatch, name, capability, dtype, device):
    fake_gpu(capability)
    runtime = select_runtime(device, "auto")
    assert runtime.device == torch.device("cuda")
    assert runtime.amp_dtype == dtype
    assert runtime.needs_grad_scaler == (dtype == torch.float16)   # fp16 below 8.0 needs loss scaling
    assert runtime.channels_last and runtime.pin_memory and runtime.fused_optimizer
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append((device, enabled)))
    runtime.grad_scaler()
    assert made == [("cuda", dtype == torch.float16)]
    assert torch.backends.cudnn.benchmark


@pytest.mark.parametrize("name, capability, dtype", GPUS[:3], ids=[g[0] for g in GPUS[:3]])
def test_fp32_on_a_gpu_is_fp32_without_a_scaler(fake_gpu, name, capability, dtype):
    fake_gpu(capability)
    runtime = select_runtime("cuda", "fp32")
    assert runtime.amp_dtype is None and not runtime.needs_grad_scaler and runtime.channels_last


def test_the_cpu_keeps_unpinned_memory_and_an_unfused_optimizer_without_fp16():
    for runtime in (Runtime(torch.device("cpu"), torch.bfloat16, True), Runtime(torch.device("cpu"), None, False)):
        assert not runtime.pin_memory and not runtime.fused_optimizer


# --------------------------------------------------------------------------------------------
# No host read per step (fp16 + GradScaler + fused SGD, run on the CPU)
# --------------------------------------------------------------------------------------------

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__")
TORCH_CODE = os.path.dirname(torch.__file__)


def blocking_copy_to_the_host(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)``, called outside torch, is a blocking copy onto the CPU:
    on a GPU, ``.to("cpu")`` waits for the device like ``.item()``. On this CPU-only test every tensor
    is already there, so the project's copies to the device are told apart by being non-blocking (as
    they must be), and torch's own ``.to(device)`` of a tensor on its device (fused SGD's grad scale)
    by where it is called from."""
    device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **{k: v for k, v in kwargs.items() if k != "copy"})
    caller = sys._getframe(2).f_code.co_filename  # past HostReads.__torch_function__
    return device is not None and device.type == "cpu" and not non_blocking and not caller.startswith(TORCH_CODE)


class HostReads(TorchFunctionMode):
    """While active (``with HostReads() as reads``), counts in ``reads.counts`` every Tensor method call that
    brings a value back to the host (each would make the CPU wait for a GPU), blocking ``.to()`` copies onto
    the CPU included. A torch function mode sees every tensor call made inside its block, the project's and
    torch's own Python code alike, without patching anything of torch."""

    WATCHED = {getattr(torch.Tensor, name): name for name in (*HOST_READS, "to")}

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = self.WATCHED.get(func)
        if name is not None and (name != "to" or blocking_copy_to_the_host(args[1:], kwargs)):
            self.counts[name] += 1
        return func(*args, **kwargs)


FP16 = Runtime(torch.device("cpu"), torch.float16, channels_last=True)


def small_net() -> torch.nn.Module:
    """Conv-BN-ReLU-pool-FC: the loop's behaviour without the full model's cost (fp16 is slow on a CPU)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


@dataclass
class Fp16Epoch:
    """What ``train_one_epoch`` is given on the fp16 path: model, loss, fused SGD, OneCycle, GradScaler, batches."""
    model: torch.nn.Module
    criterion: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    batches: list
    ema: AveragedModel | None = None

    def run(self):
        return train_one_epoch(self.model, self.criterion, self.optimizer, self.scheduler, self.scaler, self.batches,
                               FP16, epoch=1, ema=self.ema, ema_every=2)


def fp16_epoch(steps: int, fused: bool = True, max_lr: float = 0.05) -> Fp16Epoch:
    cfg = Config(epochs=1, batch_size=8)
    torch.manual_seed(0)
    model = FP16.prepare_model(small_net())
    optimizer = build_optimizer(model, cfg, max_lr / cfg.div_factor, fused=fused)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (8,), generator=g)) for _ in range(steps)]
    return Fp16Epoch(model, build_criterion(cfg), optimizer, one_cycle(optimizer, cfg, max_lr, steps), FP16.grad_scaler(),
                     batches)


def host_reads_in_an_epoch(steps: int, fused: bool = True, criterion=None, ema: bool = False) -> int:
    """Host reads in one fp16 epoch of ``steps`` steps; ``criterion(loss_fn)`` may wrap the loss; ``ema``: a
    moving average of the weights updated every 2 steps."""
    epoch = fp16_epoch(steps, fused)
    epoch.ema = ema_model(epoch.model, Config(ema_decay=0.99)) if ema else None
    assert epoch.scaler.is_enabled() and FP16.needs_grad_scaler
    epoch.criterion = criterion(epoch.criterion) if criterion else epoch.criterion
    with HostReads() as reads:
        epoch.run()
    return sum(reads.counts.values())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_fp16_training_loop_reads_nothing_back_per_step():
    """4 steps or 12: the same handful of reads, all at the end of the epoch."""
    assert host_reads_in_an_epoch(4) == host_reads_in_an_epoch(12) <= 5


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_moving_average_reads_nothing_back_per_step():
    assert host_reads_in_an_epoch(4, ema=True) == host_reads_in_an_epoch(12, ema=True) <= 5


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_host_read_counter_sees_averaged_models_own_update_read_its_count(monkeypatch):
    """Why update_ema exists: AveragedModel.update_parameters reads its count back at every update."""
    monkeypatch.setattr(learner_module, "update_ema", lambda ema, model: ema.update_parameters(model))
    assert host_reads_in_an_epoch(12, ema=True) - host_reads_in_an_epoch(4, ema=True) >= 4


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_host_read_counter_sees_an_unfused_gradscaler_step():
    """The check above can fail: with plain SGD, GradScaler reads its inf check back every step."""
    assert host_reads_in_an_epoch(12, fused=False) - host_reads_in_an_epoch(4, fused=False) >= 8


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_host_read_counter_sees_a_copy_to_the_cpu():
    """A blocking ``.to("cpu")`` of the loss every step is a host read like ``.item()``."""
    def copying(criterion):
        def loss_and_copy(logits, targets):
            loss = criterion(logits, targets)
            loss.to("cpu")
            return loss
        return loss_and_copy

    assert host_reads_in_an_epoch(12, criterion=copying) - host_reads_in_an_epoch(4, criterion=copying) == 8


def poison_third_loss(epoch: Fp16Epoch) -> list:
    """Make the epoch's third loss NaN; returns the list that counts the criterion's calls."""
    criterion, calls = epoch.criterion, []

    def poisoned(logits, targets):
        calls.append(1)
        loss = criterion(logits, targets)
        return loss * float("nan") if len(calls) == 3 else loss

    epoch.criterion = poisoned
    return calls


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_the_nan_check_is_read_every_read_every_steps_not_only_at_the_end():
    """A NaN at step 3 of a 35-step epoch stops the epoch at its first read, step READ_EVERY (25),
    as the README says; a check read only at the end would run all 35 steps on spoiled weights."""
    epoch = fp16_epoch(READ_EVERY + 10)
    calls = poison_third_loss(epoch)
    with pytest.raises(DivergenceError, match=r"\bstep 3\b.*--max-lr"):
        epoch.run()
    assert len(calls) == READ_EVERY


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_fused_sgd_survives_skipped_first_steps_like_plain_sgd():
    """GradScaler's first fp16 steps overflow and are skipped; fused SGD must then train exactly as
    plain SGD does (without the zeroed momentum buffers it adds uninitialised memory to the weights)."""
    weights = []
    for fused in (True, False):
        epoch = fp16_epoch(6, fused)
        epoch.run()
        assert epoch.scaler.get_scale() < 65536.0  # some steps were skipped
        weights.append(torch.cat([p.detach().flatten() for p in epoch.model.parameters()]))
    assert torch.isfinite(weights[0]).all()
    assert torch.allclose(weights[0], weights[1], rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_a_nan_loss_is_reported_at_its_own_step_though_read_later():
    epoch = fp16_epoch(12)
    poison_third_loss(epoch)
    with pytest.raises(DivergenceError) as caught:  # the step the NaN came from, and the flag to change
        epoch.run()
    assert "epoch 1, step 3" in str(caught.value) and "--max-lr" in str(caught.value)


def test_resuming_keeps_this_runs_fused_choice():
    model = torch.nn.Linear(2, 2)
    saved = build_optimizer(model, Config(), 0.1, fused=False).state_dict()
    optimizer = build_optimizer(model, Config(), 0.1, fused=True)
    load_optimizer_state(optimizer, saved)
    assert all(group["fused"] for group in optimizer.param_groups)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resuming_an_nchw_checkpoint_gives_buffers_the_parameters_layout(optimizer):
    """A checkpoint written in NCHW (MPS, or an older CPU fp32 run) resumed where parameters are
    channels_last: fused SGD on CUDA needs params, grads and buffers with the same strides."""
    cfg = Config(optimizer=optimizer)
    torch.manual_seed(0)
    nchw = small_net()
    written = build_optimizer(nchw, cfg, 0.1)
    nchw(torch.randn(4, 3, 8, 8)).sum().backward()
    written.step()
    saved = written.state_dict()
    model = small_net().to(memory_format=torch.channels_last)
    model.load_state_dict(nchw.state_dict())
    optimizer = build_optimizer(model, cfg, 0.1, fused=True)
    load_optimizer_state(optimizer, saved)
    conv = model[0].weight
    assert conv.stride() != conv.contiguous().stride()            # the test has a channels_last parameter
    buffers = 0
    for param in model.parameters():
        for key, value in optimizer.state[param].items():
            if torch.is_tensor(value) and value.shape == param.shape:
                buffers += 1
                assert value.stride() == param.stride(), (key, tuple(param.shape))
                assert torch.equal(value, written.state[dict(zip(model.parameters(), nchw.parameters()))[param]][key])
    assert buffers == (5 if cfg.optimizer == "sgd" else 10)  # 5 parameters: momentum, or exp_avg and exp_avg_sq


# --------------------------------------------------------------------------------------------
# One copy per batch
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [True, False])
def test_batches_arrive_in_the_runs_layout_and_moving_them_copies_nothing_more(channels_last):
    runtime = Runtime(torch.device("cpu"), None, channels_last)
    data = synthetic_cifar10(n_train=40, n_test=20, seed=0)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train, test = make_loaders(data, train_transforms(*stats), make_test_transforms(*stats),
                               Config(batch_size=16, workers=0), runtime)
    for loader in (train, test):
        images, labels = next(iter(loader))
        assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
        assert images.is_contiguous(memory_format=runtime.memory_format)
        assert runtime.to_device(images).data_ptr() == images.data_ptr()  # no second copy


def test_the_channels_last_collate_keeps_every_value():
    runtime_cl, runtime_plain = (Runtime(torch.device("cpu"), None, flag) for flag in (True, False))
    data = synthetic_cifar10(n_train=40, n_test=20, seed=0)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = [next(iter(make_loaders(data, train_transforms(*stats), make_test_transforms(*stats),
                                      Config(batch_size=16, workers=0), runtime)[1]))[0]
               for runtime in (runtime_cl, runtime_plain)]
    assert torch.equal(batches[0], batches[1])
    assert np.isfinite(batches[0].numpy()).all()


@pytest.mark.parametrize("capability, dtype", [((6, 1), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                               ((10, 0), torch.bfloat16)])
def test_cuda_autocast_is_bf16_from_compute_capability_8_0_on_and_fp16_below(capability, dtype):
    assert device_module.cuda_autocast_dtype(capability) == dtype
