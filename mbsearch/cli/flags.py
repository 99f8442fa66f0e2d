"""Flags several commands share (their types, limits and help written once), and the checks of their values."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer

from mbsearch.errors import BadInput

InputSize = Annotated[int, typer.Option(min=8, max=1024, help="Input image size (square).")]


Channels = Annotated[int, typer.Option(min=1, max=16, help="Input image channels.")]


Classes = Annotated[int, typer.Option(min=2, max=100_000, help="Number of classes.")]


TargetToken = Annotated[
    str | None,
    typer.Option(envvar="MBSEARCH_TARGET_TOKEN", help="Token of the agent of an http:// target (or the env var)."),
]


AdaptArch = Annotated[Path, typer.Argument(help="Arch JSON file (e.g. from 'mbsearch export').")]


TrainDevice = Annotated[
    str, typer.Option(help="Where to train: auto (a GPU when one is visible), cpu, cuda, cuda:N or mps.")
]


class PrecisionChoice(StrEnum):
    fp32 = "fp32"
    int8 = "int8"


class AgentPrecision(StrEnum):
    any = "any"
    fp32 = "fp32"
    int8 = "int8"


Precision = Annotated[
    PrecisionChoice,
    typer.Option(help="fp32, or int8: ONNX Runtime static quantization (QDQ, per-channel), as --precision of run."),
]


LatencyInputSize = Annotated[
    int | None, typer.Option(min=8, max=1024, help="Time at this input size (the deployment resolution).")
]


def config_from(model: type[pydantic.BaseModel], **flags: Any) -> Any:
    """Validate a command's flags as one settings model; a bad value is named by its flag."""
    try:
        return model(**flags)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across flags: its message names them
            raise BadInput(message) from None
        raise BadInput(f"--{str(error['loc'][0]).replace('_', '-')}: {message}") from None


# From the environment too, so that a cluster's worker command (docs/cluster.md) need not carry the password.
Storage = Annotated[
    str | None,
    typer.Option(
        envvar="MBSEARCH_STORAGE", help="Optuna storage URL (or the env var; default: RUNS_DIR/STUDY/study.db)."
    ),
]


def study_name(name: str) -> str:
    from mbsearch.study.config import check_study_name

    try:
        return check_study_name(name)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


StudyName = Annotated[
    str, typer.Argument(help="Study name (as given to or derived by 'mbsearch run').", callback=study_name)
]


RunsDir = Annotated[Path, typer.Option(help="Folder of study outputs.")]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
