"""The architecture format: plain, validated, versioned data that round-trips through JSON.

An `Arch` says exactly what is built: every block is explicit, with no hidden defaults. Blocks also
encode to timm's block strings (blockstrings.py) for logs, plots and timm users.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, field_serializer, field_validator

from mbsearch.errors import BadInput
from mbsearch.files import describe_validation_error, parse_json, read_text

FORMAT = "mbsearch.arch/1"
# /2 adds an explicit expansion width per inverted-residual block (`mid`), for widths that are not
# `in x expand` rounded, as NetAdapt-style per-layer pruning produces. A file is written as /2 only when a
# block uses it, so every arch that /1 can express stays a /1 file that older readers load.
FORMAT_V2 = "mbsearch.arch/2"
FORMATS = (FORMAT, FORMAT_V2)
MAX_BLOCKS = 256
MAX_CHANNELS = 16384

Activation = Literal["relu", "relu6", "hswish"]
BlockType = Literal["ir", "ds"]
Channels = Annotated[int, Field(gt=0, le=MAX_CHANNELS, strict=True)]
Stride = Literal[1, 2]


def _check_kernel(kernel: int) -> int:
    if kernel < 1 or kernel % 2 == 0 or kernel > 15:
        raise ValueError(f"kernel must be odd, from 1 to 15 (e.g. 3, 5, 7), got {kernel}")
    return kernel


def _plain_number(value: float) -> float | int:
    """Write 4.0 as 4 so that files stay as people write them."""
    return int(value) if float(value).is_integer() else value


class _Data(pydantic.BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Data):
    """The image the network takes: channels and square size."""

    channels: Annotated[int, Field(ge=1, le=16, strict=True)]
    size: Annotated[int, Field(ge=8, le=1024, strict=True)]


class Stem(_Data):
    """The first full convolution."""

    out: Channels
    kernel: Annotated[int, Field(strict=True)]
    stride: Stride
    act: Activation

    _kernel = field_validator("kernel")(_check_kernel)


class Block(_Data):
    """One block: `ir` (inverted residual) or `ds` (depthwise-separable)."""

    type: BlockType
    kernel: Annotated[int, Field(strict=True)]
    stride: Stride
    expand: Annotated[float, Field(ge=1, le=16, strict=True)]
    out: Channels
    se: Annotated[float, Field(ge=0, lt=1, strict=True)]
    act: Activation
    mid: Annotated[int, Field(gt=0, le=MAX_CHANNELS, strict=True)] | None = None  # explicit expansion width (/2)

    _kernel = field_validator("kernel")(_check_kernel)

    @field_validator("mid")
    @classmethod
    def _mid_needs_an_expansion_layer(cls, mid: int | None, info: pydantic.ValidationInfo) -> int | None:
        if mid is not None and (info.data.get("type") != "ir" or info.data.get("expand") == 1):
            raise ValueError("mid (an explicit expansion width) applies to ir blocks with expand > 1 only")
        return mid

    @field_validator("expand")
    @classmethod
    def _ds_has_no_expansion(cls, expand: float, info: pydantic.ValidationInfo) -> float:
        if info.data.get("type") == "ds" and expand != 1:
            raise ValueError(f"a ds block has no expansion layer: expand must be 1, got {expand}")
        return expand

    @field_serializer("expand", "se")
    def _numbers(self, value: float) -> float | int:
        return _plain_number(value)


class Head(_Data):
    """1x1 conv, global pool, optional hidden linear layer, classifier."""

    conv: Channels
    hidden: Annotated[int, Field(ge=0, le=MAX_CHANNELS, strict=True)]
    act: Activation
    dropout: Annotated[float, Field(ge=0, lt=1, strict=True)]

    @field_serializer("dropout")
    def _numbers(self, value: float) -> float | int:
        return _plain_number(value)


class Arch(_Data):
    """A whole network as data. `provenance` and `metrics` are informative and not used to build."""

    format: Literal["mbsearch.arch/1", "mbsearch.arch/2"] = FORMAT
    name: str = ""
    input: InputSpec
    num_classes: Annotated[int, Field(ge=2, le=100_000, strict=True)]
    stem: Stem
    blocks: Annotated[tuple[Block, ...], Field(min_length=1, max_length=MAX_BLOCKS)]
    head: Head
    provenance: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        data["format"] = FORMAT_V2 if any(block.mid is not None for block in self.blocks) else FORMAT
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def key(self) -> str:
        """What decides the network, without name, provenance or metrics: for caches and dedup."""
        # exclude_none: a block without an explicit `mid` keys as it did before format /2 existed
        core = self.model_dump(
            mode="json", include={"input", "num_classes", "stem", "blocks", "head"}, exclude_none=True
        )
        return json.dumps(core, sort_keys=True, separators=(",", ":"))

    def with_info(self, **changes: Any) -> Arch:
        """A copy with new name/provenance/metrics (the structure is never changed this way)."""
        allowed = {"name", "provenance", "metrics"}
        if not set(changes) <= allowed:
            raise ValueError(f"with_info only changes {sorted(allowed)}")
        return self.model_copy(update=changes)

    @classmethod
    def from_dict(cls, data: Any, source: str = "arch") -> Arch:
        if not isinstance(data, dict):
            raise BadInput(f"{source}: an arch must be a JSON object, got {type(data).__name__}")
        if "format" in data and data["format"] not in FORMATS:
            raise BadInput(
                f"{source}: format: unsupported version {data['format']!r}, expected one of {', '.join(FORMATS)}"
            )
        blocks = data.get("blocks")
        if isinstance(blocks, list) and len(blocks) > MAX_BLOCKS:
            raise BadInput(f"{source}: blocks: {len(blocks)} blocks, over the limit of {MAX_BLOCKS}")
        try:
            arch = cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise BadInput(describe_validation_error(exc, source)) from None
        explicit = [index for index, block in enumerate(arch.blocks) if block.mid is not None]
        if explicit and data.get("format", FORMAT) == FORMAT:
            raise BadInput(
                f'{source}: blocks.{explicit[0]}.mid: an explicit expansion width needs "format": "{FORMAT_V2}"'
            )
        return arch

    @classmethod
    def from_json(cls, text: str, source: str = "arch") -> Arch:
        return cls.from_dict(parse_json(text, source), source)


def load_arch(path: str | Path) -> Arch:
    """Read and validate an arch JSON file."""
    path = Path(path)
    return Arch.from_json(read_text(path, "arch"), str(path))
