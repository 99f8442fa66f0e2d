"""Latency of a model on a target, at batch 1: warm-up, repeated timing, robust statistics.

Timing runs under the per-host lock (never beside training), on a fixed thread count, and is repeated
when the spread (IQR / median) is too high. Results are cached per (host, architecture, target, runtime,
threads) so that a resampled architecture is not timed twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sqlite3
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mbsearch import hostlock
from mbsearch.arch import Arch
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.onnx_export import export_onnx

TARGETS = ("cpu", "cuda")
RUNTIMES = ("onnxruntime", "torch")
MAX_RELATIVE_IQR = 0.10


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

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")


def summarize_samples(samples_ms: list[float]) -> tuple[float, float, float, float]:
    """Median, IQR, mean and minimum of timing samples in ms."""
    if not samples_ms:
        raise ValueError("no timing samples")
    q1, median, q3 = np.percentile(samples_ms, [25, 50, 75])
    return float(median), float(q3 - q1), statistics.fmean(samples_ms), min(samples_ms)


def check_target(target: str, runtime: str, threads: int) -> None:
    """Refuse an unknown or unavailable target/runtime before any work is done."""
    if target not in TARGETS:
        raise BadInput(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if runtime not in RUNTIMES:
        raise BadInput(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if threads < 1:
        raise BadInput(f"--threads must be at least 1, got {threads}")
    if target == "cuda":
        if not torch.cuda.is_available():
            raise BadInput("--target cuda: no CUDA GPU is visible to torch here; use --target cpu")
        if runtime == "onnxruntime":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BadInput("--target cuda --runtime onnxruntime needs onnxruntime-gpu; or use --runtime torch")


def _time_onnxruntime(model: bytes, arch: Arch, target: str, threads: int, warmup: int, runs: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if target == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, options, providers=providers)
    feed = {
        session.get_inputs()[0].name: np.zeros(
            (1, arch.input.channels, arch.input.size, arch.input.size), dtype=np.float32
        )
    }
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _time_torch(model: nn.Module, arch: Arch, target: str, threads: int, warmup: int, runs: int) -> list[float]:
    device = torch.device(target)
    model = model.eval().to(device)
    example = torch.zeros(1, arch.input.channels, arch.input.size, arch.input.size, device=device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example)
            if target == "cuda":
                torch.cuda.synchronize()
                for _ in range(runs):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(example)
                    end.record()
                    end.synchronize()
                    samples.append(start.elapsed_time(end))
            else:
                for _ in range(runs):
                    begin = time.perf_counter_ns()
                    model(example)
                    samples.append((time.perf_counter_ns() - begin) / 1e6)
    finally:
        torch.set_num_threads(previous_threads)
        model.to("cpu")
    return samples


def measure(
    model: nn.Module,
    arch: Arch,
    target: str = "cpu",
    runtime: str = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    attempts: int = 3,
    timings: dict[str, float] | None = None,
) -> LatencyStats:
    """Time batch-1 inference; re-measure up to `attempts` times while IQR/median > 10%.

    With the onnxruntime runtime the model is exported first; `timings` receives the seconds spent
    exporting ("export_torchscript" or "export_dynamo", naming the exporter that ran) and timing ("latency").
    """
    check_target(target, runtime, threads)
    started = time.perf_counter()
    if runtime == "onnxruntime":
        exported_model = export_onnx(model, arch)
        timer, runnable = _time_onnxruntime, exported_model.data
        export_key = f"export_{exported_model.exporter}"
    else:
        timer, runnable = _time_torch, model
        export_key = None  # eager timing runs the module itself
    exported = time.perf_counter()
    best: LatencyStats | None = None
    try:
        with hostlock.timing():
            for attempt in range(1, attempts + 1):
                median, iqr, mean, minimum = summarize_samples(timer(runnable, arch, target, threads, warmup, runs))
                stats = LatencyStats(median, iqr, mean, minimum, runs, attempt, target, runtime, threads)
                if best is None or stats.relative_iqr < best.relative_iqr:
                    best = stats
                if stats.relative_iqr <= MAX_RELATIVE_IQR:
                    break
    except (RuntimeError, OSError) as exc:
        raise RuntimeFailure(f"latency measurement on {target}/{runtime} failed: {exc}".splitlines()[0]) from None
    assert best is not None
    if timings is not None:
        if export_key:
            timings[export_key] = round(exported - started, 4)
        timings["latency"] = round(time.perf_counter() - exported, 4)
    return best


@functools.cache
def host_fingerprint(runtime: str) -> str:
    """Latency belongs to a machine and a runtime version: both are part of the cache key."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if runtime == "onnxruntime":
        import onnxruntime as ort

        version = f"ort{ort.__version__}"
    else:
        version = f"torch{torch.__version__}"
    return f"{platform.node()}|{cpu}|{version}"


class LatencyCache:
    """SQLite cache of LatencyStats, shared by every study and worker that uses the same runs folder.

    The cache only saves time: when SQLite refuses (a lock held too long, a broken file), the latency
    is measured again rather than failing the trial.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection: sqlite3.Connection | None = None
        try:
            self._connection = sqlite3.connect(path, timeout=60)
            with self._connection:
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS latency (key TEXT PRIMARY KEY, stats TEXT NOT NULL)"
                )
        except sqlite3.Error:
            self.close()

    @staticmethod
    def key(arch: Arch, target: str, runtime: str, threads: int) -> str:
        digest = hashlib.sha256(arch.key().encode()).hexdigest()
        return f"{host_fingerprint(runtime)}|{digest}|{target}|{runtime}|{threads}"

    def get(self, key: str) -> LatencyStats | None:
        if self._connection is None:
            return None
        try:
            row = self._connection.execute("SELECT stats FROM latency WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return LatencyStats(**json.loads(row[0])) if row else None

    def put(self, key: str, stats: LatencyStats) -> None:
        if self._connection is None:
            return
        try:
            with self._connection:
                self._connection.execute(
                    "INSERT OR REPLACE INTO latency (key, stats) VALUES (?, ?)", (key, json.dumps(asdict(stats)))
                )
        except sqlite3.Error:
            pass  # the next run measures this architecture again

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def measure_cached(
    model: nn.Module,
    arch: Arch,
    cache: LatencyCache | None,
    target: str,
    runtime: str,
    threads: int,
    timings: dict[str, float] | None = None,
) -> tuple[LatencyStats, bool]:
    """Latency from the cache when this host already timed this architecture; else measure and store."""
    key = LatencyCache.key(arch, target, runtime, threads)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit, True
    stats = measure(model, arch, target, runtime, threads, timings=timings)
    if cache is not None:
        cache.put(key, stats)
    return stats, False
