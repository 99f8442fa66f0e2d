"""Reference MobileNets (V2, V3-Large, V3-Small) at widths 0.5/0.75/1.0, as Arch data.

The networks are the papers' tables as timm builds them (`timm.models.mobilenetv3._gen_mobilenet_v3`,
`_gen_mobilenet_v2`), at every width multiplier: at 224x224x3 with 1000 classes the parameter counts equal
timm's, e.g. mobilenet_v2 3,504,872; mobilenet_v3_large 5,483,032, _075 3,993,528, _050 2,689,904;
mobilenet_v3_small 2,542,856, _075 2,041,872, _050 1,593,224 (tests/architecture/test_zoo.py checks all nine).
Below width 1 the V3 papers keep the last layer (1280 / 1024 wide), and timm keeps the 16-channel stem
below 0.75; torchvision scales both, which gives other networks than the paper's.
"""

from __future__ import annotations

from mbsearch.architecture.arch import Arch, Block, Head, InputSpec, Stem
from mbsearch.architecture.rules import adapt_strides, make_divisible
from mbsearch.errors import BadInput

WIDTHS = {"050": 0.5, "075": 0.75, "": 1.0}
FAMILIES = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")

# The V3 papers' tables in timm's arch_def form: (repeats, kernel, stride, expansion, out, se, act). The
# expansion is timm's ratio (e2.3 gives 184 of 80 channels), applied to the block's rounded input width.
_V3_LARGE = [
    (1, 3, 1, 1, 16, False, "relu"),
    (1, 3, 2, 4, 24, False, "relu"),
    (1, 3, 1, 3, 24, False, "relu"),
    (3, 5, 2, 3, 40, True, "relu"),
    (1, 3, 2, 6, 80, False, "hswish"),
    (1, 3, 1, 2.5, 80, False, "hswish"),
    (2, 3, 1, 2.3, 80, False, "hswish"),
    (2, 3, 1, 6, 112, True, "hswish"),
    (3, 5, 2, 6, 160, True, "hswish"),
]
_V3_SMALL = [
    (1, 3, 2, 1, 16, True, "relu"),
    (1, 3, 2, 4.5, 24, False, "relu"),
    (1, 3, 1, 3.67, 24, False, "relu"),
    (1, 5, 2, 4, 40, True, "hswish"),
    (2, 5, 1, 6, 40, True, "hswish"),
    (2, 5, 1, 3, 48, True, "hswish"),
    (3, 5, 2, 6, 96, True, "hswish"),
]
# (last 1x1 conv before pooling, hidden layer after pooling): the conv scales, the hidden layer does not
_V3_HEADS = {"mobilenet_v3_large": (960, 1280), "mobilenet_v3_small": (576, 1024)}
# MobileNetV2's table: expansion t, out channels c, repeats n, first stride s
_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def reference_names() -> list[str]:
    """All reference names, e.g. mobilenet_v3_large, mobilenet_v3_large_075, mobilenet_v3_large_050."""
    return [f"{family}_{suffix}" if suffix else family for family in FAMILIES for suffix in WIDTHS]


def _v3(family: str, width: float) -> tuple[Stem, list[Block], Head]:
    def scale(chs: int) -> int:
        return make_divisible(chs * width)

    stem = Stem(out=16 if width < 0.75 else scale(16), kernel=3, stride=2, act="hswish")
    setting = _V3_LARGE if family == "mobilenet_v3_large" else _V3_SMALL
    blocks = [
        Block(
            type="ir",
            kernel=kernel,
            stride=stride if index == 0 else 1,
            expand=float(expand),
            out=scale(out),
            se=0.25 if se else 0,
            act=act,
        )
        for repeats, kernel, stride, expand, out, se, act in setting
        for index in range(repeats)
    ]
    conv, hidden = _V3_HEADS[family]
    return stem, blocks, Head(conv=scale(conv), hidden=hidden, act="hswish", dropout=0.2)


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
    """A reference family at any width multiplier (timm's rounding), e.g. for uniform-scaling baselines."""
    if family not in FAMILIES:
        raise BadInput(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    if not 0 < width <= 4:
        raise BadInput(f"width multiplier must be in (0, 4], got {width}")
    if family == "mobilenet_v2":
        stem, blocks, head = _v2(width)
    else:
        stem, blocks, head = _v3(family, width)
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
