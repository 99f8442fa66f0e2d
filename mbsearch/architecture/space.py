"""Search spaces: declarative YAML files in spaces/, validated on load.

A space is a MnasNet-style factorized hierarchical space: a fixed macro skeleton of stages (output
channels, stride), and per stage one choice of block type, kernel, expansion, SE, activation and depth,
plus one global width multiplier.
The blocks of a stage share the stage's choices; the first block of a stage carries its stride.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import ConfigDict, Field, field_validator

from mbsearch.architecture.arch import Activation, BlockType, Channels, Head, Stem, Stride, _check_kernel
from mbsearch.errors import BadInput
from mbsearch.files import describe_validation_error, parse_yaml, read_text

# Shipped spaces are package data (mbsearch/spaces/*.yaml), so a wheel install finds them too;
# the repository's top-level spaces/ is a link to the same folder.
SPACES_DIR = Path(str(resources.files("mbsearch") / "spaces"))
CHOICE_KEYS = ("block", "kernel", "expand", "se", "act", "depth")
MAX_STAGES = 16


def _choices(item: Any) -> Any:
    """A non-empty list of options, read as a tuple."""
    return Annotated[tuple[item, ...], Field(min_length=1, max_length=16)]


def _odd_kernels(kernels: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if kernels is None else tuple(_check_kernel(k) for k in kernels)


def _no_repeats(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"choices must not repeat, got {list(values)}")
    return values


class _Spec(pydantic.BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Choices(_Spec):
    """The options for one stage. Every list needs at least one value."""

    block: _choices(BlockType)
    kernel: _choices(Annotated[int, Field(strict=True)])
    expand: _choices(Annotated[float, Field(ge=1, le=16)])
    se: _choices(Annotated[float, Field(ge=0, lt=1)])
    act: _choices(Activation)
    depth: _choices(Annotated[int, Field(ge=1, le=16, strict=True)])

    _kernels = field_validator("kernel")(_odd_kernels)
    _unique = field_validator(*CHOICE_KEYS)(_no_repeats)


class StageOverrides(_Spec):
    """A stage: its skeleton (out, stride) and optional choice lists that replace the defaults."""

    out: Channels
    stride: Stride
    block: _choices(BlockType) | None = None
    kernel: _choices(Annotated[int, Field(strict=True)]) | None = None
    expand: _choices(Annotated[float, Field(ge=1, le=16)]) | None = None
    se: _choices(Annotated[float, Field(ge=0, lt=1)]) | None = None
    act: _choices(Activation) | None = None
    depth: _choices(Annotated[int, Field(ge=1, le=16, strict=True)]) | None = None

    _kernels = field_validator("kernel")(_odd_kernels)
    _unique = field_validator(*CHOICE_KEYS)(_no_repeats)


class SearchSpace(_Spec):
    """A validated space. Use `load_space(name_or_path)`."""

    name: str
    description: str = ""
    stem: Stem
    stages: Annotated[tuple[StageOverrides, ...], Field(min_length=1, max_length=MAX_STAGES)]
    choices: Choices
    head: Head
    # MobileNet's width multiplier α: one global choice that scales every channel count (stem, stages,
    # head) with torchvision's rounding. It spans the latency range the way the papers' α does.
    width: _choices(Annotated[float, Field(gt=0, le=4, strict=True)]) = (1.0,)

    _unique_width = field_validator("width")(_no_repeats)

    def stage_choices(self, index: int) -> Choices:
        """The choices of stage `index` (0-based): the defaults with the stage's overrides."""
        stage = self.stages[index]
        overrides = {key: getattr(stage, key) for key in CHOICE_KEYS if getattr(stage, key) is not None}
        choices = self.choices.model_copy(update=overrides)
        # Re-validate so that a stage override obeys the same rules as the defaults.
        return Choices.model_validate(choices.model_dump())

    def size(self) -> int:
        """Number of distinct architectures (a ds block ignores the expansion choice)."""
        total = 1
        for index in range(len(self.stages)):
            c = self.stage_choices(index)
            per_layer = 0
            for block in c.block:
                expansions = 1 if block == "ds" else len(c.expand)
                per_layer += len(c.kernel) * expansions * len(c.se) * len(c.act)
            total *= per_layer * len(c.depth)
        return total * len(self.width)


def list_spaces() -> list[str]:
    """Names of the spaces shipped in spaces/."""
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A shipped name (`v3`) or a path to the user's own YAML file."""
    text = str(name_or_path)
    if text in list_spaces():
        return SPACES_DIR / f"{text}.yaml"
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise BadInput(f"unknown space {text!r}: use one of {', '.join(list_spaces())} or a path to a .yaml file")


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a space; errors are one line naming the file, the key and what is allowed."""
    path = resolve_space_path(name_or_path)
    data = parse_yaml(read_text(path, "space"), str(path))
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a space file must be a YAML mapping with stem, stages, choices and head")
    data.setdefault("name", path.stem)
    try:
        space = SearchSpace.model_validate(data)
        for index in range(len(space.stages)):
            space.stage_choices(index)
    except pydantic.ValidationError as exc:
        raise BadInput(describe_validation_error(exc, str(path))) from None
    return space
