"""Timing an ONNX model with ONNX Runtime, and the device it runs on. Needs only numpy and onnxruntime.

This is the part of latency measurement that runs on a target device: the local search and the remote
agent (agent.py) both time through `time_onnx_repeated`, so a latency means the same thing wherever it was
taken. Nothing here imports torch, so a Raspberry Pi or a phone can run it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_RELATIVE_IQR = 0.10
DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50  # per session
DEFAULT_ATTEMPTS = 3
DEFAULT_SESSIONS = 1


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    attempts: int
    target: str
    runtime: str
    threads: int
    # A predicted latency (lookup table) carries its uncertainty and where it came from; a measured one
    # has sd 0 and source "measured" (its spread is the IQR above).
    sd_ms: float = 0.0
    source: str = "measured"

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")


def summarize_samples(samples_ms: list[float]) -> tuple[float, float, float, float]:
    """Median, IQR, mean and minimum of timing samples in ms."""
    if not samples_ms:
        raise ValueError("no timing samples")
    q1, median, q3 = np.percentile(samples_ms, [25, 50, 75])
    return float(median), float(q3 - q1), statistics.fmean(samples_ms), min(samples_ms)


def repeat_until_steady(
    sample: Callable[[], list[float]], attempts: int, describe: Callable[..., LatencyStats]
) -> LatencyStats:
    """Time up to `attempts` times while IQR/median > 10%; keep the steadiest attempt.

    `describe(median, iqr, mean, minimum, attempt)` turns one attempt's statistics into LatencyStats."""
    best: LatencyStats | None = None
    for attempt in range(1, attempts + 1):
        stats = describe(*summarize_samples(sample()), attempt)
        if best is None or stats.relative_iqr < best.relative_iqr:
            best = stats
        if stats.relative_iqr <= MAX_RELATIVE_IQR:
            break
    assert best is not None
    return best


def onnx_session(model: bytes, threads: int, providers: list[Any]) -> Any:
    """An ORT session that runs one operator at a time on `threads` threads.

    Only the ONNX format is accepted (never ORT's own format), and no custom-operator library is ever
    registered, so a model with operators outside ONNX and ORT's own kernels fails to load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return ort.InferenceSession(model, options, providers=providers)


def time_session(session: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> list[float]:
    """Run the session on zeros of `input_shape`; one sample (ms) per timed run."""
    feed = {session.get_inputs()[0].name: np.zeros(input_shape, dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


@dataclass(frozen=True)
class TimingPlan:
    """How many runs one timing takes: `sessions` fresh sessions, each `warmup` runs then `runs` timed ones,
    re-measured up to `attempts` times while noisy."""

    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS
    attempts: int = DEFAULT_ATTEMPTS
    sessions: int = DEFAULT_SESSIONS


def time_onnx_repeated(
    open_session: Callable[[], Any],
    input_shape: tuple[int, ...],
    target: str,
    threads: int,
    plan: TimingPlan = TimingPlan(),
) -> LatencyStats:
    """The one timing recipe of mbsearch: `sessions` fresh sessions, each warmed up then timed `runs` times,
    the samples pooled (median, IQR), re-measured while noisy.

    The default is one session: pooling three measured no gain in benchmarks/latency.py (median |difference|
    between two passes over 30 networks at 28x28: 6.6% with one session, 8.0% with three, at three times
    the cost), so more sessions are an option (`sessions=`, the agent's `?sessions=`), not the default.
    """
    warmup, runs, attempts, sessions = plan.warmup, plan.runs, plan.attempts, plan.sessions
    runs_in_all = runs * sessions

    def sample() -> list[float]:
        pooled: list[float] = []
        for _ in range(sessions):
            pooled += time_session(open_session(), input_shape, warmup, runs)
        return pooled

    return repeat_until_steady(
        sample,
        attempts,
        lambda median, iqr, mean, minimum, attempt: LatencyStats(
            median, iqr, mean, minimum, runs_in_all, attempt, target, "onnxruntime", threads
        ),
    )


def cpu_model() -> str:
    """The CPU's marketing name where Linux says it, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            # x86 says "model name"; many ARM boards only say "Hardware" or "Model".
            if line.split(":", 1)[0].strip() in ("model name", "Hardware", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on: a `taskset`-pinned process sees its own set, not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_info(threads: int, providers: list[str]) -> dict[str, Any]:
    """What a latency depends on beyond the model: the device fingerprint's fields."""
    import onnxruntime as ort

    info = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cores": usable_cores(),
        "runtime": f"onnxruntime {ort.__version__}",
        "providers": list(providers),
        "threads": threads,
    }
    return info | {"fingerprint": fingerprint(info)}


def fingerprint(info: dict[str, Any]) -> str:
    """A short stable digest of the device fields: the key that caches and lookup tables use."""
    fields = ("cpu", "machine", "system", "cores", "runtime", "providers", "threads")
    text = "|".join(str(info.get(key)) for key in fields)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
