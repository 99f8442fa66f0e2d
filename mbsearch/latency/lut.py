"""Per-block latency lookup tables: `mbsearch profile` builds one, `run --latency predicted --lut` uses it.

A network is cut into parts: the stem, each block (its config, input channels and resolution) and the head
(1x1 conv, pool, classifier). `profile` times every distinct part a space can produce, once, alone, on the
target, and stores the time minus the cost of an empty session run. A network is predicted as the sum of
its parts, plus one run's cost, plus a per-network overhead measured on calibration networks timed whole
(nn-Meter's kernel-sum idea). Where the plain sum falls short, a linear correction on the sum and the
block count, fitted on the same calibration networks, is stored too; `use` says which predicts.

The file is versioned JSON keyed by the device fingerprint of the target it was measured on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
from pydantic import ConfigDict, Field
from torch import nn

from mbsearch.device.timing import LatencyStats
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.files import describe_validation_error, parse_json, read_text, write_atomic
from mbsearch.latency.profiler import latency_of
from mbsearch.latency.targets import Prepared, Target, input_shape
from mbsearch.nn.blocks import ConvBNAct
from mbsearch.nn.model import build_block, build_classifier
from mbsearch.nn.onnx_export import export_module
from mbsearch.spec.arch import Arch
from mbsearch.spec.plan import plan_layers
from mbsearch.spec.sample import arch_from_decisions, random_arch
from mbsearch.spec.space import CHOICE_KEYS, SearchSpace

FORMAT = "mbsearch.latency.lut/1"
# Parts are small: fewer runs than a whole network, still re-measured while noisy.
PART_RECIPE = {"warmup": 5, "runs": 30, "attempts": 2, "sessions": 1}
CALIBRATION_SEED = 1_000_000  # calibration networks are drawn apart from any seed a user would pick


# A part's block type in table keys: `ds` was keyed "ds" while it had a shortcut (arch format /1), so
# MobileNetV1's layer without one is keyed "dsa" (timm's name) and an old table's "ds" entries never match.
_PART_TYPES = {"ir": "ir", "ds": "dsa", "dsr": "dsr"}


@dataclass(frozen=True)
class Part:
    """One piece of a network, timed alone: a key, the input it takes and how to build it."""

    key: str
    shape: tuple[int, int, int, int]
    build: Callable[[], nn.Module]


def arch_parts(arch: Arch) -> list[Part]:
    """Stem, blocks and head of `arch`, with the keys a lookup table stores them under."""
    plans = plan_layers(arch)
    stem = arch.stem
    size = arch.input.size
    parts = [
        Part(
            f"stem|{arch.input.channels}x{size}|o{stem.out}|k{stem.kernel}|s{stem.stride}|{stem.act}",
            (1, arch.input.channels, size, size),
            lambda: ConvBNAct(arch.input.channels, stem.out, stem.kernel, stem.stride, act=stem.act),
        )
    ]
    size = plans[0].out_size
    for block, plan in zip(arch.blocks, plans[1:-1], strict=True):
        key = (
            f"block|{plan.in_chs}x{size}|{_PART_TYPES[block.type]}|k{block.kernel}|s{block.stride}|m{plan.mid_chs}"
            f"|o{block.out}|se{block.se:g}|{block.act}"
        )
        parts.append(Part(key, (1, plan.in_chs, size, size), lambda b=block, p=plan: build_block(b, p)))
        size = plan.out_size
    head, last = arch.head, plans[-1]
    parts.append(
        Part(
            f"head|{last.in_chs}x{size}|c{head.conv}|h{head.hidden}|{head.act}|n{arch.num_classes}",
            (1, last.in_chs, size, size),
            lambda: nn.Sequential(
                ConvBNAct(last.in_chs, head.conv, 1, act=head.act),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
                build_classifier(arch),
            ),
        )
    )
    return parts


def space_parts(space: SearchSpace, input_size: int, channels: int, num_classes: int) -> dict[str, Part]:
    """Every distinct part the space can produce at this input: for each width and each stage, each choice
    combination as the stage's first block and as a repeated one. The layouts come from the sampler's own
    code (arch_from_decisions), so the keys are exactly those of sampled networks."""
    parts: dict[str, Part] = {}
    defaults = [{key: getattr(space.stage_choices(i), key)[0] for key in CHOICE_KEYS} for i in range(len(space.stages))]
    for width in space.width:
        for index in range(len(space.stages)):
            choices = space.stage_choices(index)
            for combo in _combinations(choices):
                decisions = [dict(d) for d in defaults]
                decisions[index] = combo | {"depth": max(choices.depth)}
                arch = arch_from_decisions(space, width, decisions, input_size, channels, num_classes)
                for part in arch_parts(arch):
                    parts.setdefault(part.key, part)
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


def time_part(target: Target, part: Part) -> LatencyStats:
    module = part.build().eval()
    exported = export_module(module, part.shape)
    return target.time(Prepared(exported.data, part.shape, None, **PART_RECIPE))


_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _TableInput(pydantic.BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: Annotated[int, Field(ge=1, le=16)]
    size: Annotated[int, Field(ge=8, le=1024)]


class LutFile(pydantic.BaseModel):
    """What a lookup table file holds (`mbsearch.latency.lut/1`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["mbsearch.latency.lut/1"] = FORMAT
    space: str
    input: _TableInput
    num_classes: Annotated[int, Field(ge=2, le=100_000)]
    target: str
    device: dict[str, Any]  # the device fingerprint's fields, as the target reported them
    created: str
    recipe: dict[str, int]
    # an empty session run: subtracted from every part, added once per network
    run_overhead_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    network_overhead_ms: _Finite = 0.0  # median of (measured - sum of parts) on the calibration networks
    correction: Annotated[list[_Finite], Field(min_length=3, max_length=3)] | None = None  # a*sum + b*blocks + c
    use: Literal["sum", "corrected"] = "sum"
    calibration: dict[str, Any] = {}
    # every part's time is a measured latency: finite and positive (a negative or NaN one would reach a front)
    entries: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]]


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
        raw = parse_json(read_text(path, "lookup table"), str(path))
        if isinstance(raw, dict) and raw.get("format") not in (None, FORMAT):
            raise BadInput(
                f"{path}: format {raw.get('format')!r} is not {FORMAT!r}; rebuild it with 'mbsearch profile'"
            )
        try:
            return cls(LutFile.model_validate(raw), path)
        except pydantic.ValidationError as exc:
            raise BadInput(describe_validation_error(exc, str(path))) from None

    def calibration_line(self) -> str | None:
        """The calibration's overhead and errors in one line (None when not calibrated)."""
        summary = self.data.calibration
        if not summary:
            return None
        return (
            f"per-network overhead {self.data.network_overhead_ms:+.3f} ms; median |error| on the "
            f"{summary['networks']} calibration networks: sum {summary.get('median_abs_error_sum', float('nan')):.1%}, "
            f"corrected {summary.get('median_abs_error_corrected', float('nan')):.1%}; predicts with the "
            f"{self.data.use} (benchmarks/latency.py measures held-out error)"
        )

    def save(self, path: Path) -> None:
        write_atomic(path, self.data.model_dump_json(indent=1) + "\n")

    def device(self) -> dict[str, Any]:
        return self._device

    def check_covers(self, space: SearchSpace, input_size: int, channels: int, num_classes: int) -> None:
        """Refuse, before a search starts, a table made for another space or input, or one that lacks a part
        the space can produce (found now, not after trainings)."""
        self.check_fits(space.name, input_size, channels, num_classes)
        missing = [key for key in space_parts(space, input_size, channels, num_classes) if key not in self.data.entries]
        if missing:
            raise BadInput(
                f"--lut {self.name} lacks {len(missing)} part(s) of space {space.name} (e.g. {missing[0]}); "
                "rebuild it with 'mbsearch profile' for this space"
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

    def plain_sum(self, arch: Arch) -> float:
        """One empty run plus each part's time beyond it."""
        total = self.data.run_overhead_ms
        for part in arch_parts(arch):
            if part.key not in self.data.entries:
                raise RuntimeFailure(
                    f"{part.key} is not in the lookup table {self.name} (made for space {self.data.space}); "
                    "rebuild it with 'mbsearch profile' for this space"
                )
            total += self.data.entries[part.key] - self.data.run_overhead_ms
        return total

    def predict(self, arch: Arch, how: str | None = None) -> float:
        """Predicted latency in ms: the sum plus the per-network overhead, or the fitted correction."""
        plain = self.plain_sum(arch)
        if (how or self.data.use) == "corrected" and self.data.correction:
            a, b, c = self.data.correction
            predicted = a * plain + b * len(arch.blocks) + c
        else:
            predicted = plain + self.data.network_overhead_ms
        # No network runs faster than an empty run: a fitted overhead or correction must not predict less
        return max(predicted, self.data.run_overhead_ms)

    def prepare(self, model: nn.Module, arch: Arch, timings: dict[str, float] | None = None) -> Prepared:
        return Prepared(None, input_shape(arch), arch)

    def time(self, prepared: Prepared) -> LatencyStats:
        assert prepared.arch is not None
        predicted = self.predict(prepared.arch)
        return LatencyStats(predicted, 0.0, predicted, predicted, 0, 0, "predicted", "lut", self.threads)


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
) -> LookupTable:
    """Time every part of the space on `target`, then calibrate on `calibrate` whole networks.

    `partial` keeps the entries timed so far (written every 25 parts), so an interrupted profile resumes."""
    parts = space_parts(space, input_size, channels, num_classes)
    device = target.device()
    header = {"space": space.name, "input": f"{channels}x{input_size}", "device": device["fingerprint"]}
    entries: dict[str, float] = _read_partial(partial, header)
    overhead_part = Part("empty-run", (1, 1, 8, 8), nn.ReLU)
    run_overhead = entries.get(overhead_part.key) or time_part(target, overhead_part).median_ms
    entries[overhead_part.key] = run_overhead
    todo = [part for key, part in parts.items() if key not in entries]
    for done, part in enumerate(todo, start=1):
        entries[part.key] = time_part(target, part).median_ms
        if on_progress:
            on_progress("part", len(parts) - len(todo) + done, len(parts))
        if partial is not None and (done % 25 == 0 or done == len(todo)):
            write_atomic(partial, json.dumps({"header": header, "entries": entries}))
    entries.pop(overhead_part.key)
    table = LookupTable(
        LutFile(
            space=space.name,
            input={"channels": channels, "size": input_size},
            num_classes=num_classes,
            target=target.name,
            device=device,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            recipe=PART_RECIPE,
            run_overhead_ms=run_overhead,
            entries=entries,
        )
    )
    calibration = calibration_archs(space, calibrate, input_size, channels, num_classes, seed)
    measured = []
    for index, arch in enumerate(calibration, start=1):
        measured.append(latency_of(arch, target).median_ms)
        if on_progress:
            on_progress("calibration network", index, len(calibration))
    return calibrated(table, calibration, measured)


def calibration_archs(
    space: SearchSpace, count: int, input_size: int, channels: int, num_classes: int, seed: int = 0
) -> list[Arch]:
    """The networks a table is calibrated on: sampled with seeds apart from any a user would pick."""
    return [
        random_arch(space, CALIBRATION_SEED + seed + index, input_size, channels, num_classes) for index in range(count)
    ]


def calibrated(table: LookupTable, archs: list[Arch], measured: list[float]) -> LookupTable:
    """The table with its per-network overhead and linear correction fitted on networks timed whole."""
    if not archs:
        return table
    plain = np.array([table.plain_sum(arch) for arch in archs])
    truth = np.array(measured)
    overhead = float(np.median(truth - plain))
    summary: dict[str, Any] = {"networks": len(archs), "overhead_ms": overhead}
    update: dict[str, Any] = {"network_overhead_ms": overhead}
    use = "sum"
    if len(archs) >= 5:
        features = np.column_stack([plain, [len(arch.blocks) for arch in archs], np.ones(len(archs))])
        coef, *_ = np.linalg.lstsq(features, truth, rcond=None)
        sum_error = np.median(np.abs(plain + overhead - truth) / truth)
        fit_error = np.median(np.abs(features @ coef - truth) / truth)
        update["correction"] = [float(c) for c in coef]
        # Fitted and judged on the same networks, so the correction must clearly win to be used.
        use = "corrected" if fit_error < 0.8 * sum_error else "sum"
        summary |= {"median_abs_error_sum": float(sum_error), "median_abs_error_corrected": float(fit_error)}
    update |= {"use": use, "calibration": summary}
    return LookupTable(table.data.model_copy(update=update), table.path)


def _read_partial(path: Path | None, header: dict[str, Any]) -> dict[str, float]:
    """Entries of an interrupted profile of the same space, input and device; else none."""
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
    """Share within ±5% and ±10%, median absolute error, and Kendall tau of the two rankings."""
    from mbsearch.ranking import kendall_tau

    p, m = np.array(predicted), np.array(measured)
    relative = np.abs(p - m) / m
    return {
        "within_5pct": float(np.mean(relative <= 0.05)),
        "within_10pct": float(np.mean(relative <= 0.10)),
        "median_abs_error": float(np.median(relative)),
        "kendall_tau": float(kendall_tau(list(p), list(m))),
        "networks": len(m),
    }
