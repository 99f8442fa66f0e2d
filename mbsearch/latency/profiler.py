"""The cheap half of the candidate pipeline, in the manner of NNI's Profiler: build the network from its
seed, count its parameters and MACs, take its latency on a target (cached per device). The expensive half is
`train.evaluate.evaluate` (training); constraints filter between the two (search/objective.py).

Every consumer goes through here: the search's objective, the baselines, re-timing, the lookup table's
calibration and `mbsearch measure`; so a network is built, costed and timed one way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.device import hostlock
from mbsearch.device.timing import LatencyStats
from mbsearch.latency.cache import LatencyCache, PendingLatency, measure_on, start_latency
from mbsearch.latency.recipes import recipe_of, time_network
from mbsearch.latency.targets import Prepared, Target, input_shape
from mbsearch.nn.cost import count_macs, count_params
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import export_onnx
from mbsearch.nn.quantize import noise_calibration, quantize_int8


@dataclass(frozen=True)
class CandidateProfile:
    model: nn.Module  # built from the seed and untrained: the evaluation trains this very model
    params: int
    macs: int  # of the network as timed (its deployment resolution)
    latency: PendingLatency  # `.result()` -> (stats, from the cache)


def build_seeded(arch: Arch, seed: int) -> nn.Module:
    """The network with the initial weights of `seed`: the same architecture and seed, the same weights."""
    torch.manual_seed(seed)
    return build_model(arch)


def profile_candidate(
    arch: Arch,
    target: Target,
    seed: int,
    cache: LatencyCache | None = None,
    timings: dict[str, float] | None = None,
    background: bool = False,
) -> CandidateProfile:
    """Build, cost and start timing `arch` (the deployed network). With `background`, a target on another
    machine times while the caller trains; `timings` receives the seconds of each step."""
    started = time.perf_counter()
    model = build_seeded(arch, seed)
    built = time.perf_counter()
    params = count_params(model)
    macs, _ = count_macs(model, arch)
    if timings is not None:
        timings["build"] = round(built - started, 4)
        timings["cost"] = round(time.perf_counter() - built, 4)
    return CandidateProfile(model, params, macs, start_latency(model, arch, cache, target, timings, background))


def latency_of(arch: Arch, target: Target, runs: int | None = None, precision: str = "fp32") -> LatencyStats:
    """The latency of `arch` on `target`, measured now (no cache): weights do not change timing, so seed 0.

    With `precision` int8 the timed graph is ONNX Runtime's static int8 quantization of it (the search's
    recipe), calibrated on seeded noise images: calibration sets the scales, not the kernels that run, so
    the latency is the deployed int8 network's (its accuracy is not: `train --precision int8` gives that)."""
    model = build_seeded(arch, 0)
    if precision != "int8":
        return measure_on(target, model, arch, runs=runs)
    shape = input_shape(arch)
    with hostlock.training():  # ONNX Runtime calibrates on this CPU: no timing on the host meanwhile
        graph = quantize_int8(export_onnx(model, arch).data, noise_calibration(shape))
    prepared = Prepared(graph, shape, arch)
    recipe = recipe_of(target)
    if runs is not None:
        recipe, prepared = recipe | {"runs": runs}, replace(prepared, runs=runs)
    return time_network(target, prepared, recipe)
