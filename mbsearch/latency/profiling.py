"""Making a lookup table: `profile` times every part of a space in context on a target (resumable from a
partial file), adds adaptive parts where a first fit errs most, and calibrates on whole networks;
`profile_to_file` is `mbsearch profile` as one library call (outputs checked, the target opened, the
table written).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.space import SearchSpace, load_space
from mbsearch.files import check_outputs, write_atomic
from mbsearch.latency.calibration import _network, calibrated, calibration_archs
from mbsearch.latency.factory import open_target
from mbsearch.latency.lut import TIMED_EXPORTER, LookupTable, LutFile
from mbsearch.latency.parts import (
    PART_RECIPE,
    PartConfig,
    _input_only,
    sampled_parts,
    space_parts,
    time_parts_in_context,
)
from mbsearch.latency.recipes import ROUNDS_RECIPE, gated_one_by_one, latencies_by_rounds
from mbsearch.latency.targets import Target
from mbsearch.nn.onnx_export import exporter_identity
from mbsearch.nn.quantize import int8_recipe


@dataclass(frozen=True)
class ProfilePlan:
    """What a table is made for and how many timings it spends: the input, `calibrate` whole networks,
    `adaptive` parts at other widths, `sample` blocks of the space (0: all; the regressors predict the rest,
    as nn-Meter's do), the seed of every draw, and the precision of every timed graph."""

    input_size: int
    channels: int
    num_classes: int
    calibrate: int = 30
    seed: int = 0
    adaptive: int = 0
    sample: int = 0
    precision: str = "fp32"


def profile(
    space: SearchSpace,
    target: Target,
    plan: ProfilePlan,
    partial: Path | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> LookupTable:
    """Time every part of the space in context on `target` (or a sample of its blocks), then `adaptive` more
    parts where a first fit errs most, then calibrate on whole networks (timed by the interleaved recipe).

    `partial` keeps the entries timed so far (written after every chunk), so an interrupted profile resumes."""
    parts = sampled_parts(space_parts(space, plan.input_size, plan.channels, plan.num_classes), plan.sample, plan.seed)
    header = {
        "space": space.name,
        "input": f"{plan.channels}x{plan.input_size}",
        "device": target.device()["fingerprint"],
        "recipe": PART_RECIPE,
        "precision": plan.precision,
        "quantization": int8_recipe() if plan.precision == "int8" else {},
    }
    timer = _PartTimer(target, plan.precision, _read_partial(partial, header), partial, header, on_progress)
    input_key = "input-only"
    if input_key not in timer.entries:
        shape = (1, plan.channels, plan.input_size, plan.input_size)
        timer.entries[input_key] = latencies_by_rounds(target, [_input_only(shape, plan.precision)])[0]
    todo = [part for key, part in parts.items() if key not in timer.entries]
    timer.time_all(todo, "part", len(parts), len(parts) - len(todo))
    input_ms = timer.entries.pop(input_key)
    added = [key for key in timer.entries if key not in parts]
    if plan.adaptive > len(added):
        table = _table(space, target, plan, input_ms, timer.entries, added)
        extra = adaptive_samples(table, plan.adaptive - len(added), plan.seed)
        timer.time_all(extra, "adaptive part", plan.adaptive, len(added))
        added += [part.key for part in extra]
    table = _table(space, target, plan, input_ms, timer.entries, added)
    calibration = calibration_archs(space, plan.calibrate, plan.input_size, plan.channels, plan.num_classes, plan.seed)
    table = calibrated(table, calibration, timer.time_networks(calibration))
    profiling = {
        "parts": len(timer.entries),
        "adaptive": len(added),
        "timings": timer.timings,
        "networks": len(calibration),
        # the gate's pass rate: near 1 on a quiet device; low means the profile waited out disturbances
        "quiet_share": round(statistics.fmean(timer.quiet), 3) if timer.quiet else None,
    }
    return LookupTable(table.data.model_copy(update={"profiling": profiling}), table.path)


@dataclass
class _PartTimer:
    """Times parts a chunk at a time, keeping every entry (and the partial file) and the gate's pass rates."""

    target: Target
    precision: str
    entries: dict[str, float]
    partial: Path | None
    header: dict[str, Any]
    on_progress: Callable[[str, int, int], None] | None
    timings: int = 0
    quiet: list[float] = field(default_factory=list)  # the gate's pass rate per chunk: how disturbed the device was

    def time_all(self, todo: list[PartConfig], what: str, total: int, offset: int) -> None:
        chunk = PART_RECIPE["chunk"]
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            result = time_parts_in_context(self.target, batch, precision=self.precision)
            self.entries.update({part.key: cost for part, cost in zip(batch, result.minima, strict=True)})
            self._count(result.turns, result.quiet_share)
            if self.on_progress:
                self.on_progress(what, offset + start + len(batch), total)
            if self.partial is not None:  # kept after every chunk: an interrupted profile resumes from here
                write_atomic(self.partial, json.dumps({"header": self.header, "entries": self.entries}))

    def time_networks(self, archs: list[Arch]) -> list[float]:
        """The calibration networks' latencies, timed whole by the interleaved rounds recipe."""
        if not archs:
            return []
        prepared = [_network(arch, self.precision) for arch in archs]
        networks = gated_one_by_one(self.target, prepared, ROUNDS_RECIPE)
        self._count(networks.turns, networks.quiet_share)
        if self.on_progress:
            self.on_progress("calibration network", len(archs), len(archs))
        return [statistics.median(group[0]) for group in networks.minima]

    def _count(self, turns: int, quiet_share: float) -> None:
        self.timings += turns
        self.quiet.append(quiet_share)


def _table(
    space: SearchSpace, target: Target, plan: ProfilePlan, input_ms: float, entries: dict[str, float], added: list[str]
) -> LookupTable:
    precision = plan.precision
    return LookupTable(
        LutFile(
            space=space.name,
            input={"channels": plan.channels, "size": plan.input_size},
            num_classes=plan.num_classes,
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


def profile_to_file(
    space: str,
    target: str,
    token: str | None,
    threads: int,
    plan: ProfilePlan,
    output: Path,
    on_event: Callable[[str], None],
) -> LookupTable:
    """Build the lookup table of `space` on `target` and write it to `output`; every output is checked first,
    and an interrupted run resumes from OUTPUT.partial. Timing runs single-threaded in torch (restored).
    With `precision` int8 every timed graph is quantized first (the search's int8 recipe)."""
    partial = output.with_name(output.name + ".partial")
    space_file = Path(space) if space.endswith((".yaml", ".yml")) or "/" in space else None
    check_outputs(
        {"--output": output, "--output's resume file": partial},
        inputs={"the --space file": space_file},
        kinds={"--output": "json:mbsearch.latency.lut/", "--output's resume file": "json:"},
    )
    search_space = load_space(space)
    device = open_target(target, "onnxruntime", threads, token)
    info = device.device()
    count = len(sampled_parts(space_parts(search_space, plan.input_size, plan.channels, plan.num_classes), plan.sample,
                              plan.seed))  # fmt: skip
    size = f"{plan.channels}x{plan.input_size}x{plan.input_size}"
    on_event(
        f"profiling {count} {plan.precision} parts of space {search_space.name} at {size} on "
        f"{device.name} (device {info['fingerprint']}: {info['cpu']}, {info['cores']} core(s), "
        f"{info['threads']} thread(s)), in context; then {plan.adaptive} adaptive part(s) and {plan.calibrate} "
        "calibration network(s)"
    )
    shown = {"part": 0, "adaptive part": 0, "calibration network": 0}

    def progress(what: str, done: int, total: int) -> None:
        if done == total or done - shown[what] >= max(1, total // 10):
            shown[what] = done
            on_event(f"{what}s: {done}/{total}")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = profile(search_space, device, plan, partial, progress)
    finally:
        torch.set_num_threads(previous_threads)
    table.save(output)
    partial.unlink(missing_ok=True)
    return table
