"""How a latency is taken on any target: the timing recipes (rounds of fresh sessions, interleaved), the
quiet gate (a turn counts only when a small probe timed beside it ran near its fastest), and the
recipe a target's latencies are keyed by.
"""

from __future__ import annotations

import bisect
import os
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mbsearch.device.timing import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RUNS,
    DEFAULT_SESSIONS,
    DEFAULT_WARMUP,
    LatencyStats,
    summarize_samples,
)
from mbsearch.errors import BadInput
from mbsearch.latency.targets import Prepared, Target
from mbsearch.nn.onnx_export import exporter_identity

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
