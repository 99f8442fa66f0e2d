"""Per-block summary of an Arch: type, kernel, expansion, SE, activation, channels, stride, resolution,
params and MACs. Computing only; the CLI draws it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.plan import plan_layers
from mbsearch.nn.cost import count_macs, count_params
from mbsearch.nn.model import build_model


@dataclass(frozen=True)
class Row:
    layer: str
    type: str
    kernel: int | None
    expand: float | None
    se: float | None
    act: str
    out: int
    stride: int
    resolution: int
    params: int
    macs: int


def summarize(arch: Arch) -> tuple[list[Row], dict[str, Any]]:
    """Rows for stem, blocks, head conv and classifier, and the totals."""
    model = build_model(arch)
    total_macs, macs = count_macs(model, arch)
    plans = plan_layers(arch)
    rows = []
    for index, plan in enumerate(plans):
        module = model.get_submodule(plan.name)
        if plan.kind == "stem":
            details = (arch.stem.kernel, None, None, arch.stem.act)
        elif plan.kind == "head":
            details = (1, None, None, arch.head.act)
        else:
            block = arch.blocks[index - 1]
            # an explicit expansion width (format /2) shows as the ratio it amounts to
            expand = block.expand if block.mid is None else round(plan.mid_chs / plan.in_chs, 2)
            details = (block.kernel, expand, block.se, block.act)
        rows.append(
            Row(
                plan.name,
                plan.kind,
                *details,
                plan.out_chs,
                plan.stride,
                plan.out_size,
                count_params(module),
                macs.get(plan.name, 0),
            )
        )
    head = arch.head
    rows.append(
        Row(
            "classifier",
            "fc",
            None,
            None,
            None,
            head.act if head.hidden else "-",
            arch.num_classes,
            1,
            1,
            count_params(model.classifier),
            macs.get("classifier", 0),
        )
    )
    totals = {
        "name": arch.name,
        "params": count_params(model),
        "macs": total_macs,
        "blocks": len(arch.blocks),
        "input": f"{arch.input.channels}x{arch.input.size}x{arch.input.size}",
        "num_classes": arch.num_classes,
    }
    return rows, totals
