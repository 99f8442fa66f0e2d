"""Latency of a model on a target, at batch 1: warm-up, repeated timing, robust statistics.

A target is where timing happens: this machine's CPU or GPU (`LocalTarget`), a device running
`mbsearch agent` (`remote.RemoteTarget`), or a per-block lookup table (`lut.LookupTable`, predicted, no
device). All share one interface: `prepare` (export, on this machine) then `time` (on the device), so the
search can export in its own thread and let a remote device time while it trains.

Local timing runs under the per-host lock (never beside training), on a fixed thread count, and is repeated
when the spread (IQR / median) is too high (timing.py). Results are cached per (device fingerprint,
architecture), so a resampled architecture is not timed twice.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.device import hostlock
from mbsearch.device.timing import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RUNS,
    DEFAULT_SESSIONS,
    DEFAULT_WARMUP,
    LatencyStats,
    TimingPlan,
    device_info,
    fingerprint,
    onnx_session,
    repeat_until_steady,
    summarize_samples,
    time_onnx_repeated,
)
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.nn.onnx_export import export_onnx

__all__ = ["LatencyStats", "LocalTarget", "Prepared", "Target", "summarize_samples"]


LOCAL_TARGETS = ("cpu", "cuda")


RUNTIMES = ("onnxruntime", "torch")


REMOTE_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class Prepared:
    """What a target times: ONNX bytes (or the eager module for --runtime torch) and the input shape."""

    payload: Any
    shape: tuple[int, ...]
    arch: Arch | None  # None for a part of a network (a block timed alone by `mbsearch profile`)
    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS
    attempts: int = DEFAULT_ATTEMPTS
    sessions: int = DEFAULT_SESSIONS  # ONNX Runtime sessions pooled per attempt (timing.time_onnx_repeated)

    @property
    def recipe(self) -> dict[str, int]:
        return {"warmup": self.warmup, "runs": self.runs, "attempts": self.attempts, "sessions": self.sessions}


class Target(Protocol):
    name: str  # as the user wrote it: cpu, cuda, http://host:port, or the lookup table's path
    runtime: str
    threads: int
    overlaps_training: bool  # True where timing happens on another machine, so the search trains meanwhile

    def device(self) -> dict[str, Any]: ...
    def prepare(self, model: nn.Module, arch: Arch, timings: dict[str, float] | None = None) -> Prepared: ...
    def time(self, prepared: Prepared) -> LatencyStats: ...


def check_target_precision(target: Target, precision: str) -> None:
    """Refuse, with one line, a target kept for the other precision: a lookup table of the other precision,
    or an agent started with the other --precision. A local device times either."""
    check = getattr(target, "check_precision", None)
    if check is not None:
        check(precision)


class LocalTarget:
    """This machine's CPU or GPU, through ONNX Runtime or torch eager."""

    overlaps_training = False

    def __init__(self, name: str = "cpu", runtime: str = "onnxruntime", threads: int = 1, gpu: int = 0) -> None:
        if name not in LOCAL_TARGETS:
            raise BadInput(
                f"unknown target {name!r}: use one of {', '.join(LOCAL_TARGETS)} or http://HOST:PORT of an agent"
            )
        if runtime not in RUNTIMES:
            raise BadInput(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        if threads < 1:
            raise BadInput(f"--threads must be at least 1, got {threads}")
        if name == "cuda":
            if not torch.cuda.is_available():
                raise BadInput("--target cuda: no CUDA GPU is visible to torch here; use --target cpu")
            if runtime == "onnxruntime":
                import onnxruntime as ort

                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise BadInput("--target cuda --runtime onnxruntime needs onnxruntime-gpu; or use --runtime torch")
            if not 0 <= gpu < torch.cuda.device_count():
                raise BadInput(f"--target cuda: no GPU {gpu} here ({torch.cuda.device_count()} visible)")
        self.name, self.runtime, self.threads = name, runtime, threads
        self.gpu = gpu  # the GPU `cuda` times on: the worker's own training GPU (search.loop)
        self._device: dict[str, Any] | None = None

    def device(self) -> dict[str, Any]:
        if self._device is None:
            self._device = self._describe()
        return self._device

    def _describe(self) -> dict[str, Any]:
        provider = "CUDAExecutionProvider" if self.name == "cuda" else "CPUExecutionProvider"
        info = device_info(self.threads, [provider])
        if self.runtime == "torch":
            info["runtime"] = f"torch {torch.__version__}"
            info["providers"] = [self.name]
            if self.name == "cuda":
                info["cpu"] = torch.cuda.get_device_name(self.gpu)
            info["fingerprint"] = fingerprint(info)
        return info

    def prepare(self, model: nn.Module, arch: Arch, timings: dict[str, float] | None = None) -> Prepared:
        if self.runtime == "torch":
            return Prepared(model, input_shape(arch), arch)  # eager timing runs the module itself
        return exported(model, arch, timings)

    def time(self, prepared: Prepared) -> LatencyStats:
        # The host lock keeps CPU training off the cores CPU timing uses. A GPU's timing does not share them,
        # so it never waits behind CPU work (nor holds CPU training up); it holds its own GPU's lock, so that
        # two workers never time on one GPU at once.
        lock = hostlock.timing() if self.name == "cpu" else hostlock.gpu_timing(self.gpu)
        try:
            with lock:
                if self.runtime == "torch":
                    return self._time_torch(prepared)
                providers: list[Any] = (
                    [("CUDAExecutionProvider", {"device_id": self.gpu})]
                    if self.name == "cuda"
                    else ["CPUExecutionProvider"]
                )
                return time_onnx_repeated(
                    lambda: onnx_session(prepared.payload, self.threads, providers),
                    prepared.shape,
                    self.name,
                    self.threads,
                    TimingPlan(**prepared.recipe),
                )
        except (RuntimeError, OSError) as exc:
            raise RuntimeFailure(
                f"latency measurement on {self.name}/{self.runtime} failed: {exc}".splitlines()[0]
            ) from None

    def _time_torch(self, prepared: Prepared) -> LatencyStats:
        device = torch.device(f"cuda:{self.gpu}") if self.name == "cuda" else torch.device(self.name)
        model = prepared.payload.eval().to(device)
        example = torch.zeros(prepared.shape, device=device)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        runs = prepared.runs

        def sample() -> list[float]:
            samples = []
            with torch.inference_mode():
                for _ in range(prepared.warmup):
                    model(example)
                if self.name == "cuda":
                    torch.cuda.synchronize(device)
                for _ in range(runs):
                    if self.name == "cuda":
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        model(example)
                        end.record()
                        end.synchronize()
                        samples.append(start.elapsed_time(end))
                    else:
                        begin = time.perf_counter_ns()
                        model(example)
                        samples.append((time.perf_counter_ns() - begin) / 1e6)
            return samples

        # Events record on the current GPU's stream: make ours current while timing.
        on_gpu = torch.cuda.device(self.gpu) if self.name == "cuda" else nullcontext()
        try:
            with on_gpu:
                return repeat_until_steady(
                    sample,
                    prepared.attempts,
                    lambda median, iqr, mean, minimum, attempt: LatencyStats(
                        median, iqr, mean, minimum, runs, attempt, self.name, "torch", self.threads
                    ),
                )
        finally:
            torch.set_num_threads(previous_threads)
            model.to("cpu")


def input_shape(arch: Arch) -> tuple[int, int, int, int]:
    """The batch-1 input a network is timed on."""
    return (1, arch.input.channels, arch.input.size, arch.input.size)


def exported(model: nn.Module, arch: Arch, timings: dict | None = None) -> Prepared:
    """The network as ONNX, ready for any ONNX Runtime target; `timings` gets the export's seconds."""
    started = time.perf_counter()
    onnx = export_onnx(model, arch)
    if timings is not None:
        timings[f"export_{onnx.exporter}"] = round(time.perf_counter() - started, 4)
    return Prepared(onnx.data, input_shape(arch), arch)


def is_remote(name: str) -> bool:
    return name.startswith(REMOTE_SCHEMES)


def check_target(target: str, runtime: str, threads: int) -> None:
    """Refuse an unknown or unavailable local target/runtime before any work is done."""
    LocalTarget(target, runtime, threads)
