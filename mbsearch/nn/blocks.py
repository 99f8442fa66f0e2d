"""MobileNet building blocks in timm/torchvision style: explicit arguments, nn.Identity for absent parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mbsearch.architecture.rules import se_channels

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}


def make_activation(name: str | None) -> nn.Module:
    """The activation layer for a name from the arch format; None means no activation."""
    if name is None:
        return nn.Identity()
    return _ACTIVATIONS[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + activation, 'same' padding."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str | None = "relu"
    ) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs),
            make_activation(act),
        )


@dataclass(frozen=True)
class Depthwise:
    """A block's depthwise stage: its kernel and stride, the squeeze-and-excitation ratio (0: none) after it,
    and the block's activation."""

    kernel: int
    stride: int
    se: float
    act: str


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as in MobileNetV3: pool, 1x1 reduce + ReLU, 1x1 expand, hard-sigmoid gate."""

    def __init__(self, chs: int, squeeze_chs: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(chs, squeeze_chs, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_chs, chs, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale


def _se_or_identity(chs: int, se_ratio: float) -> nn.Module:
    return SqueezeExcite(chs, se_channels(chs, se_ratio)) if se_ratio > 0 else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 layer: kxk depthwise + BN + act, optional SE, 1x1 pointwise + BN + act.

    MobileNetV1's layer has no shortcut; `has_skip` is True only for the `dsr` block of old arch files."""

    def __init__(self, in_chs: int, out_chs: int, dw: Depthwise, has_skip: bool = False) -> None:
        super().__init__()
        self.has_skip = has_skip
        self.conv_dw = ConvBNAct(in_chs, in_chs, dw.kernel, dw.stride, groups=in_chs, act=dw.act)
        self.se = _se_or_identity(in_chs, dw.se)
        self.conv_pw = ConvBNAct(in_chs, out_chs, 1, act=dw.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pw(self.se(self.conv_dw(x)))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand + act, kxk depthwise + act, optional SE, linear 1x1 projection.

    The expansion conv is absent when mid_chs == in_chs (expand 1), as in torchvision. The shortcut
    (stride 1 and matching shapes) is decided by the layer plan (rules.has_shortcut).
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw: Depthwise, has_skip: bool) -> None:
        super().__init__()
        self.has_skip = has_skip
        self.conv_pw = ConvBNAct(in_chs, mid_chs, 1, act=dw.act) if mid_chs != in_chs else nn.Identity()
        self.conv_dw = ConvBNAct(mid_chs, mid_chs, dw.kernel, dw.stride, groups=mid_chs, act=dw.act)
        self.se = _se_or_identity(mid_chs, dw.se)
        self.conv_pwl = ConvBNAct(mid_chs, out_chs, 1, act=None)  # linear bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return out + x if self.has_skip else out
