"""Which device, precision and memory layout a run uses (one decision, shared by every step)."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

from modular.config import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None      # autocast dtype, None for plain fp32
    channels_last: bool

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 has fp32's range and does not."""
        return self.amp_dtype == torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_grad_scaler)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def pin_memory(self) -> bool:
        """Pinned host memory makes the copy to a CUDA GPU asynchronous."""
        return self.device.type == "cuda"

    @property
    def fused_optimizer(self) -> bool:
        """A fused optimizer takes GradScaler's inf check as a tensor (``_step_supports_amp_scaling``),
        so an fp16 step never waits for the GPU; on CUDA it is also the fastest update."""
        return self.device.type == "cuda" or self.needs_grad_scaler

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device, non-blocking from pinned memory. The loaders already collate in
        the run's layout (``memory_format``), so this is the batch's only copy; the format call below
        is then a no-op, kept for batches built elsewhere."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        autocast = "fp32" if self.amp_dtype is None else f"{self.precision} autocast"
        return f"{self.device.type}, {autocast}, {layout}"


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: A100, A10, L4, H100, RTX 30xx and later


def cuda_autocast_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 from compute capability 8.0 on, fp16 (with a GradScaler) below it.

    Not ``torch.cuda.is_bf16_supported()``: by default it also counts emulated bf16, so it says
    True on a T4 (7.5) or V100 (7.0), where cuDNN has no bf16 convolutions; their tensor cores run fp16.
    """
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


def select_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """``device`` auto|cpu|cuda|mps; ``precision`` auto (fastest safe autocast) or fp32."""
    if device == "auto":
        device = ("cuda" if torch.cuda.is_available()
                  else "mps" if torch.backends.mps.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is visible; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps asked for, but MPS is not available; use --device auto or cpu")
    fast = precision == "auto"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        dtype = cuda_autocast_dtype(torch.cuda.get_device_capability()) if fast else None
        return Runtime(torch.device("cuda"), dtype, channels_last=True)
    if device == "mps":
        return Runtime(torch.device("mps"), None, channels_last=False)
    dtype = torch.bfloat16 if fast and cpu_supports_bf16() else None
    # channels_last in both precisions: oneDNN's bf16 kernels want it, and fp32 ran faster in it than in NCHW
    # where `bench` compared the two (its "fp32_channels_last_speedup"; the figure is in docs/running.md)
    return Runtime(torch.device("cpu"), dtype, channels_last=True)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def runtime_part(runtime: Runtime, from_epoch: int = 0) -> dict:
    """What one part of a run (the start, or a resume after ``from_epoch`` epochs) ran on."""
    return {"from_epoch": from_epoch, "device": runtime.device.type, "precision": runtime.precision,
            "channels_last": runtime.channels_last, "hardware": hardware_name(runtime.device)}
