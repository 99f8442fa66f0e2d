"""--precision int8: a trained candidate as the int8 graph a user deploys, its accuracy as ONNX Runtime runs
it and its latency on the target. The search's objectives are then these two; the float accuracy and
latency are kept beside them (records.FLOAT_VAL_ACCURACY, records.FLOAT_LATENCY_MS)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from mbsearch.architecture.arch import Arch
from mbsearch.device.timing import LatencyStats
from mbsearch.latency.cache import LatencyCache
from mbsearch.latency.recipes import time_network
from mbsearch.latency.targets import Prepared, Target, input_shape
from mbsearch.nn.quantize import int8_recipe
from mbsearch.train.data import Dataset
from mbsearch.train.int8 import Int8Scorer
from mbsearch.train.loop import Normalizer


@dataclass(frozen=True)
class Int8Result:
    accuracy: float  # on the validation split, the int8 graph run by ONNX Runtime
    latency: LatencyStats  # the int8 graph on the study's target
    cached: bool
    graph: bytes  # the very graph that was timed and scored: `export --onnx` writes it


def int8_cache_key(arch: Arch, target: Target) -> str:
    """The float key of the network and device, with the int8 recipe: an int8 latency is never a float one."""
    recipe = hashlib.sha256(repr(sorted(int8_recipe().items())).encode()).hexdigest()[:12]
    return f"{LatencyCache.key(arch, target)}|int8-{recipe}"


class Int8Step:
    """Quantize, score and time trained candidates; holds the normalised calibration and validation images
    (made once per process: every trial reuses them)."""

    def __init__(
        self, data: Dataset, normalizer: Normalizer, target: Target, cache: LatencyCache | None, val_size: int | None
    ) -> None:
        self.target, self.cache = target, cache
        # the validation images the float accuracy was scored on (a supernet scores its first ones), so that
        # the float-vs-int8 drop compares the same images
        val = data.val if val_size is None else data.val.head(val_size)
        self.scorer = Int8Scorer(data.train.images, normalizer, val)

    def __call__(self, model: torch.nn.Module, arch: Arch, timings: dict[str, float]) -> Int8Result:
        started = time.perf_counter()
        graph = self.scorer.quantize(model, arch)
        timings["quantize"] = round(time.perf_counter() - started, 4)
        accuracy = self.scorer.score(graph)
        timings["int8_score"] = round(time.perf_counter() - started - timings["quantize"], 4)
        key = int8_cache_key(arch, self.target)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            return Int8Result(accuracy, hit, True, graph)
        timed = time.perf_counter()
        stats = time_network(self.target, Prepared(graph, input_shape(arch), arch))
        timings["int8_latency"] = round(time.perf_counter() - timed, 4)
        if self.cache is not None:
            self.cache.put(key, stats)
        return Int8Result(accuracy, stats, False, graph)
