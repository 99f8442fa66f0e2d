"""Arch -> torch.nn.Module. The only code that tracks input/output channels and resolutions."""

from __future__ import annotations

import torch
from torch import nn

from mbsearch.architecture.arch import Arch, Block
from mbsearch.architecture.plan import MAX_PARAMS, LayerPlan, estimate_params, plan_layers
from mbsearch.errors import BadInput
from mbsearch.nn.blocks import ConvBNAct, Depthwise, DepthwiseSeparable, InvertedResidual, make_activation


class MobileNet(nn.Module):
    """features (stem, blocks, 1x1 head conv) -> global average pool -> classifier."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        plans = plan_layers(arch)
        layers: list[nn.Module] = [
            ConvBNAct(arch.input.channels, arch.stem.out, arch.stem.kernel, arch.stem.stride, act=arch.stem.act)
        ]
        layers += [build_block(block, plan) for block, plan in zip(arch.blocks, plans[1:-1], strict=True)]
        layers.append(ConvBNAct(plans[-1].in_chs, arch.head.conv, 1, act=arch.head.act))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = build_classifier(arch)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_block(block: Block, plan: LayerPlan) -> nn.Module:
    """One block of `features`, as planned (in and mid channels from `plan_layers`)."""
    dw = Depthwise(block.kernel, block.stride, block.se, block.act)
    if block.type == "ir":
        return InvertedResidual(plan.in_chs, plan.mid_chs, block.out, dw, plan.has_skip)
    return DepthwiseSeparable(plan.in_chs, block.out, dw, plan.has_skip)


def build_classifier(arch: Arch) -> nn.Sequential:
    head = arch.head
    if head.hidden == 0:  # MobileNetV2: dropout then the classifier
        return nn.Sequential(nn.Dropout(head.dropout), nn.Linear(head.conv, arch.num_classes))
    return nn.Sequential(  # MobileNetV3: hidden linear layer with activation, dropout, classifier
        nn.Linear(head.conv, head.hidden),
        make_activation(head.act),
        nn.Dropout(head.dropout),
        nn.Linear(head.hidden, arch.num_classes),
    )


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def build_model(arch: Arch) -> MobileNet:
    """Build the network an Arch describes; refuses one too large to hold in memory, before allocating."""
    estimate = estimate_params(arch)
    if estimate > MAX_PARAMS:
        raise BadInput(
            f"{arch.name or 'arch'}: about {estimate:,} parameters, over the {MAX_PARAMS:,} mbsearch builds; "
            "shrink the channel counts"
        )
    return MobileNet(arch)
