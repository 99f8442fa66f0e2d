"""Per-block latency prediction in nn-Meter's manner: `mbsearch profile` builds a table, `run --latency
predicted --lut` predicts with it.

A network is cut into parts: the stem, each block (its config, input channels and resolution) and the head.
`profile` times each part *in context*: inside a small host network (a depthwise 1x1 conv before it, a global
average pool after it), against the same host without the part, the two interleaved in fresh sessions. The
difference is the part's cost in the layout the whole network runs in: ONNX Runtime's NCHWc reorders are
paid by the host in both, a residual `Add` is fused as in the whole network, and the part's output feature
map stays inside the runtime (the host returns a pooled vector). A network is predicted as the cost of its
input alone (the image through a global pool) plus its parts.

Every part of a space is timed once; `--adaptive` more parts, at widths between and beyond the space's,
are timed where a first fit errs most (nn-Meter's adaptive sampling). Per part kind (stem, ir, dsa, dsr,
head) a regressor from scikit-learn is fitted on configuration features (input size, in/mid/out channels,
kernel, stride, SE, activation, MACs, params, activation sizes): a non-negative linear model of the cost
(MACs and activation bytes) times a random forest's correction, so a width never profiled (NetAdapt's
`mid` widths) is interpolated, with an uncertainty from the forest's spread and its out-of-bag error. A
network-level linear correction is fitted on whole-network timings and judged on networks it was not
fitted on (k-fold). Every prediction says whether it is a table hit, interpolated, or outside the range
the regressor was trained on.

The file is versioned JSON keyed by the device fingerprint, the timing recipe and the exporter; a table
from another recipe or exporter is refused with one line. With `--precision int8` every timed graph (part
in its host, host alone, calibration network) is first quantized by the search's int8 recipe, calibrated
on seeded noise (scales, not kernels); the table records its precision and quantization settings, and a
search of the other precision, or under other settings, is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
import torch
from pydantic import ConfigDict, Field
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.plan import plan_layers
from mbsearch.architecture.rules import has_shortcut, output_size, se_channels
from mbsearch.architecture.sample import arch_from_decisions, random_arch
from mbsearch.architecture.space import CHOICE_KEYS, SearchSpace
from mbsearch.device import hostlock
from mbsearch.device.timing import LatencyStats
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.files import describe_validation_error, parse_json, read_text, write_atomic
from mbsearch.latency.profiler import build_seeded
from mbsearch.latency.targets import (
    ROUNDS_RECIPE,
    GatedTurns,
    Prepared,
    Target,
    exported,
    gated_one_by_one,
    gated_turns,
    input_shape,
    latencies_by_rounds,
)
from mbsearch.nn.blocks import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_activation
from mbsearch.nn.onnx_export import export_module, exporter_identity
from mbsearch.nn.quantize import int8_recipe, noise_calibration, quantize_int8

FORMAT = "mbsearch.latency.lut/2"
# How a part is timed: `rounds` turns of the part in its host and the host alone, back to back, each a fresh
# session with `warmup` runs then `runs` timed ones, gated like whole networks (targets.ROUNDS_RECIPE: a turn
# counts only when the probe beside it ran near its fastest) and interleaved with `chunk` other parts; a turn's
# cost is the difference of the two fastest runs, and the part's the median over its quiet turns.
PART_RECIPE: dict[str, Any] = {
    "name": "gated-in-context",
    "rounds": 5,
    "warmup": 3,
    "runs": 10,
    "chunk": 25,
} | {key: ROUNDS_RECIPE[key] for key in ("probes", "tolerance", "max_turns", "settle_reads")}
CALIBRATION_SEED = 1_000_000  # calibration networks are drawn apart from any seed a user would pick
# A full table at 224x224 with --adaptive samples holds tens of thousands of entries (a few MB); a table made
# in hours must load, so its limit is far above the 1 MB of a hand-written space or arch file.
MAX_TABLE_BYTES = 512_000_000
FOLDS = 5  # the network-level correction is judged on networks it was not fitted on
# What the network-level correction may weigh besides the parts' sum: the network's weights (millions) and
# the feature-map elements its parts move (millions). A part timed in its small host runs with its weights
# and maps warm in cache; in a whole network they compete, and at 28x28 the sums of exactly timed parts came
# to 0.61-1.32 of the whole, falling with the network's size (benchmarks/README.md).
NETWORK_FEATURES = ("sum", "params", "activations")
CORRECTIONS = (("sum",), NETWORK_FEATURES)  # the candidates, judged by held-out error
PART_FLOOR_MS = 1e-3  # a part's difference below the timer's resolution is kept as this much, never <= 0
TIMED_EXPORTER = "torchscript"  # nn.onnx_export's fast path: what searches time and users ship
QUIET_WARNING = 0.5  # below this share of quiet turns, `profile` says the device was busy
FOREST_MIN_SAMPLES = 8  # below this many samples of a kind, its linear model alone predicts


# A part's block type in table keys: `ds` was keyed "ds" while it had a shortcut (arch format /1), so
# MobileNetV1's layer without one is keyed "dsa" (timm's name) and an old table's "ds" entries never match.
_PART_TYPES = {"ir": "ir", "ds": "dsa", "dsr": "dsr"}
_KEY = {
    "stem": re.compile(r"stem\|(?P<inc>\d+)x(?P<size>\d+)\|o(?P<out>\d+)\|k(?P<k>\d+)\|s(?P<s>\d+)\|(?P<act>\w+)$"),
    "block": re.compile(
        r"block\|(?P<inc>\d+)x(?P<size>\d+)\|(?P<type>ir|dsa|dsr)\|k(?P<k>\d+)\|s(?P<s>\d+)\|m(?P<mid>\d+)"
        r"\|o(?P<out>\d+)\|se(?P<se>[0-9.e-]+)\|(?P<act>\w+)$"
    ),
    "head": re.compile(
        r"head\|(?P<inc>\d+)x(?P<size>\d+)\|c(?P<conv>\d+)\|h(?P<hidden>\d+)\|(?P<act>\w+)\|n(?P<n>\d+)$"
    ),
}


@dataclass(frozen=True)
class PartConfig:
    """A part's configuration, parsed from its table key: what the regressor reads and the builder builds."""

    key: str
    kind: str  # stem | ir | dsa | dsr | head
    in_chs: int
    size: int
    mid: int
    out: int
    kernel: int
    stride: int
    se: float
    act: str
    hidden: int = 0
    classes: int = 0

    @classmethod
    def parse(cls, key: str) -> PartConfig:
        head = key.split("|", 1)[0]
        match = _KEY[head].match(key) if head in _KEY else None
        if match is None:
            raise BadInput(f"lookup table key {key!r} is not a part key; rebuild the table with 'mbsearch profile'")
        g = match.groupdict()
        common = {"key": key, "in_chs": int(g["inc"]), "size": int(g["size"]), "act": g["act"]}
        if head == "stem":
            out = int(g["out"])
            return cls(kind="stem", mid=out, out=out, kernel=int(g["k"]), stride=int(g["s"]), se=0.0, **common)
        if head == "head":
            conv = int(g["conv"])
            return cls(
                kind="head", mid=conv, out=conv, kernel=1, stride=1, se=0.0, hidden=int(g["hidden"]),
                classes=int(g["n"]), **common,
            )  # fmt: skip
        return cls(
            kind=g["type"], mid=int(g["mid"]), out=int(g["out"]), kernel=int(g["k"]), stride=int(g["s"]),
            se=float(g["se"]), **common,
        )  # fmt: skip

    @property
    def out_size(self) -> int:
        return output_size(self.size, self.stride)

    def with_widths(self, in_chs: int, mid: int, out: int) -> PartConfig:
        """The same part at other channel counts (adaptive sampling), with its key."""
        if self.kind in ("stem", "head"):
            return self  # their widths follow the space's few width multipliers; blocks vary most
        mid = in_chs if self.kind != "ir" else max(mid, 1)
        key = (
            f"block|{in_chs}x{self.size}|{self.kind}|k{self.kernel}|s{self.stride}|m{mid}|o{out}|se{self.se:g}"
            f"|{self.act}"
        )
        return replace(self, key=key, in_chs=in_chs, mid=mid, out=out)

    def macs(self) -> tuple[float, float]:
        """(dense MACs, depthwise MACs): the compute the linear cost model weighs."""
        inner, outer = self.size**2, self.out_size**2
        if self.kind == "stem":
            return float(self.in_chs * self.out * self.kernel**2 * outer), 0.0
        if self.kind == "head":
            return float(self.in_chs * self.out * inner + self._classifier_weights()), 0.0
        dense = self.mid * self.out * outer
        if self.kind == "ir" and self.mid != self.in_chs:
            dense += self.in_chs * self.mid * inner
        if self.se:
            dense += 2 * self.mid * se_channels(self.mid, self.se)
        return float(dense), float(self.mid * self.kernel**2 * outer)

    def activation_elements(self) -> float:
        """Feature-map elements read and written: the memory the part moves."""
        if self.kind in ("stem", "head"):
            return float(self.in_chs * self.size**2 + self.out * self.out_size**2)
        mid_maps = self.mid * (self.size**2 + self.out_size**2) if self.kind == "ir" else self.mid * self.out_size**2
        return float(self.in_chs * self.size**2 + mid_maps + self.out * self.out_size**2)

    def _classifier_weights(self) -> int:
        """MobileNetV3's hidden linear layer then the classifier; MobileNetV2's classifier alone (hidden 0)."""
        if self.hidden:
            return self.out * self.hidden + self.hidden * self.classes
        return self.out * self.classes

    def params(self) -> float:
        """Convolution and linear weights (BatchNorm and biases left out: they cost no MACs)."""
        if self.kind == "stem":
            return float(self.in_chs * self.out * self.kernel**2)
        if self.kind == "head":
            return float(self.in_chs * self.out + self._classifier_weights())
        weights = self.mid * self.kernel**2 + self.mid * self.out
        if self.kind == "ir" and self.mid != self.in_chs:
            weights += self.in_chs * self.mid
        if self.se:
            weights += 2 * self.mid * se_channels(self.mid, self.se)
        return float(weights)

    def linear_features(self) -> list[float]:
        dense, depthwise = self.macs()
        return [dense, depthwise, self.activation_elements(), 1.0]

    def forest_features(self) -> list[float]:
        dense, depthwise = self.macs()
        return [
            math.log(self.in_chs), math.log(self.mid), math.log(self.out), float(self.size), float(self.kernel),
            float(self.stride), self.se, float(self.act == "hswish"), float(self.act == "relu6"),
            float(self.in_chs % 8 == 0), float(self.mid % 8 == 0), float(self.out % 8 == 0),
            math.log1p(dense), math.log1p(depthwise), math.log1p(self.activation_elements()),
            math.log1p(self.params()), float(self.shortcut),
        ]  # fmt: skip

    @property
    def shortcut(self) -> bool:
        """The residual Add (rules.has_shortcut): fused into the projection conv by the runtime."""
        return self.kind in _ARCH_TYPES and has_shortcut(_ARCH_TYPES[self.kind], self.stride, self.in_chs, self.out)

    def categories(self) -> tuple:
        """What a regressor cannot interpolate between: a kernel, stride, SE or activation it never saw."""
        return (self.kernel, self.stride, self.se > 0, self.act)

    def build(self) -> nn.Module:
        if self.kind == "stem":
            return ConvBNAct(self.in_chs, self.out, self.kernel, self.stride, act=self.act)
        if self.kind == "head":
            classifier: list[nn.Module] = (
                [nn.Linear(self.out, self.hidden), make_activation(self.act), nn.Linear(self.hidden, self.classes)]
                if self.hidden
                else [nn.Linear(self.out, self.classes)]
            )  # dropout is the identity in an exported (eval) graph
            return nn.Sequential(
                ConvBNAct(self.in_chs, self.out, 1, act=self.act), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *classifier
            )
        if self.kind == "ir":
            return InvertedResidual(
                self.in_chs, self.mid, self.out, self.kernel, self.stride, self.se, self.act, self.shortcut
            )
        return DepthwiseSeparable(self.in_chs, self.out, self.kernel, self.stride, self.se, self.act, self.shortcut)


_ARCH_TYPES = {"ir": "ir", "dsa": "ds", "dsr": "dsr"}


def arch_part_keys(arch: Arch) -> list[str]:
    """The keys of the stem, blocks and head of `arch`, as a table stores them."""
    plans = plan_layers(arch)
    stem, head, last = arch.stem, arch.head, plans[-1]
    size = plans[0].out_size
    keys = [f"stem|{arch.input.channels}x{arch.input.size}|o{stem.out}|k{stem.kernel}|s{stem.stride}|{stem.act}"]
    for block, plan in zip(arch.blocks, plans[1:-1], strict=True):
        keys.append(
            f"block|{plan.in_chs}x{size}|{_PART_TYPES[block.type]}|k{block.kernel}|s{block.stride}|m{plan.mid_chs}"
            f"|o{block.out}|se{block.se:g}|{block.act}"
        )
        size = plan.out_size
    keys.append(f"head|{last.in_chs}x{size}|c{head.conv}|h{head.hidden}|{head.act}|n{arch.num_classes}")
    return keys


def arch_parts(arch: Arch) -> list[PartConfig]:
    """Stem, blocks and head of `arch`, parsed."""
    return [PartConfig.parse(key) for key in arch_part_keys(arch)]


def space_parts(space: SearchSpace, input_size: int, channels: int, num_classes: int) -> dict[str, PartConfig]:
    """Every distinct part the space can produce at this input: for each width and each stage, each choice
    combination as the stage's first block and as a repeated one. The layouts come from the sampler's own
    code (arch_from_decisions), so the keys are exactly those of sampled networks."""
    parts: dict[str, PartConfig] = {}
    defaults = [{key: getattr(space.stage_choices(i), key)[0] for key in CHOICE_KEYS} for i in range(len(space.stages))]
    for width in space.width:
        for index in range(len(space.stages)):
            choices = space.stage_choices(index)
            for combo in _combinations(choices):
                decisions = [dict(d) for d in defaults]
                decisions[index] = combo | {"depth": max(choices.depth)}
                arch = arch_from_decisions(space, width, decisions, input_size, channels, num_classes)
                for key in arch_part_keys(arch):
                    if key not in parts:
                        parts[key] = PartConfig.parse(key)
    return parts


def _combinations(choices: Any) -> list[dict[str, Any]]:
    combos = []
    for block in choices.block:
        for expand in choices.expand if block == "ir" else choices.expand[:1]:
            for kernel in choices.kernel:
                for se in choices.se:
                    for act in choices.act:
                        combos.append({"block": block, "kernel": kernel, "expand": expand, "se": se, "act": act})
    return combos


# ---------------------------------------------------------------------------------------------- timing


class _Host(nn.Module):
    """The context a part is timed in: a depthwise 1x1 conv before it (so its input arrives in the layout
    the runtime chose for the network, NCHWc on x86), a global average pool after it (so its output stays
    inside the runtime). Without a part, the host alone: the difference is the part's cost in context."""

    def __init__(self, channels: int, part: nn.Module | None, pooled: bool) -> None:
        super().__init__()
        self.pre = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        self.part = part if part is not None else nn.Identity()
        self.post = nn.Identity() if pooled else nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.part(self.pre(x)))


def _graph(graph: bytes, shape: tuple[int, ...], precision: str) -> bytes:
    """The graph as a network of this precision runs it: int8 quantized by the search's recipe."""
    if precision != "int8":
        return graph
    with hostlock.training():  # ONNX Runtime calibrates on this CPU: no timing on the host meanwhile
        return quantize_int8(graph, noise_calibration(shape))


def _prepared(module: nn.Module, shape: tuple[int, ...], precision: str = "fp32") -> Prepared:
    return Prepared(_graph(export_module(module.eval(), shape).data, shape, precision), shape, None)


def _input_only(shape: tuple[int, ...], precision: str = "fp32") -> Prepared:
    """The image through a global pool: what any network of this input costs before its first layer."""
    return _prepared(nn.AdaptiveAvgPool2d(1), shape, precision)


def _with_and_without(part: PartConfig, precision: str = "fp32") -> list[Prepared]:
    """The part in its host (see _Host) and the host alone (the stem: the network's input alone)."""
    shape = (1, part.in_chs, part.size, part.size)
    module = part.build()
    if part.kind == "stem":
        stem = nn.Sequential(module, nn.AdaptiveAvgPool2d(1))
        return [_prepared(stem, shape, precision), _input_only(shape, precision)]
    return [
        _prepared(_Host(part.in_chs, module, pooled=part.kind == "head"), shape, precision),
        _prepared(_Host(part.in_chs, None, pooled=False), shape, precision),
    ]


def time_parts_in_context(
    target: Target, parts: list[PartConfig], recipe: dict[str, Any] = PART_RECIPE, precision: str = "fp32"
) -> GatedTurns:
    """Each part's cost in ms inside its host, the parts' turns interleaved: the median over the gated turns
    of the difference between the host with the part and without it. Returns the gated turns, whose
    `minima` are replaced by the parts' costs."""
    result = gated_turns(target, [_with_and_without(part, precision) for part in parts], recipe)
    costs = [
        max(statistics.median(a - b for a, b in zip(with_part, without, strict=True)), PART_FLOOR_MS)
        for with_part, without in result.minima
    ]
    return replace(result, minima=costs)


def time_part_in_context(target: Target, part: PartConfig, recipe: dict[str, Any] = PART_RECIPE) -> float:
    """One part's cost in ms inside its host (time_parts_in_context)."""
    return time_parts_in_context(target, [part], recipe).minima[0]


# ------------------------------------------------------------------------------------------- the file

_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _TableInput(pydantic.BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: Annotated[int, Field(ge=1, le=16)]
    size: Annotated[int, Field(ge=8, le=1024)]


class LutFile(pydantic.BaseModel):
    """What a lookup table file holds (`mbsearch.latency.lut/2`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["mbsearch.latency.lut/2"] = FORMAT
    space: str
    input: _TableInput
    num_classes: Annotated[int, Field(ge=2, le=100_000)]
    target: str
    device: dict[str, Any]  # the device fingerprint's fields, as the target reported them
    created: str
    recipe: dict[str, Any]  # how parts were timed (PART_RECIPE)
    network_recipe: dict[str, Any]  # how whole networks were timed (ROUNDS_RECIPE)
    exporter: dict[str, Any]  # the exporter, its torch version and the opset of the timed graphs
    # fp32, or int8: every timed graph quantized by `quantization` (nn.quantize.int8_recipe)
    precision: Literal["fp32", "int8"] = "fp32"
    quantization: dict[str, Any] = {}
    # the input alone through a pool: every network's cost before its first layer
    input_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    # the network-level correction: coefficients of `correction_features`, then the intercept
    correction: Annotated[list[_Finite], Field(min_length=2, max_length=len(NETWORK_FEATURES) + 1)] | None = None
    correction_features: list[Literal["sum", "params", "activations"]] = ["sum"]
    use: Literal["sum", "corrected"] = "sum"
    residual_sd: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0  # held-out relative error's sd
    calibration: dict[str, Any] = {}
    profiling: dict[str, Any] = {}  # what building the table cost: parts, timings, minutes
    # every part's in-context cost: finite and positive (a negative or NaN one would reach a front)
    entries: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]]
    adaptive: list[str] = []  # the entries added by adaptive sampling (widths outside the space's)


# ---------------------------------------------------------------------------------------- the regressor


class KindModel:
    """One part kind's regressor: a non-negative linear cost model (dense MACs, depthwise MACs, activation
    elements, a constant) times a random forest's correction fitted on the log ratio. The forest's spread
    across trees and its out-of-bag error give each prediction a relative uncertainty."""

    def __init__(self, configs: list[PartConfig], times: list[float]) -> None:
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import LinearRegression

        self.count = len(configs)
        linear = np.array([c.linear_features() for c in configs])
        y = np.array(times)
        self.linear = LinearRegression(positive=True, fit_intercept=False).fit(linear, y)
        base = self._base(linear)
        ratio = np.log(y / base)
        self.forest = None
        self.worst_fits: list[tuple[float, PartConfig]] = []
        if self.count >= FOREST_MIN_SAMPLES:
            self.forest = RandomForestRegressor(
                n_estimators=100, min_samples_leaf=2, oob_score=True, random_state=0, n_jobs=1
            ).fit(np.array([c.forest_features() for c in configs]), ratio)
            misfit = np.abs(self.forest.oob_prediction_ - ratio)
            self.noise = float(np.sqrt(np.mean(misfit**2)))
            # Each timed part's out-of-bag error: where adaptive sampling adds parts.
            self.worst_fits = sorted(zip(misfit.tolist(), configs, strict=True), key=lambda item: -item[0])
        else:
            self.noise = float(np.std(ratio)) if self.count > 1 else 0.5
        # The range it was trained on: a part outside it is an extrapolation, and says so.
        self.low = np.min([_range_features(c) for c in configs], axis=0)
        self.high = np.max([_range_features(c) for c in configs], axis=0)
        self.seen = {c.categories() for c in configs}

    def _base(self, linear: np.ndarray) -> np.ndarray:
        floor = PART_FLOOR_MS
        return np.maximum(self.linear.predict(linear), floor)

    def predict(self, configs: list[PartConfig]) -> tuple[np.ndarray, np.ndarray]:
        """(ms, relative sd) for each config."""
        base = self._base(np.array([c.linear_features() for c in configs]))
        if self.forest is None:
            return base, np.full(len(configs), self.noise)
        features = np.array([c.forest_features() for c in configs])
        per_tree = np.stack([tree.predict(features) for tree in self.forest.estimators_])
        spread = per_tree.std(axis=0)
        return base * np.exp(per_tree.mean(axis=0)), np.sqrt(spread**2 + self.noise**2)

    def inside(self, config: PartConfig) -> bool:
        values = np.array(_range_features(config))
        return bool(np.all(values >= self.low) and np.all(values <= self.high) and config.categories() in self.seen)


def _range_features(config: PartConfig) -> list[float]:
    return [config.in_chs, config.mid, config.out, config.size]


@dataclass(frozen=True)
class Prediction:
    ms: float
    sd_ms: float
    source: Literal["table", "interpolated", "extrapolated"]
    outside: tuple[str, ...] = ()  # the parts outside the regressor's training range


class LookupTable:
    """A lookup table as a latency target: predicts, never measures."""

    runtime = "lut"
    overlaps_training = False

    def __init__(self, data: LutFile, path: Path | None = None) -> None:
        self.data = data
        self.path = path
        self.name = str(path) if path else "lookup table"
        self.threads = int(data.device.get("threads", 1))
        digest = hashlib.sha256(data.model_dump_json().encode()).hexdigest()[:16]
        # A study predicted with one table is keyed by that table's content, not only by its device.
        self._device = data.device | {"fingerprint": f"lut-{digest}", "predicts_for": data.device.get("fingerprint")}

    @classmethod
    def load(cls, path: Path) -> LookupTable:
        raw = parse_json(read_text(path, "lookup table", MAX_TABLE_BYTES), str(path))
        if isinstance(raw, dict) and raw.get("format") not in (None, FORMAT):
            raise BadInput(
                f"{path}: format {raw.get('format')!r} is not {FORMAT!r} (another timing recipe); rebuild it with "
                "'mbsearch profile'"
            )
        try:
            table = cls(LutFile.model_validate(raw), path)
        except pydantic.ValidationError as exc:
            raise BadInput(describe_validation_error(exc, str(path))) from None
        table.check_recipe()
        for key in table.data.entries:
            PartConfig.parse(key)
        return table

    def check_recipe(self) -> None:
        """Refuse a table timed by another recipe or on another exporter's graphs: its entries would not
        add up to the latency this version measures."""
        data = self.data
        if data.recipe != PART_RECIPE or data.network_recipe != ROUNDS_RECIPE:
            raise BadInput(
                f"{self.name} was timed with recipe {data.recipe.get('name')!r} {data.recipe} (this version: "
                f"{PART_RECIPE}); rebuild it with 'mbsearch profile'"
            )
        wanted = exporter_identity(TIMED_EXPORTER)
        if data.exporter != wanted:
            raise BadInput(
                f"{self.name} timed graphs of exporter {data.exporter} (this version exports {wanted}); rebuild it "
                "with 'mbsearch profile'"
            )
        if data.precision == "int8" and data.quantization != int8_recipe():
            raise BadInput(
                f"{self.name} timed int8 graphs quantized with {data.quantization} (this version: "
                f"{int8_recipe()}); rebuild it with 'mbsearch profile --precision int8'"
            )

    def check_precision(self, precision: str) -> None:
        """Refuse a search of another precision than the table's: int8 and float parts cost differently."""
        if precision != self.data.precision:
            raise BadInput(
                f"--lut {self.name} times {self.data.precision} graphs and this search is --precision {precision}; "
                f"build a table with 'mbsearch profile --precision {precision}'"
            )

    def calibration_line(self) -> str | None:
        """The calibration's held-out errors in one line (None when not calibrated)."""
        summary = self.data.calibration
        if not summary:
            return None
        held_out = summary.get("held_out", {})
        return (
            f"held-out error over {summary['networks']} calibration networks ({FOLDS}-fold): median "
            f"{held_out.get('median_abs_error', float('nan')):.1%}, within ±10% "
            f"{held_out.get('within_10pct', float('nan')):.0%}; predicts with {self._method()} "
            "(benchmarks/latency.py measures it on networks the table never saw)"
        )

    def _method(self) -> str:
        if self.data.use == "corrected" and self.data.correction:
            return f"a correction on {' + '.join(self.data.correction_features)}"
        return "the plain sum"

    def quiet_line(self) -> str | None:
        """How disturbed the device was while the table was timed (None for a table without the record)."""
        share = self.data.profiling.get("quiet_share")
        if share is None:
            return None
        line = f"the timing gate passed {share:.0%} of turns"
        if share < QUIET_WARNING:
            line += (
                ": the device was busy most of the time, so the table holds its least disturbed turns; "
                "profile again when nothing else runs there"
            )
        return line

    def save(self, path: Path) -> None:
        write_atomic(path, self.data.model_dump_json(indent=1) + "\n")

    def device(self) -> dict[str, Any]:
        return self._device

    @cached_property
    def models(self) -> dict[str, KindModel]:
        """One regressor per part kind, fitted on the entries when first needed (deterministic: seeded)."""
        by_kind: dict[str, tuple[list[PartConfig], list[float]]] = {}
        for key, ms in self.data.entries.items():
            config = PartConfig.parse(key)
            configs, times = by_kind.setdefault(config.kind, ([], []))
            configs.append(config)
            times.append(ms)
        return {kind: KindModel(configs, times) for kind, (configs, times) in by_kind.items()}

    def check_covers(self, space: SearchSpace, input_size: int, channels: int, num_classes: int) -> None:
        """Refuse, before a search starts, a table made for another space or input, or one with no entry of a
        part kind the space can produce (a kind it never timed cannot be predicted; a width can)."""
        self.check_fits(space.name, input_size, channels, num_classes)
        kinds = {part.kind for part in space_parts(space, input_size, channels, num_classes).values()}
        missing = sorted(kinds - set(self.models))
        if missing:
            raise BadInput(
                f"--lut {self.name} has no timed part of kind {', '.join(missing)}, which space {space.name} "
                "produces; rebuild it with 'mbsearch profile' for this space"
            )

    def check_fits(self, space_name: str, input_size: int, channels: int, num_classes: int) -> None:
        """Refuse, before a search starts, a table made for another space or input."""
        wanted = {"space": space_name, "input": f"{channels}x{input_size}", "classes": num_classes}
        has = {
            "space": self.data.space,
            "input": f"{self.data.input.channels}x{self.data.input.size}",
            "classes": self.data.num_classes,
        }
        if wanted != has:
            diff = ", ".join(f"{key} {has[key]} (search: {wanted[key]})" for key in wanted if wanted[key] != has[key])
            raise BadInput(
                f"--lut {self.name} was made for {diff}; rebuild it with 'mbsearch profile' for this search "
                "(use --latency-input-size for the deployment resolution)"
            )

    def parts(self, arch: Arch) -> tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]:
        """Each part's ms and sd (ms), the prediction's source, and the parts outside the training range."""
        configs = arch_parts(arch)
        ms, sd = np.zeros(len(configs)), np.zeros(len(configs))
        outside: list[str] = []
        interpolated = False
        for kind in {c.kind for c in configs}:
            if kind not in self.models:
                raise RuntimeFailure(
                    f"the lookup table {self.name} has no timed part of kind {kind} (made for space "
                    f"{self.data.space}); rebuild it with 'mbsearch profile' for this space"
                )
            model = self.models[kind]
            index = [i for i, c in enumerate(configs) if c.kind == kind]
            predicted, relative = model.predict([configs[i] for i in index])
            for i, value, rel in zip(index, predicted, relative, strict=True):
                hit = self.data.entries.get(configs[i].key)
                if hit is not None:
                    # Measured: no regressor error. Its timing noise is already in the network-level
                    # residual_sd, which was measured on networks whose parts came from this very table.
                    ms[i], sd[i] = hit, 0.0
                    continue
                ms[i], sd[i] = value, value * rel
                interpolated = True
                if not model.inside(configs[i]):
                    outside.append(configs[i].key)
        source = "extrapolated" if outside else "interpolated" if interpolated else "table"
        return ms, sd, source, tuple(outside)

    def plain_sum(self, arch: Arch) -> float:
        """The input's cost plus each part's in-context cost."""
        return self.data.input_ms + float(self.parts(arch)[0].sum())

    def prediction(self, arch: Arch, how: str | None = None) -> Prediction:
        """Predicted latency (ms) with its uncertainty and its source."""
        ms, sd, source, outside = self.parts(arch)
        plain = self.data.input_ms + float(ms.sum())
        scale = 1.0
        if (how or self.data.use) == "corrected" and self.data.correction:
            *weights, intercept = self.data.correction
            features = network_features(arch, plain, self.data.correction_features)
            predicted, scale = float(np.dot(weights, features)) + intercept, weights[0]
        else:
            predicted = plain
        # No network runs faster than its input alone: a fitted correction must not predict less.
        predicted = max(predicted, self.data.input_ms)
        # The regressor's errors on parts the table lacks (independent), plus the network-level error the
        # held-out calibration measured (which holds the table's own timing noise: hits add nothing).
        spread = math.sqrt(float((scale * sd) @ (scale * sd)) + (self.data.residual_sd * predicted) ** 2)
        return Prediction(predicted, spread, source, outside)

    def predict(self, arch: Arch, how: str | None = None) -> float:
        return self.prediction(arch, how).ms

    def prepare(self, model: nn.Module, arch: Arch, timings: dict[str, float] | None = None) -> Prepared:
        return Prepared(None, input_shape(arch), arch)

    def time(self, prepared: Prepared) -> LatencyStats:
        assert prepared.arch is not None
        p = self.prediction(prepared.arch)
        return LatencyStats(
            p.ms, 0.0, p.ms, p.ms, 0, 0, "predicted", "lut", self.threads, sd_ms=p.sd_ms, source=f"predicted:{p.source}"
        )


# ------------------------------------------------------------------------------------------ profiling


def profile(
    space: SearchSpace,
    target: Target,
    input_size: int,
    channels: int,
    num_classes: int,
    calibrate: int = 30,
    seed: int = 0,
    partial: Path | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    adaptive: int = 0,
    sample: int = 0,
    precision: str = "fp32",
) -> LookupTable:
    """Time every part of the space in context on `target` (or, with `sample`, every stem and head and a
    seeded sample of that many blocks: the regressors predict the rest, as nn-Meter's do), then `adaptive`
    more parts where a first fit errs most, then calibrate on `calibrate` whole networks (timed by the
    interleaved recipe). With `precision` int8 every timed graph is the int8 one.

    `partial` keeps the entries timed so far (written every 25 parts), so an interrupted profile resumes."""
    parts = sampled_parts(space_parts(space, input_size, channels, num_classes), sample, seed)
    device = target.device()
    header = {
        "space": space.name,
        "input": f"{channels}x{input_size}",
        "device": device["fingerprint"],
        "recipe": PART_RECIPE,
        "precision": precision,
        "quantization": int8_recipe() if precision == "int8" else {},
    }
    entries: dict[str, float] = _read_partial(partial, header)
    timings = 0
    quiet: list[float] = []  # the gate's pass rate per chunk: how disturbed the device was meanwhile

    def time_all(todo: list[PartConfig], what: str, total: int, offset: int) -> None:
        nonlocal timings
        chunk = PART_RECIPE["chunk"]
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            result = time_parts_in_context(target, batch, precision=precision)
            entries.update({part.key: cost for part, cost in zip(batch, result.minima, strict=True)})
            timings += result.turns
            quiet.append(result.quiet_share)
            if on_progress:
                on_progress(what, offset + start + len(batch), total)
            if partial is not None:  # kept after every chunk: an interrupted profile resumes from here
                write_atomic(partial, json.dumps({"header": header, "entries": entries}))

    input_key = "input-only"
    if input_key not in entries:
        shape = (1, channels, input_size, input_size)
        entries[input_key] = latencies_by_rounds(target, [_input_only(shape, precision)])[0]
    todo = [part for key, part in parts.items() if key not in entries]
    time_all(todo, "part", len(parts), len(parts) - len(todo))
    input_ms = entries.pop(input_key)
    added = [key for key in entries if key not in parts]
    if adaptive > len(added):
        table = _table(space, target, input_size, channels, num_classes, input_ms, entries, added, precision)
        extra = adaptive_samples(table, adaptive - len(added), seed)
        time_all(extra, "adaptive part", adaptive, len(added))
        added += [part.key for part in extra]
    table = _table(space, target, input_size, channels, num_classes, input_ms, entries, added, precision)
    calibration = calibration_archs(space, calibrate, input_size, channels, num_classes, seed)
    measured: list[float] = []
    if calibration:
        networks = gated_one_by_one(target, [_network(arch, precision) for arch in calibration], ROUNDS_RECIPE)
        measured = [statistics.median(group[0]) for group in networks.minima]
        timings += networks.turns
        quiet.append(networks.quiet_share)
        if on_progress:
            on_progress("calibration network", len(calibration), len(calibration))
    table = calibrated(table, calibration, measured)
    profiling = {
        "parts": len(entries),
        "adaptive": len(added),
        "timings": timings,
        "networks": len(calibration),
        # the gate's pass rate: near 1 on a quiet device; low means the profile waited out disturbances
        "quiet_share": round(statistics.fmean(quiet), 3) if quiet else None,
    }
    return LookupTable(table.data.model_copy(update={"profiling": profiling}), table.path)


def sampled_parts(parts: dict[str, PartConfig], sample: int, seed: int = 0) -> dict[str, PartConfig]:
    """Every stem and head, and a seeded sample of `sample` blocks (all of them when `sample` is 0)."""
    blocks = sorted(key for key, part in parts.items() if part.kind not in ("stem", "head"))
    if not sample or sample >= len(blocks):
        return parts
    kept = set(random.Random(seed).sample(blocks, sample))
    return {key: part for key, part in parts.items() if part.kind in ("stem", "head") or key in kept}


def _table(
    space: SearchSpace,
    target: Target,
    input_size: int,
    channels: int,
    num_classes: int,
    input_ms: float,
    entries: dict[str, float],
    added: list[str],
    precision: str = "fp32",
) -> LookupTable:
    return LookupTable(
        LutFile(
            space=space.name,
            input={"channels": channels, "size": input_size},
            num_classes=num_classes,
            target=target.name,
            device=target.device(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            recipe=PART_RECIPE,
            network_recipe=ROUNDS_RECIPE,
            exporter=exporter_identity(TIMED_EXPORTER),
            input_ms=input_ms,
            entries=dict(entries),
            adaptive=list(added),
            precision=precision,
            quantization=int8_recipe() if precision == "int8" else {},
        )
    )


def adaptive_samples(table: LookupTable, count: int, seed: int = 0) -> list[PartConfig]:
    """nn-Meter's adaptive sampling: around the block entries the regressor fits worst (out-of-bag), new
    configurations at other widths (x0.6 to x1.4, any channel count, not only multiples of 8), so widths
    between and beyond the space's are learned where they matter most."""
    rng = random.Random(seed)
    worst = [fit for kind, model in table.models.items() if kind not in ("stem", "head") for fit in model.worst_fits]
    worst.sort(key=lambda item: -item[0])
    chosen: dict[str, PartConfig] = {}
    for _, config in worst * 4:
        if len(chosen) >= count:
            break
        factor = rng.uniform(0.6, 1.4)
        in_chs, mid, out = (max(4, round(chs * factor)) for chs in (config.in_chs, config.mid, config.out))
        scaled = config.with_widths(in_chs, mid, out)
        if scaled.key not in table.data.entries:
            chosen[scaled.key] = scaled
    return list(chosen.values())


def _network(arch: Arch, precision: str = "fp32") -> Prepared:
    prepared = exported(build_seeded(arch, 0), arch)
    return replace(prepared, payload=_graph(prepared.payload, prepared.shape, precision))


def whole_network_latencies(target: Target, archs: list[Arch], precision: str = "fp32") -> list[float]:
    """Networks timed whole by the gated rounds recipe: the ground truth tables are calibrated and judged on."""
    return latencies_by_rounds(target, [_network(arch, precision) for arch in archs]) if archs else []


def calibration_archs(
    space: SearchSpace, count: int, input_size: int, channels: int, num_classes: int, seed: int = 0
) -> list[Arch]:
    """The networks a table is calibrated on: sampled with seeds apart from any a user would pick."""
    return [
        random_arch(space, CALIBRATION_SEED + seed + index, input_size, channels, num_classes) for index in range(count)
    ]


def network_features(arch: Arch, plain_sum: float, names: Sequence[str]) -> list[float]:
    """The network-level correction's inputs (NETWORK_FEATURES) for `arch`, whose parts sum to `plain_sum`."""
    parts = arch_parts(arch)
    values = {
        "sum": plain_sum,
        "params": sum(part.params() for part in parts) / 1e6,
        "activations": sum(part.activation_elements() for part in parts) / 1e6,
    }
    return [values[name] for name in names]


def _held_out(features: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each network's prediction by a linear fit on the other folds, weighted for relative error."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold

    predicted = np.zeros_like(truth)
    for fit_on, judge_on in KFold(FOLDS, shuffle=True, random_state=0).split(features):
        fit = LinearRegression().fit(features[fit_on], truth[fit_on], sample_weight=truth[fit_on] ** -2.0)
        predicted[judge_on] = fit.predict(features[judge_on])
    return predicted


def _rmspe(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(error**2)))


def _best_correction(
    feature_sets: dict[tuple[str, ...], np.ndarray], plain: np.ndarray, truth: np.ndarray, rows: np.ndarray
) -> tuple[tuple[str, ...] | None, dict[tuple[str, ...], np.ndarray]]:
    """The correction with the lowest k-fold held-out RMSPE on `rows` (None: the plain sum, which wins
    ties), and each candidate's held-out relative errors there."""
    truth_here = truth[rows]
    best, best_rmspe = None, _rmspe((plain[rows] - truth_here) / truth_here)
    errors: dict[tuple[str, ...], np.ndarray] = {}
    if len(rows) < 2 * FOLDS:
        return best, errors
    for names, features in feature_sets.items():
        errors[names] = (_held_out(features[rows], truth_here) - truth_here) / truth_here
        if _rmspe(errors[names]) < best_rmspe:
            best, best_rmspe = names, _rmspe(errors[names])
    return best, errors


def _fit_correction(features: np.ndarray, truth: np.ndarray):
    from sklearn.linear_model import LinearRegression

    return LinearRegression().fit(features, truth, sample_weight=truth**-2.0)


def _nested_error(feature_sets: dict[tuple[str, ...], np.ndarray], plain: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each network's relative error when the whole procedure, choosing the correction included, ran on the
    other folds only (nested cross-validation). The minimum of the candidates' held-out errors is biased
    low by the choice itself; this is the error a new network can expect."""
    from sklearn.model_selection import KFold

    error = np.zeros_like(truth)
    for fit_on, judge_on in KFold(FOLDS, shuffle=True, random_state=1).split(truth):
        choice, _ = _best_correction(feature_sets, plain, truth, fit_on)
        if choice is None:
            predicted = plain[judge_on]
        else:
            features = feature_sets[choice]
            predicted = _fit_correction(features[fit_on], truth[fit_on]).predict(features[judge_on])
        error[judge_on] = (predicted - truth[judge_on]) / truth[judge_on]
    return error


def calibrated(table: LookupTable, archs: list[Arch], measured: list[float]) -> LookupTable:
    """The table with a network-level correction, fitted on networks timed whole: a linear model of the
    parts' sum (and, as a second candidate, the network's weights and feature maps, CORRECTIONS), weighted
    for relative error. Each candidate is judged by its error on networks it was not fitted on (k-fold) and
    the lowest held-out RMSPE, the plain sum included, is used. The error reported, and every prediction's
    network-level uncertainty, come from nested cross-validation (the choice made on the other folds too),
    not from the winning candidate's own held-out error, which the choice makes optimistic."""
    if not archs:
        return table
    plain = np.array([table.plain_sum(arch) for arch in archs])
    truth = np.array(measured)
    summary: dict[str, Any] = {"networks": len(archs), "held_out_sum": prediction_error(list(plain), list(truth))}
    update: dict[str, Any] = {"use": "sum", "correction": None, "correction_features": ["sum"]}
    feature_sets = {
        names: np.array([network_features(a, s, names) for a, s in zip(archs, plain, strict=True)])
        for names in CORRECTIONS
    }
    choice, errors = _best_correction(feature_sets, plain, truth, np.arange(len(truth)))
    for names, error in errors.items():
        summary[f"held_out_{'+'.join(names)}"] = prediction_error(list(truth * (1 + error)), list(truth))
    if choice is not None:
        fit = _fit_correction(feature_sets[choice], truth)
        update |= {
            "use": "corrected",
            "correction": [*map(float, fit.coef_), float(fit.intercept_)],
            "correction_features": list(choice),
        }
    honest = _nested_error(feature_sets, plain, truth) if len(archs) >= 2 * FOLDS else (plain - truth) / truth
    summary["held_out"] = prediction_error(list(truth * (1 + honest)), list(truth))
    update |= {"calibration": summary, "residual_sd": _rmspe(honest)}
    return LookupTable(table.data.model_copy(update=update), table.path)


def _read_partial(path: Path | None, header: dict[str, Any]) -> dict[str, float]:
    """Entries of an interrupted profile of the same space, input, device and recipe; else none."""
    if path is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("header") != header or not isinstance(saved.get("entries"), dict):
        return {}
    return {str(k): float(v) for k, v in saved["entries"].items() if isinstance(v, int | float)}


def prediction_error(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """Share within ±5% and ±10%, median absolute error, RMSPE and Kendall tau of the two rankings."""
    from mbsearch.ranking import kendall_tau

    p, m = np.array(predicted), np.array(measured)
    relative = np.abs(p - m) / m
    return {
        "within_5pct": float(np.mean(relative <= 0.05)),
        "within_10pct": float(np.mean(relative <= 0.10)),
        "median_abs_error": float(np.median(relative)),
        "rmspe": float(np.sqrt(np.mean(relative**2))),
        "kendall_tau": float(kendall_tau(list(p), list(m))) if len(m) > 1 else float("nan"),
        "networks": len(m),
    }
