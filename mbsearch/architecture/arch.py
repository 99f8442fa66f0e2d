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

from mbsearch.architecture.rules import has_shortcut
from mbsearch.errors import BadInput
from mbsearch.files import describe_validation_error, parse_json, read_text, write_atomic

# The format names keep the wing's old name (`spec`): they are stored in users' files, not module paths.
FORMAT = "mbsearch.spec.arch/1"
# /2 adds an explicit expansion width per inverted-residual block (`mid`), for widths that are not
# `in x expand` rounded, as NetAdapt-style per-layer pruning produces. A file is written as /2 only when a
# block uses it, so every arch that /1 can express stays a /1 file that older readers load.
FORMAT_V2 = "mbsearch.spec.arch/2"
# /3: `ds` is MobileNetV1's depthwise-separable layer, which never has a shortcut (V1 paper, timm's `dsa`).
# In /1 and /2 a `ds` had a shortcut at stride 1 with an unchanged width; such a block is read as `dsr`
# (the same layer with a shortcut), so an old file builds the network it always built. A file is written
# in the oldest version that means the same, so older readers still load what they can read correctly.
FORMAT_V3 = "mbsearch.spec.arch/3"
FORMATS = (FORMAT, FORMAT_V2, FORMAT_V3)
MAX_BLOCKS = 256
MAX_CHANNELS = 16384

Activation = Literal["relu", "relu6", "hswish"]
BlockType = Literal["ir", "ds"]  # what a space may choose
ArchBlockType = Literal["ir", "ds", "dsr"]  # what an arch may hold: `dsr` only to read /1 and /2 files
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
    """One block: `ir` (inverted residual), `ds` (MobileNetV1's depthwise-separable layer, no shortcut) or
    `dsr` (that layer with a shortcut, as `ds` was built before format /3)."""

    type: ArchBlockType
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
        if info.data.get("type") in ("ds", "dsr") and expand != 1:
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

    # No `format` field: an Arch in memory has today's meaning; the version is read by from_dict (which
    # converts older meanings) and chosen by to_dict (written_format).
    name: str = ""
    input: InputSpec
    num_classes: Annotated[int, Field(ge=2, le=100_000, strict=True)]
    stem: Stem
    blocks: Annotated[tuple[Block, ...], Field(min_length=1, max_length=MAX_BLOCKS)]
    head: Head
    provenance: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.written_format()} | self.model_dump(mode="json", exclude_none=True)

    def written_format(self) -> str:
        """The oldest format that means this network: /3 where a `ds` sits where /1 would give it a shortcut
        (or a `dsr` is used), /2 for explicit expansion widths, else /1."""
        in_chs = self.stem.out
        for block in self.blocks:
            if block.type == "dsr" or (block.type == "ds" and has_shortcut("dsr", block.stride, in_chs, block.out)):
                return FORMAT_V3
            in_chs = block.out
        return FORMAT_V2 if any(block.mid is not None for block in self.blocks) else FORMAT

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def key(self) -> str:
        """What decides the network, without name, provenance or metrics: for caches and dedup."""
        # exclude_none: a block without an explicit `mid` keys as it did before format /2 existed
        core = self.model_dump(
            mode="json", include={"input", "num_classes", "stem", "blocks", "head"}, exclude_none=True
        )
        if self.written_format() == FORMAT_V3:
            # a /3 `ds` without the shortcut /1 gave it at this shape: never the key of the old network
            core["format"] = FORMAT_V3
        return json.dumps(core, sort_keys=True, separators=(",", ":"))

    def at_resolution(self, size: int | None) -> Arch:
        """The same network at another input size (the size it is timed or deployed at); None keeps it."""
        if size is None or size == self.input.size:
            return self
        return self.model_copy(update={"input": InputSpec(channels=self.input.channels, size=size)})

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
            arch = cls.model_validate({key: value for key, value in data.items() if key != "format"})
        except pydantic.ValidationError as exc:
            raise BadInput(describe_validation_error(exc, source)) from None
        explicit = [index for index, block in enumerate(arch.blocks) if block.mid is not None]
        version = data.get("format", FORMAT)
        if explicit and version == FORMAT:
            raise BadInput(
                f'{source}: blocks.{explicit[0]}.mid: an explicit expansion width needs "format": "{FORMAT_V2}"'
            )
        return _as_built(arch, version, source)

    @classmethod
    def from_json(cls, text: str, source: str = "arch") -> Arch:
        return cls.from_dict(parse_json(text, source), source)


def _as_built(arch: Arch, version: str, source: str) -> Arch:
    """An arch in today's meaning: a /1 or /2 `ds` that had a shortcut becomes `dsr`; a `dsr` is checked."""
    blocks, in_chs = list(arch.blocks), arch.stem.out
    for index, block in enumerate(blocks):
        could_skip = has_shortcut("dsr", block.stride, in_chs, block.out)
        if block.type == "dsr" and version != FORMAT_V3:
            raise BadInput(f'{source}: blocks.{index}.type: dsr needs "format": "{FORMAT_V3}"')
        if block.type == "dsr" and not could_skip:
            raise BadInput(
                f"{source}: blocks.{index}: dsr is a ds layer with a shortcut, which needs stride 1 and "
                f"unchanged width ({in_chs}->{block.out}); write ds"
            )
        if block.type == "ds" and could_skip and version != FORMAT_V3:
            blocks[index] = block.model_copy(update={"type": "dsr"})
        in_chs = block.out
    return arch.model_copy(update={"blocks": tuple(blocks)})


def load_arch(path: str | Path) -> Arch:
    """Read and validate an arch JSON file."""
    path = Path(path)
    return Arch.from_json(read_text(path, "arch"), str(path))


def write_arch(arch: Arch, path: Path) -> None:
    """Write an arch as JSON, atomically (a reader never sees half a file)."""
    write_atomic(path, arch.to_json())
