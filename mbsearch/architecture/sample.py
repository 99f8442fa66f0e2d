"""SearchSpace + optuna.Trial -> Arch. The only place that calls trial.suggest_*.

Parameters have flat, stable names (`s3_kernel`, `s3_depth`, ...) so that dashboards and importance
plots read well. Every stage samples every parameter, even where a ds block ignores `expand`: a fixed
parameter set suits every Optuna sampler (NSGA-II included) and keeps the importance plots complete.
"""

from __future__ import annotations

from typing import Any

import optuna
import pydantic

from mbsearch.architecture.arch import Arch, Block, InputSpec
from mbsearch.architecture.plan import MAX_PARAMS, estimate_params
from mbsearch.architecture.rules import adapt_strides, scale_channels
from mbsearch.architecture.space import CHOICE_KEYS, SearchSpace
from mbsearch.errors import BadInput
from mbsearch.files import describe_validation_error

Decisions = list[dict[str, Any]]  # one dict of choices per stage: {"block": "ir", "kernel": 5, ...}


def stage_params(trial: optuna.trial.BaseTrial, space: SearchSpace) -> tuple[float, Decisions]:
    """The width multiplier and one dict of decisions per stage, e.g. {"block": "ir", "kernel": 5, ...}."""
    width = trial.suggest_categorical("width", space.width)
    decisions = []
    for index in range(len(space.stages)):
        choices = space.stage_choices(index)
        decisions.append(
            {key: trial.suggest_categorical(f"s{index + 1}_{key}", getattr(choices, key)) for key in CHOICE_KEYS}
        )
    return width, decisions


def arch_from_decisions(
    space: SearchSpace,
    width: float,
    decisions: Decisions,
    input_size: int,
    channels: int,
    num_classes: int,
) -> Arch:
    """Lay out the blocks: each stage repeats its block `depth` times; the first carries the stride.
    Every channel count is scaled by the width multiplier."""
    strides = adapt_strides([space.stem.stride] + [stage.stride for stage in space.stages], input_size)
    blocks = []
    for stage, stride, decision in zip(space.stages, strides[1:], decisions, strict=True):
        for layer in range(decision["depth"]):
            blocks.append(
                Block(
                    type=decision["block"],
                    kernel=decision["kernel"],
                    stride=stride if layer == 0 else 1,
                    expand=decision["expand"] if decision["block"] == "ir" else 1,
                    out=scale_channels(stage.out, width),
                    se=decision["se"],
                    act=decision["act"],
                )
            )
    return Arch(
        name=space.name,
        input=InputSpec(channels=channels, size=input_size),
        num_classes=num_classes,
        stem=space.stem.model_copy(update={"stride": strides[0], "out": scale_channels(space.stem.out, width)}),
        blocks=tuple(blocks),
        head=space.head.model_copy(
            update={
                "conv": scale_channels(space.head.conv, width),
                "hidden": scale_channels(space.head.hidden, width) if space.head.hidden else 0,
            }
        ),
    )


def check_space_fits(
    space: SearchSpace, input_size: int, channels: int, num_classes: int, what: str = "the dataset"
) -> None:
    """Refuse, before a study exists, a space or input whose architectures the arch format cannot hold: the
    widest and deepest choice of every stage is laid out at this input and validated."""

    if not 8 <= input_size <= 1024:
        raise BadInput(
            f"{what} has {input_size}x{input_size} images; mbsearch lays out networks for 8 to 1024 pixels: "
            "pass --input-size (e.g. 32 or 224)"
        )
    widest = max(space.width)
    decisions = []
    for index in range(len(space.stages)):
        choices = space.stage_choices(index)
        decisions.append(
            {
                "block": "ir" if "ir" in choices.block else choices.block[0],
                "kernel": max(choices.kernel),
                "expand": max(choices.expand),
                "se": max(choices.se),
                "act": choices.act[0],
                "depth": max(choices.depth),
            }
        )
    try:
        largest = arch_from_decisions(space, widest, decisions, input_size, channels, num_classes)
    except pydantic.ValidationError as exc:
        raise BadInput(
            describe_validation_error(exc, f"space {space.name} at {channels}x{input_size}x{input_size}")
            + "; narrow the space or its width choices"
        ) from None
    if estimate_params(largest) > MAX_PARAMS:
        raise BadInput(
            f"space {space.name}: its largest network has about {estimate_params(largest):,} parameters, over the "
            f"{MAX_PARAMS:,} mbsearch builds; narrow the space"
        )


def sample_arch(
    trial: optuna.trial.BaseTrial, space: SearchSpace, input_size: int = 28, channels: int = 1, num_classes: int = 10
) -> Arch:
    """Sample an architecture from the space through the trial's suggest API."""
    width, decisions = stage_params(trial, space)
    return arch_from_decisions(space, width, decisions, input_size, channels, num_classes)


def random_arch(space: SearchSpace, seed: int, input_size: int = 28, channels: int = 1, num_classes: int = 10) -> Arch:
    """A reproducible random architecture, without a stored study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return sample_arch(trial, space, input_size, channels, num_classes)
