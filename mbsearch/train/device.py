"""Where candidates train: `--device auto|cpu|cuda|cuda:N|mps`, and what the field uses on each.

On CUDA: automatic mixed precision (bf16 where the GPU supports it, else fp16 with a gradient scaler),
channels-last, the dataset copied to GPU memory once as uint8 (normalised there, batch by batch), cuDNN's
autotuner, and no host synchronisation per step (divergence is checked every few steps). On the CPU: fp32,
channels-last, and every step holds the host timing lock so that CPU timing is never disturbed; GPU training
never holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mbsearch.device import hostlock
from mbsearch.errors import BadInput

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
CPU_CHECK_EVERY = 1  # a loss read costs nothing on the CPU
GPU_CHECK_EVERY = 25  # on a GPU every read waits for the queue to drain; 25 steps of a NaN cost little


@dataclass(frozen=True)
class TrainingDevice:
    """A resolved training device and its recipe."""

    device: torch.device
    check_every_steps: int | None = None  # None: the device type's rule (CPU_CHECK_EVERY / GPU_CHECK_EVERY)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def index(self) -> int:
        """This device's GPU number (its own, not the process's current GPU)."""
        return self.device.index if self.device.index is not None else 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 where this GPU has it in hardware (compute capability 8.0 on: A100, H100, RTX 30xx), else fp16
        with a gradient scaler; None (fp32) off CUDA. `torch.cuda.is_bf16_supported()` is not asked: it
        counts emulated bf16 (T4, V100, RTX 20xx run it, slowly) and asks about the current GPU, not ours."""
        if not self.is_cuda:
            return None
        if torch.version.hip:
            return torch.bfloat16
        major, _ = torch.cuda.get_device_capability(self.index)
        return torch.bfloat16 if major >= 8 else torch.float16

    @property
    def check_every(self) -> int:
        if self.check_every_steps is not None:
            return self.check_every_steps
        return CPU_CHECK_EVERY if self.device.type == "cpu" else GPU_CHECK_EVERY

    @property
    def instrument(self) -> str:
        """What decides the numbers a training gives, for a study's identity: the device kind and its
        precision (cpu/fp32, cuda/bf16, cuda/fp16, mps/fp32). Which GPU of a kind does not change it, so the
        workers of a multi-GPU machine share one study."""
        dtype = self.amp_dtype
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype else "fp32"
        return f"{self.device.type}/{precision}"

    def step_lock(self) -> Any:
        """What each training step holds: the host's shared training lock on the CPU, nothing on a GPU."""
        return hostlock.training if self.device.type == "cpu" else nullcontext

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = self.amp_dtype
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @contextmanager
    def session(self) -> Iterator[None]:
        """For a CUDA training: this GPU made the current one (so that nothing, a pinned copy or a library's
        implicit context, lands on GPU 0 of a worker meant for another), and cuDNN's autotuner on; both
        restored after (the library leaves no state changed)."""
        if not self.is_cuda:
            yield
            return
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch.cuda.device(self.index):
                yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def describe(self) -> str:
        if self.is_cuda:
            precision = "bf16" if self.amp_dtype == torch.bfloat16 else "fp16"
            return f"{self.device} ({torch.cuda.get_device_name(self.index)}, {precision} mixed precision)"
        return str(self.device)


CPU = TrainingDevice(torch.device("cpu"))


def resolve_device(name: str) -> TrainingDevice:
    """The device a flag names; refuses one this machine does not have with one line, before any work."""
    name = name.strip().lower()
    if name == "auto":
        return TrainingDevice(torch.device("cuda:0")) if torch.cuda.is_available() else CPU
    if name == "cpu":
        return CPU
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise BadInput("--device mps: no Apple GPU here (MPS is for Macs with Apple silicon); use --device cpu")
        return TrainingDevice(torch.device("mps"))
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.removeprefix("cuda").removeprefix(":") or "0"
        if not index_text.isdigit():
            raise BadInput(f"--device {name}: give cuda or cuda:N with N a GPU number; choose {DEVICE_CHOICES}")
        if not torch.cuda.is_available():
            raise BadInput(
                f"--device {name}: no CUDA GPU is visible (torch {torch.__version__}; a CPU build, or no driver); "
                "install a CUDA build of torch, or use --device cpu"
            )
        count = torch.cuda.device_count()
        if int(index_text) >= count:
            raise BadInput(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return TrainingDevice(torch.device(f"cuda:{int(index_text)}"))
    raise BadInput(f"--device {name!r}: choose {DEVICE_CHOICES}")


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_device(name: str, worker_id: int) -> str:
    """The device of local worker `worker_id` (from 1): on a machine with several GPUs, `auto` or `cuda` puts
    one worker on each GPU in turn (worker 1 on cuda:0, ...); any other choice is kept for every worker."""
    count = gpu_count()
    if name.strip().lower() in ("auto", "cuda") and count > 1:
        return f"cuda:{(worker_id - 1) % count}"
    return name


def release_gpu_memory() -> None:
    """Give a failed candidate's GPU memory back (its tensors are garbage once the trial is over)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
