"""The widths NetAdapt trims, and trimming them: the proposals of a network (an inverted residual's
expansion width, or a residual group's output width, so shortcuts stay valid), the network at a
narrower width (never another topology), and its weights carried over (the filters with the largest L2
norm kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.plan import plan_layers
from mbsearch.nn.model import build_model

STEP = 8  # widths stay multiples of 8, as the papers' channel rounding keeps them


MIN_WIDTH = 8


@dataclass(frozen=True)
class Proposal:
    """Shrink one width: an expansion ("mid", one block) or a residual group's output ("out", its blocks)."""

    kind: str
    blocks: tuple[int, ...]
    width: int

    def describe(self) -> str:
        where = f"block {self.blocks[0]}" if self.kind == "mid" else f"blocks {self.blocks[0]}-{self.blocks[-1]}"
        return f"{self.kind} of {where} -> {self.width}"


def residual_groups(arch: Arch) -> list[tuple[int, ...]]:
    """Runs of blocks that share one output width: a block with a shortcut joins the previous block's run."""
    groups: list[list[int]] = []
    plans = plan_layers(arch)[1:-1]
    for index, plan in enumerate(plans):
        if plan.has_skip and groups:
            groups[-1].append(index)
        else:
            groups.append([index])
    return [tuple(group) for group in groups]


def with_explicit_mids(arch: Arch) -> Arch:
    """Every expansion width written out (format /2), so that shrinking a block's input leaves it alone."""
    plans = plan_layers(arch)[1:-1]
    blocks = tuple(
        block.model_copy(update={"mid": plan.mid_chs}) if block.type == "ir" and plan.mid_chs != plan.in_chs else block
        for block, plan in zip(arch.blocks, plans, strict=True)
    )
    return arch.model_copy(update={"blocks": blocks})


def _topology(arch: Arch) -> list[tuple[bool, bool]]:
    """Per block: (has a shortcut, has an expansion layer)."""
    return [(plan.has_skip, plan.mid_chs != plan.in_chs) for plan in plan_layers(arch)[1:-1]]


def shrunk(arch: Arch, kind: str, blocks: tuple[int, ...], width: int) -> Arch | None:
    """`arch` with one width changed, or None where that would change the topology."""
    new_blocks = list(arch.blocks)
    for index in blocks:
        change = {"mid": width} if kind == "mid" else {"out": width}
        new_blocks[index] = new_blocks[index].model_copy(update=change)
    candidate = Arch.model_validate(arch.model_copy(update={"blocks": tuple(new_blocks)}).model_dump())
    return candidate if _topology(candidate) == _topology(arch) else None


def widths(arch: Arch) -> list[tuple[str, tuple[int, ...], int]]:
    """What can shrink, with its current width: each expansion, then each residual group's output."""
    plans = plan_layers(arch)[1:-1]
    found = [("mid", (i,), plan.mid_chs) for i, plan in enumerate(plans) if plan.mid_chs != plan.in_chs]
    found += [("out", group, plans[group[0]].out_chs) for group in residual_groups(arch)]
    return found


def trimmable(arch: Arch) -> bool:
    """Whether any width can shrink by a step without going below the floor or changing the topology."""
    return any(
        width - STEP >= MIN_WIDTH and shrunk(arch, kind, blocks, width - STEP) is not None
        for kind, blocks, width in widths(arch)
    )


def _spaces(arch: Arch) -> dict[str, tuple[str | None, ...]]:
    """Parameter name -> the channel space of each of its dimensions (None: not a channel dimension)."""
    plans = plan_layers(arch)
    group_of = {i: g for g, group in enumerate(residual_groups(arch)) for i in group}
    spaces: dict[str, tuple[str | None, ...]] = {}
    in_space = "stem"
    for index, plan in enumerate(plans[1:-1]):
        out_space = f"out{group_of[index]}"
        mid_space = f"mid{index}" if plan.mid_chs != plan.in_chs else in_space
        if plan.expand_conv is not None:
            spaces[f"{plan.expand_conv}.0.weight"] = (mid_space, in_space, None, None)
            _bn(spaces, f"{plan.expand_conv}.1", mid_space)
        spaces[f"{plan.depthwise_conv}.0.weight"] = (mid_space, None, None, None)
        _bn(spaces, f"{plan.depthwise_conv}.1", mid_space)
        sq_space, se = f"sq{index}", plan.squeeze_excite
        spaces[f"{se}.fc1.weight"] = (sq_space, mid_space, None, None)
        spaces[f"{se}.fc1.bias"] = (sq_space,)
        spaces[f"{se}.fc2.weight"] = (mid_space, sq_space, None, None)
        spaces[f"{se}.fc2.bias"] = (mid_space,)
        spaces[f"{plan.project_conv}.0.weight"] = (out_space, mid_space, None, None)
        _bn(spaces, f"{plan.project_conv}.1", out_space)
        in_space = out_space
    spaces[f"{plans[-1].head_conv}.weight"] = (None, in_space, None, None)
    return spaces


def _bn(spaces: dict, prefix: str, space: str) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        spaces[f"{prefix}.{name}"] = (space,)


def _top(norms: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest norms, in their original order."""
    return torch.sort(torch.topk(norms, count).indices).values


def transfer(old: nn.Module, old_arch: Arch, new_arch: Arch, proposal: Proposal) -> nn.Module:
    """The shrunk network with the weights it keeps: the filters of largest L2 norm (NetAdapt)."""
    state = old.state_dict()
    keep: dict[str, torch.Tensor] = {}
    if proposal.kind == "mid":
        index = proposal.blocks[0]
        weight = state[f"{plan_layers(old_arch)[index + 1].expand_conv}.0.weight"]
        keep[f"mid{index}"] = _top(weight.flatten(1).norm(dim=1), proposal.width)
    else:
        group = residual_groups(old_arch).index(proposal.blocks)
        plans = plan_layers(old_arch)
        norms = sum(state[f"{plans[i + 1].project_conv}.0.weight"].flatten(1).norm(dim=1) for i in proposal.blocks)
        keep[f"out{group}"] = _top(norms, proposal.width)
    model = build_model(new_arch)
    new_state = model.state_dict()
    spaces = _spaces(old_arch)
    for name, target in new_state.items():
        tensor = state[name]
        for dim, space in enumerate(spaces.get(name, ())):
            if space is None or (tensor.shape[dim] == target.shape[dim] and space not in keep):
                continue
            if space not in keep:  # an SE squeeze width that follows its (shrunk) expansion
                keep[space] = _top(tensor.flatten(1).norm(dim=1), target.shape[dim])
            tensor = tensor.index_select(dim, keep[space])
        if tensor.shape != target.shape:
            raise AssertionError(f"{name}: kept {tuple(tensor.shape)}, the shrunk network needs {tuple(target.shape)}")
        new_state[name] = tensor.clone()
    model.load_state_dict(new_state)
    return model
