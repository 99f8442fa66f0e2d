"""RunConfig: every setting of a search, validated once, stored with the study for resume checks."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, model_validator

from mbsearch.errors import BadInput
from mbsearch.train.budget import DEFAULT_PROXY, DEFAULT_VAL_SIZE, Budget
from mbsearch.urls import check_target_url

Sampler = Literal["tpe", "nsga2", "random"]
ObjectiveKind = Literal["pareto", "mnas"]
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")  # which of them this machine has: train/device.py
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Settings that decide what a trial's numbers mean (the seed fixes the validation split). A resumed
# study must keep them; the rest (trials, timeout, workers, sampler, storage) may change between runs.
IDENTITY_KEYS = (
    "space",
    "target",
    "runtime",
    "threads",
    "dataset",
    "input_size",
    "channels",
    "seed",
    "val_size",
    "epochs",
    "train_size",
    "batch_size",
    "lr",
    "objective",
    "latency_target",
    "mnas_w",
    "max_latency",
    "max_params",
    "rungs",
    "latency",
    "latency_input_size",
    "skip_bad_images",
    "evaluator",
    "precision",
    "inherited_val_size",
    "finetune_steps",
)
# --evaluator supernet scores on this many validation images by default: on the 20 v3 members of the
# fidelity panel, tau against the reference was 0.421 with the first 2,000 and 0.417 with all 10,000, at a
# third of the scoring time (2026-12-03, benchmarks/README.md, supernet section; one panel, a weak figure).
INHERITED_VAL_SIZE = 2000
# What a key meant in a study made before it existed (it stored no value for it).
LEGACY_DEFAULTS: dict[str, Any] = {"evaluator": "brief", "precision": "fp32", "finetune_steps": 0}


def check_study_name(name: str, what: str = "study name") -> str:
    """A study name becomes a folder under --runs-dir: never a path out of it, never a hidden trick.

    fullmatch, not match: `$` would accept a trailing newline."""
    if not _STUDY_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r}: use letters, digits, '.', '_' or '-' (at most 100, starting with a letter or digit)"
        )
    return name


class RunConfig(pydantic.BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    space: str = Field("v3", description="Shipped space (v1, v2, v3) or a path to a YAML file.")
    target: str = Field(
        "cpu", description="Where latency is measured: cpu, cuda, or http://HOST:PORT of 'mbsearch agent'."
    )
    # The agent's token: never stored with the study (not an identity key) and never shown in a repr.
    target_token: str | None = Field(
        default=None, repr=False, description="Token of the agent of an http:// target (or the env var)."
    )
    latency: Literal["measured", "predicted"] = Field(
        "measured", description="measured (on --target) or predicted (from --lut, no device)."
    )
    lut: Path | None = Field(None, description="Lookup table of 'mbsearch profile' (--latency predicted).")
    latency_input_size: Annotated[int, Field(ge=8, le=1024)] | None = Field(
        None, description="Time at this input size (the deployment resolution)."
    )
    confirm_on: str | None = Field(
        None, description="After the search, re-time the front on this target (cpu, cuda, http://...)."
    )
    runtime: str = Field("onnxruntime", description="onnxruntime (deployed model) or torch (eager).")
    threads: Annotated[int, Field(ge=1, le=256)] = Field(1, description="Threads for latency timing.")
    dataset: str = Field("fashion-mnist", description="fashion-mnist, cifar10 or folder.")
    data_dir: Path | None = Field(None, description="Dataset folder (fashion-mnist has a default).")
    # None (not given) rather than False, so that studies made before the flag existed resume unchanged
    skip_bad_images: bool | None = Field(
        None, description="--dataset folder: skip unreadable images (counted) instead of refusing the folder."
    )
    input_size: Annotated[int, Field(ge=8, le=1024)] | None = Field(
        None, description="Resize images to this size (default: native)."
    )
    # grey or RGB; 2 or 4 would silently become RGB
    channels: Literal[1, 3] | None = Field(None, description="Image channels for --dataset folder (1 or 3).")
    # The default proxy is the one benchmarks/fidelity.py chose: the cheapest budget with Kendall tau >= 0.7
    # against 1 epoch over 50,000 images, i.e. 1 epoch over 8,000 images (tau 0.73, where the old 4,000-image
    # proxy reached 0.55), scored on 10,000 validation images as in the benchmark. See benchmarks/README.md.
    val_size: Annotated[int, Field(ge=1)] = Field(
        DEFAULT_VAL_SIZE, description="Images held out of training for validation."
    )
    epochs: Annotated[float, Field(gt=0, le=1000)] = Field(
        DEFAULT_PROXY.epochs, description="Training epochs per candidate (0.5 allowed)."
    )
    train_size: Annotated[int, Field(ge=1)] = Field(
        DEFAULT_PROXY.train_size, description="Training images per candidate."
    )
    batch_size: Annotated[int, Field(ge=1, le=65536)] = Field(
        DEFAULT_PROXY.batch_size, description="Training batch size."
    )
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        DEFAULT_PROXY.lr, description="Peak learning rate (AdamW, one-cycle cosine)."
    )
    device: str = Field(
        "auto", description="Where candidates train: auto (a GPU when one is visible), cpu, cuda, cuda:N or mps."
    )
    train_threads: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None, description="Threads for training (default: cores / workers)."
    )
    sampler: Sampler = Field("tpe", description="tpe, nsga2 or random.")
    # numpy and torch seeds are 32-bit
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="Seed for the sampler, the split and training."
    )
    sampler_seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = Field(
        None, description="Seed for the sampler alone (default: --seed); repeats a search on the same split."
    )
    trials: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        30, description="Complete trials to reach in total (a rerun resumes)."
    )
    timeout: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Stop starting trials after this many seconds."
    )
    study: str | None = Field(None, description="Study name (default: SPACE-TARGET-DATASET).")
    storage: str | None = Field(None, description="Optuna storage URL (default: RUNS_DIR/STUDY/study.db).")
    runs_dir: Path = Field(Path("runs"), description="Folder for study outputs.")
    max_latency: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Constraint: latency at most this many ms."
    )
    max_params: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Constraint: at most this many parameters."
    )
    objective: ObjectiveKind = Field("pareto", description="pareto (two objectives) or mnas (ACC*(LAT/T)^w).")
    latency_target: Annotated[float, Field(gt=0)] | None = Field(None, description="T in ms for --objective mnas.")
    mnas_w: Annotated[float, Field(ge=-10, le=0, allow_inf_nan=False)] = Field(
        -0.07, description="w for --objective mnas."
    )
    workers: Annotated[int, Field(ge=1, le=256)] = Field(
        1, description="Local worker processes on this study (use PostgreSQL)."
    )
    heartbeat: Annotated[int, Field(ge=1, le=3600)] = Field(10, description="Seconds between a worker's heartbeats.")
    grace_period: Annotated[int, Field(ge=2, le=86400)] = Field(
        30, description="Seconds without heartbeat before a trial is failed."
    )
    max_retry: Annotated[int, Field(ge=0, le=100)] = Field(2, description="Retries of a trial whose worker died.")
    # multi-fidelity: budget multipliers such as "1,3,9" (rungs.py)
    evaluator: Literal["brief", "supernet"] = Field(
        "brief",
        description="How candidates are scored: brief (each trained briefly) or supernet (weights inherited from "
        "'mbsearch supernet train', BatchNorm recalibrated: seconds each).",
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="fp32, or int8: each trained candidate quantized (ONNX Runtime static, QDQ, per-channel), "
        "its int8 accuracy and int8 latency the objectives.",
    )
    supernet: Path | None = Field(
        None, description="--evaluator supernet: its folder (default: RUNS_DIR/supernets/SPACE-DATASET-SIZE)."
    )
    inherited_val_size: Annotated[int, Field(ge=100)] | None = Field(
        None,
        description="--evaluator supernet: score on the first N validation images (default 2,000: on the "
        "benchmark panel they ranked as all 10,000 did, at a third of the cost).",
    )
    finetune_steps: Annotated[int, Field(ge=0, le=100_000)] = Field(
        0,
        description="--evaluator supernet: train each inherited network this many steps (batch 64) before "
        "scoring it (0: inherited weights as they are).",
    )
    rungs: str | None = Field(
        None, description="Multi-fidelity: budget multipliers, e.g. 1,3,9 (train many briefly, promote the best)."
    )
    eta: Annotated[float, Field(ge=1.5, le=100, allow_inf_nan=False)] = Field(
        3.0, description="With --rungs: promote the top 1/eta of a rung by Pareto rank."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.objective == "mnas" and self.latency_target is None:
            raise ValueError("--objective mnas needs --latency-target MS (the T in ACC*(LAT/T)^w)")
        if self.study is not None:
            check_study_name(self.study, "--study")
        for url in (self.target, self.confirm_on):
            if url is not None and "://" in url:
                check_target_url(url)  # a password in the URL would reach the study name
        if self.evaluator == "supernet" and self.rungs is not None:
            raise ValueError("--rungs trains candidates at growing budgets; --evaluator supernet trains none")
        if self.precision == "int8":
            if self.runtime != "onnxruntime":
                raise ValueError("--precision int8 is ONNX Runtime's quantization: use --runtime onnxruntime")
            if self.latency_input_size is not None:
                raise ValueError(
                    "--precision int8 with --latency-input-size: the timed graph must be the scored one; "
                    "search at the deployment's --input-size instead"
                )
        if self.supernet is not None and self.evaluator != "supernet":
            raise ValueError("--supernet is the supernet of --evaluator supernet; add --evaluator supernet")
        if self.finetune_steps and self.evaluator != "supernet":
            raise ValueError("--finetune-steps trains inherited weights; add --evaluator supernet or drop the flag")
        if self.inherited_val_size is not None:
            if self.evaluator != "supernet":
                raise ValueError("--inherited-val-size is for --evaluator supernet; add it or drop the flag")
            if self.inherited_val_size > self.val_size:
                raise ValueError(f"--inherited-val-size {self.inherited_val_size} exceeds --val-size {self.val_size}")
        if self.rungs is not None:
            parse_rungs(self.rungs)  # raises ValueError with the flag's name
            if self.objective != "pareto":
                raise ValueError("--rungs promotes by Pareto rank: use it with --objective pareto")
        if (self.latency == "predicted") != (self.lut is not None):
            raise ValueError("--latency predicted and --lut FILE go together (the table from 'mbsearch profile')")
        if not _DEVICE.fullmatch(self.device.strip().lower()):
            raise ValueError(f"--device {self.device!r}: choose auto, cpu, cuda, cuda:N or mps")
        if self.grace_period <= self.heartbeat:
            raise ValueError("--grace-period must be longer than --heartbeat")
        return self

    @property
    def space_name(self) -> str:
        return Path(self.space).stem if self.space.endswith((".yaml", ".yml")) else self.space

    @property
    def target_label(self) -> str:
        """The target as a name part: cpu, cuda, predicted, or HOST-PORT of an agent."""
        if self.latency == "predicted":
            return "predicted"
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", self.target.split("://", 1)[-1]).strip("-.")
        return label or "target"

    @property
    def study_name(self) -> str:
        return self.study or f"{self.space_name}-{self.target_label}-{self.dataset}"

    @property
    def study_dir(self) -> Path:
        return self.runs_dir / self.study_name

    @property
    def budget(self) -> Budget:
        return Budget(epochs=self.epochs, train_size=self.train_size, batch_size=self.batch_size, lr=self.lr)

    @property
    def scoring_val_size(self) -> int | None:
        """Validation images an inherited score is taken on (None: a brief training scores on all of them)."""
        if self.evaluator != "supernet":
            return None
        return min(self.inherited_val_size or INHERITED_VAL_SIZE, self.val_size)

    def identity(self) -> dict:
        return self.model_dump(mode="json", include=set(IDENTITY_KEYS)) | {"inherited_val_size": self.scoring_val_size}


def stored_identity(stored: dict[str, Any], key: str) -> Any:
    """A stored setting, read as it was meant when the study was made (LEGACY_DEFAULTS for keys it predates)."""
    return stored.get(key, LEGACY_DEFAULTS.get(key))


def check_stored_settings(stored: Any, source: str) -> dict[str, Any]:
    """A study's stored settings, each checked against RunConfig's field (type and range): a study edited
    or forged outside mbsearch is refused with one line, never read into a crash."""
    if not isinstance(stored, dict):
        raise BadInput(f"{source}: its stored mbsearch settings are not a mapping; it was changed outside mbsearch")
    for key in IDENTITY_KEYS:
        if key not in stored and RunConfig.model_fields[key].is_required():
            raise BadInput(f"{source}: stored setting {key!r} is missing; it was changed outside mbsearch")
    for key, value in stored.items():
        field = RunConfig.model_fields.get(key)
        if field is None:
            continue  # a setting of another mbsearch version: not read
        try:
            kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            pydantic.TypeAdapter(kind).validate_python(value)
        except pydantic.ValidationError:
            raise BadInput(
                f"{source}: stored setting {key}={str(value)[:60]!r} is not a valid value; "
                "the study was changed outside mbsearch"
            ) from None
    return stored


def parse_rungs(text: str) -> tuple[float, ...]:
    """'1,3,9' -> (1.0, 3.0, 9.0): increasing multipliers of the base budget, starting at 1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--rungs {text!r}: give increasing budget multipliers such as 1,3,9") from None
    if values[0] != 1 or any(b <= a for a, b in itertools.pairwise(values)) or len(values) > 8:
        raise ValueError(f"--rungs {text!r}: start at 1 and increase, at most 8 rungs (e.g. 1,3,9)")
    if not all(math.isfinite(v) for v in values) or values[-1] > 1000:
        raise ValueError(f"--rungs {text!r}: multipliers up to 1000")
    return values
