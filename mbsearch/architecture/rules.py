"""Layout rules shared by the zoo, the sampler and the builder: channel rounding and stride plans.

Everything that rounds channels or decides strides lives here, so the reference MobileNets and the
searched networks follow one set of rules (torchvision's).
"""

from __future__ import annotations

from collections.abc import Sequence

# Smallest final feature map we accept: 224 keeps all strides (7x7 at the end); 28 and 32 drop the stem's
# stride (2x2 at the end). Dropping a second stride as well (4x4 at the end, as some CIFAR MobileNets do)
# made brief training 2-4x slower here for little gain on 28x28 data, so the search could not keep its
# trial budget of tens of seconds.
MIN_FINAL_RESOLUTION = 2


# Block types with a shortcut when shapes allow one. MobileNetV1's depthwise-separable layer (`ds`) has
# none (V1 paper; timm's `dsa`); `dsr` is the same layer with a shortcut, kept to read arch files of
# format /1 and /2, where `ds` had one.
SHORTCUT_BLOCKS = ("ir", "dsr")


def has_shortcut(block_type: str, stride: int, in_chs: int, out_chs: int) -> bool:
    """The one shortcut rule (V2's): a block type that has one, stride 1 and unchanged width."""
    return block_type in SHORTCUT_BLOCKS and stride == 1 and in_chs == out_chs


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going 10% below it (torchvision)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_channels(chs: int, width: float) -> int:
    """Channels under a width multiplier, rounded as torchvision does (width 1 keeps them as written)."""
    return chs if width == 1 else make_divisible(chs * width)


def mid_channels(in_chs: int, expand: float) -> int:
    """Expanded width of an inverted residual: in_chs * expand rounded to a multiple of 8."""
    if expand == 1:
        return in_chs
    return make_divisible(in_chs * expand)


def se_channels(mid_chs: int, se_ratio: float) -> int:
    """Squeeze width of SE: torchvision uses _make_divisible(expanded // 4, 8) for ratio 0.25."""
    return make_divisible(int(mid_chs * se_ratio))


def output_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded conv with this stride."""
    return (size + stride - 1) // stride


def adapt_strides(strides: Sequence[int], input_size: int) -> list[int]:
    """Drop stride-2 steps from the front until the final map is at least MIN_FINAL_RESOLUTION.

    This is what CIFAR-style MobileNets do: a 224 input keeps every stride (7x7 at the end),
    a 32 or 28 input loses the stem's stride (2x2 at the end).
    """
    adapted = list(strides)

    def final(plan: Sequence[int]) -> int:
        size = input_size
        for stride in plan:
            size = output_size(size, stride)
        return size

    for index, stride in enumerate(adapted):
        if final(adapted) >= MIN_FINAL_RESOLUTION:
            break
        if stride == 2:
            adapted[index] = 1
    return adapted
