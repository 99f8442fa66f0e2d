"""The layer plan: what each layer of an Arch receives and produces, without building it (no torch).

The plan owns the topology: in, mid and out channels, resolutions, the shortcut and module names. The
builder, the lookup table, NetAdapt and the size checks all read it rather than working it out again.
"""

from __future__ import annotations

from dataclasses import dataclass

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.rules import has_shortcut, mid_channels, output_size, se_channels


@dataclass(frozen=True)
class LayerPlan:
    """What one layer of `features` receives and produces."""

    name: str  # the module name inside the built model, e.g. "features.3"
    kind: str  # stem | ir | ds | dsr | head
    in_chs: int
    mid_chs: int
    out_chs: int
    stride: int
    out_size: int
    has_skip: bool = False  # the residual shortcut (rules.has_shortcut): planned here, read by every user

    # Module names inside the built block (timm's: conv_pw, conv_dw, se, conv_pwl); each convolution is
    # ConvBNAct, so its weight is `<module>.0.weight` and its BatchNorm `<module>.1`.
    @property
    def expand_conv(self) -> str | None:
        """The 1x1 expansion of an inverted residual whose middle is wider than its input, else None."""
        return f"{self.name}.conv_pw" if self.kind == "ir" and self.mid_chs != self.in_chs else None

    @property
    def depthwise_conv(self) -> str:
        return f"{self.name}.conv_dw"

    @property
    def squeeze_excite(self) -> str:
        return f"{self.name}.se"

    @property
    def project_conv(self) -> str:
        """The 1x1 projection to the block's output: the linear bottleneck of an inverted residual, the
        pointwise conv of a depthwise-separable layer."""
        return f"{self.name}.conv_pwl" if self.kind == "ir" else f"{self.name}.conv_pw"

    @property
    def head_conv(self) -> str:
        """The 1x1 head convolution's module (plain ConvBNAct: features.N.0)."""
        return f"{self.name}.0"


def plan_layers(arch: Arch) -> list[LayerPlan]:
    """Channels and resolutions layer by layer, in `features` order."""
    size = output_size(arch.input.size, arch.stem.stride)
    plans = [LayerPlan("features.0", "stem", arch.input.channels, arch.stem.out, arch.stem.out, arch.stem.stride, size)]
    in_chs = arch.stem.out
    for index, block in enumerate(arch.blocks, start=1):
        size = output_size(size, block.stride)
        mid = (block.mid or mid_channels(in_chs, block.expand)) if block.type == "ir" else in_chs
        skip = has_shortcut(block.type, block.stride, in_chs, block.out)
        plans.append(LayerPlan(f"features.{index}", block.type, in_chs, mid, block.out, block.stride, size, skip))
        in_chs = block.out
    plans.append(LayerPlan(f"features.{len(arch.blocks) + 1}", "head", in_chs, arch.head.conv, arch.head.conv, 1, size))
    return plans


MAX_PARAMS = 500_000_000  # 100x MobileNetV3-Large at 1000 classes; 2 GB of float32 weights


def estimate_params(arch: Arch) -> int:
    """Weights of the convolutions and linear layers, from the plan alone (nothing allocated)."""
    total = 0
    for plan, block in zip(plan_layers(arch)[1:-1], arch.blocks, strict=True):
        total += plan.in_chs * plan.mid_chs + plan.mid_chs * block.kernel**2 + plan.mid_chs * plan.out_chs
        total += 2 * plan.mid_chs * se_channels(plan.mid_chs, block.se) if block.se else 0
    head = arch.head
    total += (
        arch.blocks[-1].out * head.conv + head.conv * (head.hidden or 1) + (head.hidden or head.conv) * arch.num_classes
    )
    return total
