"""Reference MobileNets (V2, V3-Large, V3-Small) at widths 0.5/0.75/1.0, as Arch data.

Channel rounding follows torchvision exactly, so at 224x224x3 with 1000 classes the parameter counts
equal torchvision's: mobilenet_v2 3,504,872; mobilenet_v3_large 5,483,032; mobilenet_v3_small 2,542,856.
"""

from __future__ import annotations

from mbsearch.errors import BadInput
from mbsearch.spec.arch import Arch, Block, Head, InputSpec, Stem
from mbsearch.spec.rules import adapt_strides, make_divisible, mid_channels

WIDTHS = {"050": 0.5, "075": 0.75, "": 1.0}
FAMILIES = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")

# torchvision's bneck settings: (in, kernel, expanded, out, se, act, stride)
_V3_LARGE = [
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hswish", 2),
    (80, 3, 200, 80, False, "hswish", 1),
    (80, 3, 184, 80, False, "hswish", 1),
    (80, 3, 184, 80, False, "hswish", 1),
    (80, 3, 480, 112, True, "hswish", 1),
    (112, 3, 672, 112, True, "hswish", 1),
    (112, 5, 672, 160, True, "hswish", 2),
    (160, 5, 960, 160, True, "hswish", 1),
    (160, 5, 960, 160, True, "hswish", 1),
]
_V3_SMALL = [
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hswish", 2),
    (40, 5, 240, 40, True, "hswish", 1),
    (40, 5, 240, 40, True, "hswish", 1),
    (40, 5, 120, 48, True, "hswish", 1),
    (48, 5, 144, 48, True, "hswish", 1),
    (48, 5, 288, 96, True, "hswish", 2),
    (96, 5, 576, 96, True, "hswish", 1),
    (96, 5, 576, 96, True, "hswish", 1),
]
# MobileNetV2's table: expansion t, out channels c, repeats n, first stride s
_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def reference_names() -> list[str]:
    """All reference names, e.g. mobilenet_v3_large, mobilenet_v3_large_075, mobilenet_v3_large_050."""
    return [f"{family}_{suffix}" if suffix else family for family in FAMILIES for suffix in WIDTHS]


def _expand_ratio(in_chs: int, mid_chs: int) -> float:
    """The ratio whose rounding (rules.mid_channels) gives back torchvision's expanded width."""
    ratio = round(mid_chs / in_chs, 4)
    if mid_channels(in_chs, ratio) != mid_chs:
        raise AssertionError(f"no ratio reproduces {in_chs}->{mid_chs}")  # a bug in this table, not input
    return ratio


def _v3(setting: list[tuple], width: float, head_hidden: int) -> tuple[Stem, list[Block], Head]:
    def scale(chs: int) -> int:
        return make_divisible(chs * width)

    stem = Stem(out=scale(setting[0][0]), kernel=3, stride=2, act="hswish")
    blocks = [
        Block(
            type="ir",
            kernel=kernel,
            stride=stride,
            expand=_expand_ratio(scale(in_chs), scale(expanded)),
            out=scale(out),
            se=0.25 if se else 0,
            act=act,
        )
        for in_chs, kernel, expanded, out, se, act, stride in setting
    ]
    head = Head(conv=6 * blocks[-1].out, hidden=scale(head_hidden), act="hswish", dropout=0.2)
    return stem, blocks, head


def _v2(width: float) -> tuple[Stem, list[Block], Head]:
    stem = Stem(out=make_divisible(32 * width), kernel=3, stride=2, act="relu6")
    blocks = []
    for t, c, n, s in _V2:
        for index in range(n):
            stride = s if index == 0 else 1
            out = make_divisible(c * width)
            blocks.append(Block(type="ir", kernel=3, stride=stride, expand=t, out=out, se=0, act="relu6"))
    head = Head(conv=make_divisible(1280 * max(1.0, width)), hidden=0, act="relu6", dropout=0.2)
    return stem, blocks, head


def reference_arch(name: str, input_size: int = 224, channels: int = 3, num_classes: int = 1000) -> Arch:
    """A reference MobileNet by name, adapted to the input (small inputs drop early strides)."""
    if name not in reference_names():
        raise BadInput(f"unknown reference {name!r}: use one of {', '.join(reference_names())}")
    family = next(f for f in sorted(FAMILIES, key=len, reverse=True) if name.startswith(f))
    width = WIDTHS[name.removeprefix(family).lstrip("_")]
    return family_arch(family, width, input_size, channels, num_classes).with_info(name=name)


def family_arch(family: str, width: float, input_size: int = 224, channels: int = 3, num_classes: int = 1000) -> Arch:
    """A reference family at any width multiplier (torchvision's rounding), e.g. for uniform-scaling baselines."""
    if family not in FAMILIES:
        raise BadInput(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    if not 0 < width <= 4:
        raise BadInput(f"width multiplier must be in (0, 4], got {width}")
    if family == "mobilenet_v2":
        stem, blocks, head = _v2(width)
    elif family == "mobilenet_v3_large":
        stem, blocks, head = _v3(_V3_LARGE, width, 1280)
    else:
        stem, blocks, head = _v3(_V3_SMALL, width, 1024)
    strides = adapt_strides([stem.stride] + [b.stride for b in blocks], input_size)
    stem = stem.model_copy(update={"stride": strides[0]})
    blocks = [b.model_copy(update={"stride": s}) for b, s in zip(blocks, strides[1:], strict=True)]
    return Arch(
        name=f"{family}_x{width:g}",
        input=InputSpec(channels=channels, size=input_size),
        num_classes=num_classes,
        stem=stem,
        blocks=tuple(blocks),
        head=head,
    )
