"""Networks trimmed by `mbsearch adapt`, placed beside the front of the study their source trial came from.

An adapted point is not a search trial: its accuracy is after NetAdapt's fine-tunes (not the search's proxy
budget) and its latency was measured by `adapt`. The report therefore draws it apart, linked to the trial it
came from, and says on which device it was timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import pydantic
from pydantic import ConfigDict, Field

from mbsearch.architecture.arch import load_arch
from mbsearch.errors import BadInput
from mbsearch.files import describe_validation_error
from mbsearch.results.finished import FinishedStudy
from mbsearch.study import records

ADAPTED_FILE = "adapted.json"  # what `mbsearch adapt` writes in its output folder

_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Accuracy = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Source(pydantic.BaseModel):
    model_config = ConfigDict(extra="allow")

    study: str | None = None
    trial: Annotated[int, Field(ge=0, strict=True)] | None = None


class _Provenance(pydantic.BaseModel):
    """What `adapt` writes as provenance (other keys are informative)."""

    model_config = ConfigDict(extra="allow")

    adapted_from: str
    latency_target_ms: _Positive
    source_provenance: _Source | None = None
    iterations: Annotated[int, Field(ge=0, strict=True)] = 0
    device: str | None = None


class _Metrics(pydantic.BaseModel):
    model_config = ConfigDict(extra="allow")

    latency_ms: _Positive
    val_accuracy: _Accuracy
    start_latency_ms: _Positive
    start_val_accuracy: _Accuracy
    params: Annotated[int, Field(gt=0, strict=True)]


class _AdaptedInfo(pydantic.BaseModel):
    provenance: _Provenance
    metrics: _Metrics


def adapted_frame(paths: list[Path], finished: FinishedStudy) -> pd.DataFrame | None:
    """One row per adapted network, with the trial it came from; BadInput (one line) for a file that is not
    an `adapt` output of a trial of this study."""
    if not paths:
        return None
    study = finished.study.study_name
    trials = finished.frame.set_index("number")
    device = records.device(finished.study).get("fingerprint")
    rows = []
    for given in paths:
        path = given / ADAPTED_FILE if given.is_dir() else given
        if not path.is_file():
            raise BadInput(f"--adapted {given}: no such file; pass the {ADAPTED_FILE} (or its folder) 'adapt' wrote")
        arch = load_arch(path)
        if "adapted_from" not in (arch.provenance or {}):
            raise BadInput(f"--adapted {path}: not an 'mbsearch adapt' output (no adaptation provenance)")
        try:  # every field is checked before it is used: the file may have been edited or forged
            info = _AdaptedInfo.model_validate({"provenance": arch.provenance, "metrics": arch.metrics or {}})
            provenance, metrics = info.provenance, info.metrics
        except pydantic.ValidationError as exc:
            raise BadInput("--adapted " + describe_validation_error(exc, str(path))) from None
        source = provenance.source_provenance or _Source()
        if source.study != study or source.trial not in trials.index:
            came_from = f"study {source.study!r}" if source.study else "no study (not an exported trial)"
            raise BadInput(
                f"--adapted {path}: adapted from {came_from}, not from a trial of {study!r}; "
                "report it with the study it came from"
            )
        number = int(source.trial)
        rows.append(
            {
                "name": arch.name,
                "path": str(path),
                "source_trial": number,
                "source_latency_ms": float(trials.loc[number, "latency_ms"]),
                "source_val_accuracy": float(trials.loc[number, "val_accuracy"]),
                "start_latency_ms": metrics.start_latency_ms,
                "start_val_accuracy": metrics.start_val_accuracy,
                "latency_ms": metrics.latency_ms,
                "val_accuracy": metrics.val_accuracy,
                "params": metrics.params,
                "iterations": provenance.iterations,
                "goal_ms": provenance.latency_target_ms,
                "met": metrics.latency_ms <= provenance.latency_target_ms,
                "same_device": device is not None and provenance.device == device,
            }
        )
    return pd.DataFrame(rows)
