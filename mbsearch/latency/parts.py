"""The parts a lookup table is made of (stem, each block in its context, head), keyed by their
configuration, and how one is timed: inside a small host network against the host alone, interleaved and
gated like whole networks (see lut.py for why in context).
"""

from __future__ import annotations

import math
import random
import re
import statistics
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.plan import plan_layers
from mbsearch.architecture.rules import has_shortcut, output_size, se_channels
from mbsearch.architecture.sample import arch_from_decisions
from mbsearch.architecture.space import CHOICE_KEYS, SearchSpace
from mbsearch.device import hostlock
from mbsearch.errors import BadInput
from mbsearch.latency.recipes import ROUNDS_RECIPE, GatedTurns, gated_turns
from mbsearch.latency.targets import Prepared, Target
from mbsearch.nn.blocks import ConvBNAct, Depthwise, DepthwiseSeparable, InvertedResidual, make_activation
from mbsearch.nn.onnx_export import export_module
from mbsearch.nn.quantize import noise_calibration, quantize_int8

# How a part is timed: `rounds` turns of the part in its host and the host alone, back to back, each a fresh
# session with `warmup` runs then `runs` timed ones, gated like whole networks (recipes.ROUNDS_RECIPE: a turn
# counts only when the probe beside it ran near its fastest) and interleaved with `chunk` other parts; a turn's
# cost is the difference of the two fastest runs, and the part's the median over its quiet turns.
PART_RECIPE: dict[str, Any] = {
    "name": "gated-in-context",
    "rounds": 5,
    "warmup": 3,
    "runs": 10,
    "chunk": 25,
} | {key: ROUNDS_RECIPE[key] for key in ("probes", "tolerance", "max_turns", "settle_reads")}


PART_FLOOR_MS = 1e-3  # a part's difference below the timer's resolution is kept as this much, never <= 0


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
        dw = Depthwise(self.kernel, self.stride, self.se, self.act)
        if self.kind == "ir":
            return InvertedResidual(self.in_chs, self.mid, self.out, dw, self.shortcut)
        return DepthwiseSeparable(self.in_chs, self.out, dw, self.shortcut)


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


def sampled_parts(parts: dict[str, PartConfig], sample: int, seed: int = 0) -> dict[str, PartConfig]:
    """Every stem and head, and a seeded sample of `sample` blocks (all of them when `sample` is 0)."""
    blocks = sorted(key for key, part in parts.items() if part.kind not in ("stem", "head"))
    if not sample or sample >= len(blocks):
        return parts
    kept = set(random.Random(seed).sample(blocks, sample))
    return {key: part for key, part in parts.items() if part.kind in ("stem", "head") or key in kept}
