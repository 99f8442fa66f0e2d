"""An architecture as the space's decisions (width, and per stage block, kernel, expand, se, act, depth), both
ways: drawn at random (the supernet's sandwich rule draws several per step, without Optuna) and read back
from an Arch (so that any sub-network of the space, from a study or a file, finds its supernet weights)."""

from __future__ import annotations

import random
from typing import Any

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.rules import scale_channels
from mbsearch.architecture.sample import Decisions, arch_from_decisions
from mbsearch.architecture.space import CHOICE_KEYS, SearchSpace
from mbsearch.errors import BadInput


def random_decisions(space: SearchSpace, rng: random.Random) -> tuple[float, Decisions]:
    """A uniform draw of every choice of the space."""
    width = rng.choice(space.width)
    decisions = []
    for index in range(len(space.stages)):
        choices = space.stage_choices(index)
        decisions.append({key: rng.choice(getattr(choices, key)) for key in CHOICE_KEYS})
    return width, decisions


def decisions_of(arch: Arch, space: SearchSpace, plan_size: int | None = None) -> tuple[float, Decisions]:
    """The width and decisions that lay out `arch` in `space` (its stride plan for `plan_size`, by default its
    own input size); refuses an arch that is not a sub-network of the space (a reference MobileNet, a
    NetAdapt-trimmed one) with one line."""
    plan = plan_size or arch.input.size
    for width in space.width:
        if (
            scale_channels(space.stem.out, width) != arch.stem.out
            or scale_channels(space.head.conv, width) != arch.head.conv
        ):
            continue
        for decisions in _stage_splits(arch, space, width, 0, 0):
            rebuilt = arch_from_decisions(space, width, decisions, plan, arch.input.channels, arch.num_classes)
            if rebuilt.at_resolution(arch.input.size).key() == arch.key():
                return width, decisions
    raise BadInput(
        f"{arch.name or 'the arch'} is not a sub-network of space {space.name} (no width and per-stage choices "
        "lay it out); the supernet scores the space's own networks only"
    )


def _stage_splits(arch: Arch, space: SearchSpace, width: float, stage: int, start: int):
    """Every way the blocks from `start` on divide into stages `stage`.. with their choices (a generator)."""
    if stage == len(space.stages):
        if start == len(arch.blocks):
            yield []
        return
    choices = space.stage_choices(stage)
    out = scale_channels(space.stages[stage].out, width)
    for depth in choices.depth:
        blocks = arch.blocks[start : start + depth]
        if len(blocks) != depth or any(b.out != out for b in blocks):
            continue
        first = blocks[0]
        if any(
            (b.type, b.kernel, b.expand, b.se, b.act, b.mid)
            != (first.type, first.kernel, first.expand, first.se, first.act, None)
            for b in blocks
        ):
            continue
        expand = first.expand if first.type == "ir" else choices.expand[0]  # a ds layer ignores expand
        decision: dict[str, Any] = {"block": first.type, "kernel": first.kernel, "expand": expand, "se": first.se,
                                    "act": first.act, "depth": depth}  # fmt: skip
        if any(decision[key] not in getattr(choices, key) for key in CHOICE_KEYS):
            continue
        for rest in _stage_splits(arch, space, width, stage + 1, start + depth):
            yield [decision, *rest]


def every_layout(space: SearchSpace) -> int:
    """How many sub-networks the space holds (for the log: what one supernet covers)."""
    total = len(space.width)
    for index in range(len(space.stages)):
        c = space.stage_choices(index)
        per_block = sum(len(c.kernel) * (len(c.expand) if b == "ir" else 1) * len(c.se) * len(c.act) for b in c.block)
        total *= sum(per_block for _ in c.depth)
    return total
