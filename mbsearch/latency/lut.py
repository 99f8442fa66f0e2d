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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
from pydantic import ConfigDict, Field
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.space import SearchSpace
from mbsearch.device.timing import LatencyStats
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.files import describe_validation_error, parse_json, read_text, write_atomic
from mbsearch.latency.parts import PART_FLOOR_MS, PART_RECIPE, PartConfig, arch_parts, space_parts
from mbsearch.latency.recipes import ROUNDS_RECIPE
from mbsearch.latency.targets import Prepared, input_shape
from mbsearch.nn.onnx_export import exporter_identity
from mbsearch.nn.quantize import int8_recipe

FORMAT = "mbsearch.latency.lut/2"


# A full table at 224x224 with --adaptive samples holds tens of thousands of entries (a few MB); a table made
# in hours must load, so its limit is far above the 1 MB of a hand-written space or arch file.
MAX_TABLE_BYTES = 512_000_000


FOLDS = 5  # the network-level correction is judged on networks it was not fitted on


# What the network-level correction may weigh besides the parts' sum: the network's weights (millions) and
# the feature-map elements its parts move (millions). A part timed in its small host runs with its weights
# and maps warm in cache; in a whole network they compete, and at 28x28 the sums of exactly timed parts came
# to 0.61-1.32 of the whole, falling with the network's size (benchmarks/README.md).
NETWORK_FEATURES = ("sum", "params", "activations")


TIMED_EXPORTER = "torchscript"  # nn.onnx_export's fast path: what searches time and users ship


QUIET_WARNING = 0.5  # below this share of quiet turns, `profile` says the device was busy


FOREST_MIN_SAMPLES = 8  # below this many samples of a kind, its linear model alone predicts


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


def network_features(arch: Arch, plain_sum: float, names: Sequence[str]) -> list[float]:
    """The network-level correction's inputs (NETWORK_FEATURES) for `arch`, whose parts sum to `plain_sum`."""
    parts = arch_parts(arch)
    values = {
        "sum": plain_sum,
        "params": sum(part.params() for part in parts) / 1e6,
        "activations": sum(part.activation_elements() for part in parts) / 1e6,
    }
    return [values[name] for name in names]


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
