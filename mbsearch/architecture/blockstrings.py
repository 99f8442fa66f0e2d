"""Block strings in timm's grammar, with timm's meaning: `ds_r1_k3_s1_c16_nre`, `ir_r1_k5_s2_e3_c40_se0.25_nhs`.

A string is what timm's `decode_arch_def` builds, so a printed string is never a different network.
How mbsearch's blocks map onto timm's (timm 1.0, `_efficientnet_blocks.py`):

- our `ir` at expand 1 (no expansion conv) is timm's `ds`: depthwise + act, [SE], linear 1x1 projection,
  skip when shapes match. timm's `ir` always builds the expansion conv, even at `e1`.
- our `ir` at expand > 1 is timm's `ir`.
- our `ds` (MobileNetV1's layer: the pointwise conv has an activation, no shortcut) is timm's `dsa`.
- our `dsr` (that layer with a shortcut: how `ds` was built before arch format /3) has no timm block:
  we write it `dsr` (mbsearch only; timm refuses the type loudly rather than building something else),
  and `timm_arch_def` says it cannot be written.
- SE squeeze width: timm's MobileNetV3 (se_from_exp=True) with `rd_round_fn=round_channels` computes it
  from the channels SE sees, as we do; the rare ratio where the two roundings differ is refused.

A block's shortcut depends on its input width, so strings are made and read with the input width.
"""

from __future__ import annotations

import re
from typing import Any

from mbsearch.architecture.arch import Arch, Block
from mbsearch.architecture.rules import has_shortcut, make_divisible, mid_channels, se_channels
from mbsearch.errors import BadInput

_ACT_CODES = {"relu": "re", "relu6": "r6", "hswish": "hs"}
_CODE_ACTS = {code: act for act, code in _ACT_CODES.items()}
_NUMBER_TOKEN = re.compile(r"^(se|[rksec])(\d.*)$")

# How to build our blocks in timm (arguments of timm.models.mobilenetv3.MobileNetV3 beside block_args).
TIMM_KWARGS_HELP = (
    "se_layer=partial(SqueezeExcite, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU, "
    "rd_round_fn=round_channels), round_chs_fn=int"
)


class NotExpressible(BadInput):
    """The block has no equivalent in timm's grammar."""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def has_skip(block: Block, in_chs: int) -> bool:
    """Whether the block has a shortcut (rules.has_shortcut, the rule the builder plans with)."""
    return has_shortcut(block.type, block.stride, in_chs, block.out)


def block_string(block: Block, in_chs: int) -> str:
    """The block in timm's grammar (`dsr` for the one block timm has no form of)."""
    if block.type in ("ds", "dsr"):
        head = "dsa" if block.type == "ds" else "dsr"
    elif block.expand == 1:
        head = "ds"
    else:
        head = "ir"
    parts = [head, "r1", f"k{block.kernel}", f"s{block.stride}"]
    if head == "ir":
        parts.append(f"e{_number(_ratio(block, in_chs))}")
    parts.append(f"c{block.out}")
    if block.se:
        parts.append(f"se{_number(block.se)}")
    parts.append(f"n{_ACT_CODES[block.act]}")
    return "_".join(parts)


def _ratio(block: Block, in_chs: int) -> float:
    """The expansion ratio timm reads: the block's own, or for an explicit width (format /2) the ratio whose
    rounding gives it back (checked by _check_timm)."""
    return block.expand if block.mid is None else round(block.mid / in_chs, 4)


def block_strings(arch: Arch) -> list[str]:
    """Every block's string, for logs, plots and `show`."""
    strings, in_chs = [], arch.stem.out
    for block in arch.blocks:
        strings.append(block_string(block, in_chs))
        in_chs = block.out
    return strings


def _check_timm(block: Block, in_chs: int, index: int) -> None:
    if block.type == "dsr":
        raise NotExpressible(
            f"block {index} (dsr: a ds layer with a shortcut, from an arch file older than format /3) has no "
            "timm equivalent: timm's dsa never has a shortcut and its ds has no pointwise activation"
        )
    if block.mid is not None and make_divisible(in_chs * _ratio(block, in_chs)) != block.mid:
        raise NotExpressible(
            f"block {index}: explicit expansion width {block.mid} on {in_chs} input channels is not timm's "
            "rounding of any ratio (timm rounds expanded widths to multiples of 8)"
        )
    if block.se:
        seen = in_chs if block.type in ("ds", "dsr") else (block.mid or mid_channels(in_chs, block.expand))
        if make_divisible(seen * block.se) != se_channels(seen, block.se):
            raise NotExpressible(
                f"block {index}: SE ratio {_number(block.se)} on {seen} channels rounds differently in timm"
            )


def timm_arch_def(arch: Arch) -> list[list[str]]:
    """timm's arch_def: strings grouped into stages (a stage starts at a stride or a width change).

    Raises NotExpressible, naming the block, where timm cannot build one of the blocks exactly.
    """
    stages: list[list[str]] = []
    in_chs = arch.stem.out
    for index, block in enumerate(arch.blocks):
        _check_timm(block, in_chs, index)
        if not stages or block.stride == 2 or block.out != in_chs:
            stages.append([])
        stages[-1].append(block_string(block, in_chs))
        in_chs = block.out
    return stages


def _tokens(text: str) -> tuple[str, dict[str, Any], set[str]]:
    head, *tokens = text.strip().split("_")
    numbers: dict[str, Any] = {}
    flags: set[str] = set()
    for token in tokens:
        if token in ("skip", "noskip"):
            flags.add(token)
        elif token.startswith("n") and token[1:] in _CODE_ACTS:
            numbers["n"] = _CODE_ACTS[token[1:]]
        elif match := _NUMBER_TOKEN.match(token):
            key, value = match.groups()
            try:
                numbers[key] = float(value) if key in ("e", "se") else int(value)
            except ValueError:
                raise BadInput(f"block string {text!r}: bad value in token {token!r}") from None
        else:
            raise BadInput(f"block string {text!r}: cannot read token {token!r} (mbsearch reads k s e c se n r noskip)")
    return head, numbers, flags


def parse_block_string(text: str, in_chs: int) -> Block:
    """Read a timm block string with timm's meaning, for a block whose input has `in_chs` channels."""
    head, numbers, flags = _tokens(text)
    if head not in ("ds", "dsa", "dsr", "ir"):
        raise BadInput(f"block string {text!r}: type must be ds, dsa or ir (timm) or dsr (mbsearch), got {head!r}")
    for key, what in (("k", "kernel"), ("s", "stride"), ("c", "output channels"), ("n", "activation")):
        if key not in numbers:
            raise BadInput(f"block string {text!r}: missing {what} ({key}...); timm's own default is not ours")
    if numbers.get("r", 1) != 1:
        raise BadInput(f"block string {text!r}: only r1 is supported; repeat the block explicitly")
    expand = numbers.get("e", 1.0) if head == "ir" else 1.0
    if head == "ir" and expand == 1:
        raise NotExpressible(
            f"block string {text!r}: timm's ir at e1 keeps a 1x1 expansion conv, which mbsearch does not build; "
            "write it as ds"
        )
    fields = {
        "type": {"dsa": "ds", "dsr": "dsr"}.get(head, "ir"),
        "kernel": numbers["k"],
        "stride": numbers["s"],
        "expand": expand,
        "out": numbers["c"],
        "se": numbers.get("se", 0.0),
        "act": numbers["n"],
    }
    try:
        block = Block(**fields)
    except ValueError as exc:
        raise BadInput(f"block string {text!r}: {str(exc).splitlines()[-1].strip()}") from None
    skip = has_skip(block, in_chs)
    if skip and "noskip" in flags:
        raise NotExpressible(
            f"block string {text!r}: no shortcut at stride 1 with {in_chs}->{block.out} channels, which "
            "mbsearch's inverted residuals always have"
        )
    if head == "dsr" and not skip:
        raise BadInput(f"block string {text!r}: dsr is a ds block with a shortcut; at this shape write dsa")
    return block


def parse_block_strings(strings: list[str], in_chs: int) -> tuple[Block, ...]:
    """A chain of block strings, starting from `in_chs` channels (the stem's output)."""
    blocks = []
    for text in strings:
        blocks.append(parse_block_string(text, in_chs))
        in_chs = blocks[-1].out
    return tuple(blocks)
