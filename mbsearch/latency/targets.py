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

import bisect
import hashlib
import json
import os
import re
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
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
    device_info,
    fingerprint,
    onnx_session,
    repeat_until_steady,
    summarize_samples,
    time_onnx_repeated,
)
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.nn.onnx_export import export_onnx, exporter_identity

__all__ = ["LatencyStats", "LocalTarget", "Prepared", "Target", "measure", "summarize_samples"]

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
                    **prepared.recipe,
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


# The gated rounds recipe (issue 20). This VM's speed is not one speed: for seconds at a time, something
# outside it (no steal time shows) slows every network by 30-60% at once (benchmarks/README.md, "Timing under
# contention"). Interleaving turns spreads that over all networks, but a slowdown longer than the rounds, or
# covering most of them, still lands in the medians. So a tiny fixed probe network is timed between turns,
# and a turn counts only when the probes on both sides of it ran within `tolerance` of the fastest probe
# seen: the network's latency on the device as it is when nothing else disturbs it. A quiet device passes
# every turn; a device that never quiets gets its least disturbed turns, and says so (`quiet_share`).
ROUNDS_RECIPE_SMALL_PROBE = {  # the search's and tables' recipe from 2026-12-02 until the probes per input size
    "name": "gated-rounds",
    "rounds": 7,
    "warmup": 3,
    "runs": 10,
    "probe": "conv16-dw-pw@112",
    "tolerance": 0.10,
    "max_turns": 10,  # at most this many times `rounds` turns per network before the least disturbed are taken
    "settle_reads": 25,  # a device's first gate reads the probe this often, over quiet_settle_s() seconds
}
# The probe by input size: [smallest input size, probe], the last that applies. Networks at 112x112 and up
# move feature maps of megabytes; a probe with maps of that order (32 channels at 224: 3 ms) feels what
# slows them, where the small probe (0.25 ms, maps in cache) felt part of it. In a 120-s run of
# benchmarks/contention.py beside mobilenet_v2 at 224, the small probe's slowdown correlated 0.46 with the
# network's and the network ran >10% slow in 6.8% of the turns it passed; the large one's 0.74 and 0.3%.
# Small inputs keep the small probe: its 7-ms read is already most of a 28x28 network's turn. The size is
# the timed graph's input: a late block of a 224x224 network, timed in its host at 14x14, gets the small one.
ROUNDS_RECIPE = {key: value for key, value in ROUNDS_RECIPE_SMALL_PROBE.items() if key != "probe"} | {
    "name": "gated-rounds-sized",
    "probes": [[0, ROUNDS_RECIPE_SMALL_PROBE["probe"]], [112, "conv32-dw-pw@224"]],
}
PROBE_RUNS = {"warmup": 2, "runs": 8}
# The quiet speed: the 10th percentile of the probe reads of this process (up to 100,000: hours). A device
# quiet less than a tenth of the time is taken as it is; two freak fast reads among the first 25 cannot make
# every later turn look disturbed. Not a recent window: with the last 1,000 reads (1-2 minutes), a long
# disturbed stretch became the reference, and the 224x224 ground truth's two passes agreed for 58% of
# networks within 10% (benchmarks/README.md).
GATE_MEMORY, GATE_PERCENTILE = 100_000, 10
# How long one timing call may wait on the probe alone for a disturbed device to quiet, before it takes the
# least disturbed turns: a setting of the machine, not of the recipe (it changes how long, not how, a
# latency is taken). Tests shorten it; a busy shared machine may want it longer.
QUIET_WAIT_ENV, QUIET_WAIT_S = "MBSEARCH_QUIET_WAIT_S", 60.0
# How long a new gate spreads its first probe reads over (same kind of setting: how long, not how).
QUIET_SETTLE_ENV, QUIET_SETTLE_S = "MBSEARCH_QUIET_SETTLE_S", 5.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise BadInput(f"{name}={raw!r} is not a number of seconds >= 0; set it to e.g. {default:g}, or unset it")
    return value


def quiet_wait_s() -> float:
    return _seconds(QUIET_WAIT_ENV, QUIET_WAIT_S)


def quiet_settle_s() -> float:
    return _seconds(QUIET_SETTLE_ENV, QUIET_SETTLE_S)


def probe_for(recipe: dict[str, Any], size: int) -> str:
    """The probe that gates networks of input `size` under `recipe`."""
    if "probe" in recipe:
        return recipe["probe"]
    return [probe for smallest, probe in recipe["probes"] if size >= smallest][-1]


PROBE_SPEC = re.compile(r"conv(?P<width>\d+)-dw-pw@(?P<size>\d+)")


def probe_module(spec: str) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The gate's probe named by `spec` ("conv16-dw-pw@112": a stem-like conv to 16 channels, a depthwise
    and a pointwise conv to twice that, at 112x112), with its input shape: small enough to cost a few ms a
    turn, big enough to feel a memory-bound slowdown as networks do."""
    match = PROBE_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"unknown probe {spec!r}: expected e.g. conv16-dw-pw@112")
    width, size = int(match["width"]), int(match["size"])
    module = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
        nn.Conv2d(width, 2 * width, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
    )
    return module.eval(), (1, 1, size, size)


class QuietGate:
    """One device's probe and its quiet speed (GATE_PERCENTILE of its reads), kept for the life of
    the process (one reference for every network a search or a profile times there). A new gate first
    reads the probe `settle_reads` times over quiet_settle_s() seconds, so that a disturbance already under way
    when timing starts is not taken for the device's speed."""

    def __init__(self, target: Target, probe: str, settle_reads: int) -> None:
        from mbsearch.nn.onnx_export import export_module

        with torch.random.fork_rng(devices=[]):  # the probe's weights are fixed; the caller's RNG stays as it was
            torch.manual_seed(0)
            module, shape = probe_module(probe)
        # eager timing (--runtime torch) runs the module itself; every other target runs the ONNX graph
        payload = module if getattr(target, "runtime", None) == "torch" else export_module(module, shape).data
        self.probe = Prepared(payload, shape, None, **PROBE_RUNS)
        self.reads: deque[float] = deque()  # in the order read, to forget the oldest past GATE_MEMORY
        self.ranked: list[float] = []  # the same reads sorted: the percentile without a sort per read
        self.best = float("inf")  # the device's quiet speed: a low percentile of the probe reads
        for index in range(settle_reads):
            self.read(target)
            if index < settle_reads - 1:
                time.sleep(quiet_settle_s() / (settle_reads - 1))

    def read(self, target: Target) -> float:
        """One probe turn (its fastest run, ms)."""
        value = target.time(replace(self.probe, attempts=1, sessions=1)).min_ms
        self.reads.append(value)
        bisect.insort(self.ranked, value)
        if len(self.reads) > GATE_MEMORY:
            del self.ranked[bisect.bisect_left(self.ranked, self.reads.popleft())]
        # numpy's default (linear) percentile, read off the sorted reads
        position = (len(self.ranked) - 1) * GATE_PERCENTILE / 100
        low = int(position)
        high = min(low + 1, len(self.ranked) - 1)
        self.best = self.ranked[low] + (self.ranked[high] - self.ranked[low]) * (position - low)
        return value

    def quiet(self, probe_ms: float, tolerance: float) -> bool:
        return probe_ms <= self.best * (1 + tolerance)


_GATES: dict[tuple, QuietGate] = {}


def quiet_gate(target: Target, recipe: dict[str, Any], size: int) -> QuietGate:
    """The gate of `target`'s device for networks of input `size` (one per device, runtime, thread count
    and probe in this process)."""
    probe = probe_for(recipe, size)
    key = (target.device().get("fingerprint"), target.name, getattr(target, "runtime", None), target.threads, probe)
    if key not in _GATES:
        _GATES[key] = QuietGate(target, probe, recipe["settle_reads"])
    return _GATES[key]


@dataclass(frozen=True)
class GatedTurns:
    minima: list[list[list[float]]]  # per group, per item: its fastest run in each kept turn
    quiet_share: float  # of all turns taken, the share the gate passed
    turns: int  # item timings taken, probes not counted


def gated_turns(target: Target, groups: list[list[Prepared]], recipe: dict[str, Any]) -> GatedTurns:
    """Time each group of networks (a network alone, or a part with its host) in interleaved turns, a fresh
    short session each, until every group has `rounds` turns the gate passed (see ROUNDS_RECIPE). While
    the probe says the device is disturbed, only the probe runs (a cheap wait) until it quiets, for at most
    quiet_wait_s() seconds of waiting per group; a group still short then, or after `max_turns` x `rounds`
    turns, keeps its `rounds` least disturbed turns."""
    gate = quiet_gate(target, recipe, max(item.shape[-1] for group in groups for item in group))
    rounds, tolerance = recipe["rounds"], recipe["tolerance"]
    taken: list[list[tuple[float, list[float]]]] = [[] for _ in groups]  # (the worse probe beside it, minima)
    waited, max_wait = 0.0, quiet_wait_s() * len(groups)  # each group's share of waiting

    def passed(turns: list[tuple[float, list[float]]]) -> list[list[float]]:
        return [minima for probe, minima in turns if gate.quiet(probe, tolerance)]

    before = gate.read(target)
    for attempt in range(recipe["max_turns"] * rounds):
        pending = [index for index, turns in enumerate(taken) if len(passed(turns)) < rounds]
        if not pending or (attempt >= rounds and waited >= max_wait):
            break
        for index in pending:
            started = time.perf_counter()
            while not gate.quiet(before, tolerance) and waited + time.perf_counter() - started < max_wait:
                before = gate.read(target)
            waited += time.perf_counter() - started
            minima = [
                target.time(replace(item, warmup=recipe["warmup"], runs=recipe["runs"], attempts=1, sessions=1)).min_ms
                for item in groups[index]
            ]
            after = gate.read(target)
            taken[index].append((max(before, after), minima))
            before = after
    kept = []
    for turns in taken:
        quiet = passed(turns)
        if len(quiet) < rounds:  # never quiet enough: the least disturbed turns
            quiet = [minima for _, minima in sorted(turns, key=lambda turn: turn[0])[:rounds]]
        kept.append([list(column) for column in zip(*quiet, strict=True)])
    total = sum(len(turns) for turns in taken)
    quiet_total = sum(len(passed(turns)) for turns in taken)
    items = sum(len(turns) * len(group) for turns, group in zip(taken, groups, strict=True))
    return GatedTurns(kept, quiet_total / max(total, 1), items)


def time_rounds(target: Target, prepared: list[Prepared], rounds: int, warmup: int, runs: int) -> list[list[float]]:
    """For each prepared network, its fastest run (ms) in each of `rounds` turns, the networks interleaved,
    without a gate (the recipes benchmarks/latency.py compares the gated one with)."""
    minima: list[list[float]] = [[] for _ in prepared]
    for _ in range(rounds):
        for index, item in enumerate(prepared):
            stats = target.time(replace(item, warmup=warmup, runs=runs, attempts=1, sessions=1))
            minima[index].append(stats.min_ms)
    return minima


def gated_one_by_one(target: Target, prepared: list[Prepared], recipe: dict | None = None) -> GatedTurns:
    """Each network gated by itself, one after another: its turns close together, with a wait of its own
    for a quiet device (interleaved in one call, 120 networks shared one wait and repeated worse)."""
    results = [gated_turns(target, [[item]], recipe or ROUNDS_RECIPE) for item in prepared]
    return GatedTurns(
        [result.minima[0] for result in results],
        statistics.fmean(result.quiet_share for result in results) if results else 1.0,
        sum(result.turns for result in results),
    )


def latencies_by_rounds(target: Target, prepared: list[Prepared], recipe: dict | None = None) -> list[float]:
    """The median over its quiet turns of each network's fastest run (ms), one network at a time: the
    ground truth of lookup tables and their calibration, and the search's recipe."""
    return [statistics.median(group[0]) for group in gated_one_by_one(target, prepared, recipe).minima]


# How the search and `mbsearch measure` time a network (recorded with every study's device, and refused when a
# a resumed study would mix it with another): the gated rounds recipe, the one lookup tables are calibrated
# and judged against, so a measured and a predicted latency mean the same thing. POOLED_RECIPE is the one
# before issue 20 (one session, median of its runs, re-measured while IQR/median > 10%), kept for
# benchmarks/latency.py's comparison.
SEARCH_RECIPE = ROUNDS_RECIPE
POOLED_RECIPE = {
    "name": "pooled",
    "sessions": DEFAULT_SESSIONS,
    "warmup": DEFAULT_WARMUP,
    "runs": DEFAULT_RUNS,
    "attempts": DEFAULT_ATTEMPTS,
}
# Every recipe a study may have started with: a resumed study goes on with its own, so its front never
# mixes two kinds of latency and no study is lost to an upgrade of the recipe.
KNOWN_RECIPES = (POOLED_RECIPE, ROUNDS_RECIPE_SMALL_PROBE, ROUNDS_RECIPE)


def recipe_of(target: Target) -> dict[str, Any]:
    """The recipe `target` times networks by: the search's, or the one a resumed study started with."""
    return getattr(target, "timing_recipe", SEARCH_RECIPE)


def time_network(target: Target, prepared: Prepared, recipe: dict[str, Any] | None = None) -> LatencyStats:
    """One network's latency by `recipe` (default: recipe_of(target); a lookup table predicts by its own).
    Gated: the median over the quiet turns of each turn's fastest run, with their IQR as its spread."""
    recipe = recipe or recipe_of(target)
    if getattr(target, "runtime", None) == "lut" or recipe["name"] == POOLED_RECIPE["name"]:
        return target.time(prepared)
    result = gated_turns(target, [[prepared]], recipe)
    median, iqr, mean, minimum = summarize_samples(result.minima[0][0])
    runtime = "torch" if getattr(target, "runtime", None) == "torch" else "onnxruntime"
    return LatencyStats(median, iqr, mean, minimum, recipe["runs"], result.turns, target.name, runtime, target.threads)


def timing_identity(target: Target) -> dict[str, Any]:
    """How `target`'s latencies are taken: the recipe and the graph's exporter (a table: its own recipes)."""
    recipe = getattr(getattr(target, "data", None), "network_recipe", None)
    return {"recipe": recipe or recipe_of(target), "exporter": exporter_identity("torchscript")}


def latency_anchored(target: Target, prepared: Prepared, anchor: Prepared, anchor_ms: float, recipe: dict) -> float:
    """A candidate of the anchored recipe (a candidate for the search's, measured by benchmarks/latency.py):
    the network and a fixed anchor network take turns; the latency is the anchor's reference latency (taken
    once, when a study starts) times the median over turns of the two fastest runs' ratio. A device whose
    speed drifts over minutes slows both alike, so the ratio, and the latency, stay put."""
    network, reference = time_rounds(target, [prepared, anchor], recipe["rounds"], recipe["warmup"], recipe["runs"])
    return anchor_ms * statistics.median(a / b for a, b in zip(network, reference, strict=True))


def is_remote(name: str) -> bool:
    return name.startswith(REMOTE_SCHEMES)


def check_target(target: str, runtime: str, threads: int) -> None:
    """Refuse an unknown or unavailable local target/runtime before any work is done."""
    LocalTarget(target, runtime, threads)


def measure(
    model: nn.Module,
    arch: Arch,
    target: str = "cpu",
    runtime: str = "onnxruntime",
    threads: int = 1,
    runs: int | None = None,
    timings: dict[str, float] | None = None,
) -> LatencyStats:
    """Time batch-1 inference on a local target by the search's recipe (SEARCH_RECIPE)."""
    return measure_on(LocalTarget(target, runtime, threads), model, arch, timings, runs)


def measure_on(
    target: Target,
    model: nn.Module,
    arch: Arch,
    timings: dict[str, float] | None = None,
    runs: int | None = None,
    recipe: dict[str, Any] | None = None,
) -> LatencyStats:
    """prepare + time on any target by `recipe` (with `runs` timed runs per turn or attempt, if given), with
    `timings` receiving the seconds of each ("latency" for timing)."""
    prepared = target.prepare(model, arch, timings)
    recipe = recipe or recipe_of(target)
    if runs is not None:
        recipe = recipe | {"runs": runs}
        prepared = replace(prepared, runs=runs)
    started = time.perf_counter()
    stats = time_network(target, prepared, recipe)
    if timings is not None:
        timings["latency"] = round(time.perf_counter() - started, 4)
    return stats


class LatencyCache:
    """SQLite cache of LatencyStats, shared by every study and worker that uses the same runs folder.

    The cache only saves time: when SQLite refuses (a lock held too long, a broken file), the latency
    is measured again rather than failing the trial.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection: sqlite3.Connection | None = None
        try:
            self._connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
            with self._connection:
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS latency (key TEXT PRIMARY KEY, stats TEXT NOT NULL)"
                )
        except sqlite3.Error:
            self.close()

    @staticmethod
    def key(arch: Arch, target: Target) -> str:
        """Latency belongs to a device (its fingerprint: CPU, cores, runtime, threads) and a network."""
        digest = hashlib.sha256(arch.key().encode()).hexdigest()
        recipe = recipe_of(target)["name"]  # a latency taken by another recipe is not reused
        return f"{target.device()['fingerprint']}|{type(target).__name__}|{recipe}|{digest}"

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


class PendingLatency:
    """A latency being taken, possibly on another machine while this one trains; `result()` waits for it."""

    def __init__(self, work: Callable[[], tuple[LatencyStats, bool]], background: bool) -> None:
        self._work = work
        self._outcome: tuple[LatencyStats, bool] | BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            # A daemon thread: an interrupted search must not wait for an agent's answer to exit.
            self._thread = threading.Thread(target=self._run, daemon=True, name="latency")
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._outcome = self._work()
        except BaseException as exc:  # handed to the caller of result(), in its own thread
            self._outcome = exc

    def result(self) -> tuple[LatencyStats, bool]:
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.2)  # short joins: Ctrl-C still reaches the main thread
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


def start_latency(
    model: nn.Module,
    arch: Arch,
    cache: LatencyCache | None,
    target: Target,
    timings: dict[str, float] | None = None,
    background: bool = False,
) -> PendingLatency:
    """Cached latency, or export here and time on the target, in the background when the target is another
    machine and `background` is asked (so the caller trains meanwhile)."""
    key = LatencyCache.key(arch, target)
    if cache is not None and (hit := cache.get(key)) is not None:
        return PendingLatency(lambda: (hit, True), background=False)
    prepared = target.prepare(model, arch, timings)

    def work() -> tuple[LatencyStats, bool]:
        started = time.perf_counter()
        stats = time_network(target, prepared)
        if timings is not None:
            timings["latency"] = round(time.perf_counter() - started, 4)
        if cache is not None:
            cache.put(key, stats)
        return stats, False

    return PendingLatency(work, background=background and target.overlaps_training)


def measure_cached(
    model: nn.Module,
    arch: Arch,
    cache: LatencyCache | None,
    target: Target,
    timings: dict[str, float] | None = None,
) -> tuple[LatencyStats, bool]:
    """Latency from the cache when this device already timed this architecture; else measure and store."""
    return start_latency(model, arch, cache, target, timings).result()
