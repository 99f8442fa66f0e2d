"""SearchSpace + optuna.Trial -> Arch. The only place that calls trial.suggest_*.

Parameters have flat, stable names (`s3_kernel`, `s3_depth`, ...) so that dashboards and importance
plots read well. Every stage samples every parameter, even where a ds block ignores `expand`: a fixed
parameter set suits every Optuna sampler (NSGA-II included) and keeps the importance plots complete.
"""

from __future__ import annotations

from typing import Any

import optuna

from mbsearch.arch import Arch, Block, InputSpec
from mbsearch.rules import adapt_strides, scale_channels
from mbsearch.space import CHOICE_KEYS, SearchSpace


def stage_params(trial: optuna.trial.BaseTrial, space: SearchSpace) -> tuple[float, list[dict[str, Any]]]:
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
    decisions: list[dict[str, Any]],
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
