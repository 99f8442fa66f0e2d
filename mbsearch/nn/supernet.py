"""A weight-sharing supernet over a search space (Once-for-All / BigNAS manner), in plain torch.

One set of weights covers every choice of the space:
- width (the global multiplier) and expansion: channel slicing, every layer keeps its first channels;
- kernel: the centre of the largest kernel (OFA's elastic kernel, without its learned transform);
- depth: a stage keeps its first blocks;
- squeeze-and-excitation: on or off, the squeeze width sliced like the rest;
- activation: parameter-free, so it is just applied;
- block type: each block position holds one branch per type (an inverted residual's weights and a
  depthwise-separable layer's), as single-path one-shot supernets do for structurally different choices.

A sub-network is never a separate code path: its forward pass runs the very `MobileNet` module that
`build_model` makes for its Arch, built on the meta device and fed slices of the shared tensors through
`torch.func.functional_call`. So `extract(arch)`, a real MobileNet with those slices copied in, computes
exactly what the supernet computed for it (tests/nn/test_supernet.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mbsearch.architecture.arch import Arch, Block
from mbsearch.architecture.decisions import decisions_of
from mbsearch.architecture.plan import LayerPlan
from mbsearch.architecture.rules import mid_channels, scale_channels
from mbsearch.architecture.sample import Decisions, arch_from_decisions
from mbsearch.architecture.space import SearchSpace
from mbsearch.errors import BadInput
from mbsearch.nn.model import MobileNet, build_block

COVERED_BLOCKS = ("ir", "ds")  # block types the supernet has a branch for


def check_covers(space: SearchSpace) -> None:
    """Refuse, with one line naming the choice, a space whose sub-networks the supernet cannot hold."""
    for index, stage in enumerate(space.stages):
        for block in stage.block or space.choices.block:
            if block not in COVERED_BLOCKS:
                raise BadInput(
                    f"space {space.name}: stage {index + 1} offers block {block!r}, which the supernet has no "
                    f"branch for (it covers {', '.join(COVERED_BLOCKS)}); drop it from the space or use "
                    "--evaluator brief"
                )


def _shared_name(name: str, positions: list[tuple[int, int, str]]) -> str:
    """The shared tensor a sub-network's state entry slices: `features.i.` of a block becomes its position
    and branch (`s2.l0.ir.`), the stem, head conv and classifier keep one tensor each."""
    if not name.startswith("features."):
        return name
    _, index, rest = name.split(".", 2)
    i = int(index)
    if i == 0:
        return f"stem.{rest}"
    if i == len(positions) + 1:
        return f"head.{rest}"
    stage, layer, block = positions[i - 1]
    return f"s{stage}.l{layer}.{block}.{rest}"


def _positions(decisions: Decisions) -> list[tuple[int, int, str]]:
    """(stage, layer in stage, block type) of each block of the sub-network, in order."""
    return [
        (stage, layer, decision["block"])
        for stage, decision in enumerate(decisions)
        for layer in range(decision["depth"])
    ]


def _slice(shared: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first channels along every dimension but a kernel's spatial ones, whose centre is taken."""
    if shared.dim() == 0:
        return shared
    index: list[slice] = []
    for dim, (have, want) in enumerate(zip(shared.shape, shape, strict=True)):
        if dim >= 2 and shared.dim() == 4:  # kxk kernel: its centre (odd sizes, so the centre is exact)
            start = (have - want) // 2
            index.append(slice(start, start + want))
        else:
            index.append(slice(0, want))
    return shared[tuple(index)]


def _meta_model(arch: Arch) -> MobileNet:
    """The sub-network's module with no storage. Its initialisation still draws from the global RNG (on
    the meta device too), so it runs on a forked one: a supernet step draws only what its dropout draws."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return MobileNet(arch)


class Supernet(nn.Module):
    """The shared weights of every sub-network of `space` at one input (size, channels, classes). `plan_size`
    is the input size whose stride plan the networks follow (the search's --latency-input-size, where it
    trains at the dataset's size and times at the deployment's; by default the input size)."""

    def __init__(
        self, space: SearchSpace, input_size: int, channels: int, num_classes: int, plan_size: int | None = None
    ) -> None:
        super().__init__()
        check_covers(space)
        self.space, self.input_size, self.channels, self.num_classes = space, input_size, channels, num_classes
        self.plan_size = plan_size or input_size
        shapes = self._largest_shapes()
        self.weights = nn.ParameterDict()
        self.stats = nn.ParameterDict()  # BatchNorm running statistics: buffers kept in a dict by name
        self._keys: dict[str, str] = {}  # shared name -> key inside the dicts (no dots allowed there)
        for name, (shape, dtype, is_param) in sorted(shapes.items()):
            key = name.replace(".", "__")
            self._keys[name] = key
            tensor = torch.empty(shape, dtype=dtype)
            if is_param:
                self.weights[key] = nn.Parameter(tensor)
            else:
                self.stats[key] = nn.Parameter(tensor, requires_grad=False)
        self._initialise()

    # ---- layout ---------------------------------------------------------------------------------

    def arch(self, width: float, decisions: Decisions) -> Arch:
        """The sub-network's Arch, at the input size it trains and is scored at."""
        arch = arch_from_decisions(self.space, width, decisions, self.plan_size, self.channels, self.num_classes)
        return arch.at_resolution(self.input_size)

    def _largest_shapes(self) -> dict[str, tuple[torch.Size, torch.dtype, bool]]:
        """Each shared tensor's largest shape over the whole space. A block's weight shapes depend only on its
        input, expanded and output widths, kernel, SE and type (not on stride or shortcut), so every block
        position is built alone for each width x type x expansion x SE of its stage (on the meta device:
        nothing allocated); the stem, head and classifier once per width."""
        shapes: dict[str, tuple[torch.Size, torch.dtype, bool]] = {}

        def record(prefix: str, module: nn.Module) -> None:
            params = {name for name, _ in module.named_parameters()}
            for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
                shared, old = prefix + name, shapes.get(prefix + name)
                shape = tensor.shape if old is None else torch.Size(map(max, old[0], tensor.shape))
                shapes[shared] = (shape, tensor.dtype, name in params)

        stages = [self.space.stage_choices(index) for index in range(len(self.space.stages))]
        for width in self.space.width:
            smallest_layout = [
                {"block": c.block[0], "kernel": min(c.kernel), "expand": min(c.expand), "se": 0.0 if 0 in c.se
                 else min(c.se), "act": c.act[0], "depth": min(c.depth)} for c in stages
            ]  # fmt: skip
            model = _meta_model(self.arch(width, smallest_layout))
            last = len(model.features) - 1
            record("stem.", model.features[0])
            record("head.", model.features[last])
            record("classifier.", model.classifier)
            previous_out = scale_channels(self.space.stem.out, width)
            for index, c in enumerate(stages):
                out = scale_channels(self.space.stages[index].out, width)
                for layer in range(max(c.depth)):
                    in_chs = previous_out if layer == 0 else out
                    for block_type, expand, se in itertools.product(c.block, c.expand, c.se):
                        expand = expand if block_type == "ir" else 1
                        block = Block(type=block_type, kernel=max(c.kernel), stride=1, expand=expand, out=out, se=se,
                                      act=c.act[0])  # fmt: skip
                        mid = mid_channels(in_chs, expand) if block_type == "ir" else in_chs
                        plan = LayerPlan("", block_type, in_chs, mid, out, 1, 1)
                        with torch.device("meta"):
                            module = build_block(block, plan)
                        record(f"s{index}.l{layer}.{block_type}.", module)
                previous_out = out
        return shapes

    def _initialise(self) -> None:
        """torchvision's MobileNet initialisation, on the largest tensors; BatchNorm statistics at rest."""
        with torch.no_grad():
            for name, key in self._keys.items():
                tensor = self.weights[key] if key in self.weights else self.stats[key]
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "running_var":
                    tensor.fill_(1.0)
                elif leaf in ("running_mean", "num_batches_tracked"):
                    tensor.zero_()
                elif tensor.dim() == 4:
                    nn.init.kaiming_normal_(tensor, mode="fan_out")
                elif tensor.dim() == 2:
                    nn.init.normal_(tensor, 0, 0.01)
                elif leaf == "weight" and not name.startswith("classifier"):  # BatchNorm's scale
                    tensor.fill_(1.0)
                else:  # biases, BatchNorm shifts
                    tensor.zero_()

    def shared(self, name: str) -> torch.Tensor:
        key = self._keys[name]
        return self.weights[key] if key in self.weights else self.stats[key]

    # ---- sub-networks ---------------------------------------------------------------------------------

    def sub_state(self, arch: Arch, decisions: Decisions) -> tuple[MobileNet, dict[str, torch.Tensor]]:
        """The sub-network's module (on the meta device) and its state as views of the shared tensors:
        gradients flow back to them, and BatchNorm's running statistics update them in place."""
        model = _meta_model(arch)
        positions = _positions(decisions)
        state = {}
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            state[name] = _slice(self.shared(_shared_name(name, positions)), tensor.shape)
        return model, state

    def forward(self, x: torch.Tensor, width: float, decisions: Decisions) -> torch.Tensor:
        arch = self.arch(width, decisions)
        model, state = self.sub_state(arch, decisions)
        model.train(self.training)
        return functional_call(model, state, (x,), strict=True)

    def extract(self, arch: Arch) -> MobileNet:
        """A stand-alone MobileNet for `arch` (a sub-network of the space) holding copies of its inherited
        weights and BatchNorm statistics; refuses an arch outside the space."""
        _, decisions = decisions_of(arch, self.space, self.plan_size)
        if arch.input.size != self.input_size:
            raise BadInput(
                f"{arch.name or 'the arch'} takes {arch.input.size}x{arch.input.size} images; the supernet was "
                f"trained at {self.input_size}x{self.input_size}"
            )
        model, state = self.sub_state(arch, decisions)
        # The meta module takes copies of the slices as its own tensors (assign): no second build, and no
        # random initialisation that the copies would overwrite (nor its draws from the global RNG).
        model.load_state_dict({name: tensor.detach().clone() for name, tensor in state.items()}, strict=True,
                              assign=True)  # fmt: skip
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every shared tensor by its dotted name (what a safetensors file holds)."""
        return {name: self.shared(name).detach() for name in self._keys}

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Take the shared tensors back from a file; a missing, extra or mis-shaped one is refused."""
        if set(tensors) != set(self._keys):
            missing, extra = sorted(set(self._keys) - set(tensors)), sorted(set(tensors) - set(self._keys))
            raise BadInput(
                f"{source}: not a supernet of this space and input (missing {missing[:3]}, extra {extra[:3]}); "
                "train one with 'mbsearch supernet train'"
            )
        with torch.no_grad():
            for name, tensor in tensors.items():
                mine = self.shared(name)
                if mine.shape != tensor.shape:
                    raise BadInput(
                        f"{source}: {name} is {tuple(tensor.shape)}, this space's supernet has {tuple(mine.shape)}"
                    )
                mine.copy_(tensor)


def largest(space: SearchSpace) -> tuple[float, Decisions]:
    """The sandwich rule's largest sub-network: widest, deepest, largest kernel, expansion and SE; an
    inverted residual where the stage offers one."""
    decisions = []
    for index in range(len(space.stages)):
        c = space.stage_choices(index)
        decisions.append(
            {"block": "ir" if "ir" in c.block else c.block[0], "kernel": max(c.kernel), "expand": max(c.expand),
             "se": max(c.se), "act": c.act[-1], "depth": max(c.depth)}
        )  # fmt: skip
    return max(space.width), decisions


def smallest(space: SearchSpace) -> tuple[float, Decisions]:
    """The sandwich rule's smallest: narrowest, shallowest, smallest kernel and expansion, no SE; a
    depthwise-separable layer where the stage offers one (it has no expansion at all)."""
    decisions = []
    for index in range(len(space.stages)):
        c = space.stage_choices(index)
        decisions.append(
            {"block": "ds" if "ds" in c.block else c.block[0], "kernel": min(c.kernel), "expand": min(c.expand),
             "se": min(c.se), "act": c.act[0], "depth": min(c.depth)}
        )  # fmt: skip
    return min(space.width), decisions


def state_summary(supernet: Supernet) -> dict[str, Any]:
    """Counts for the manifest and the log: shared tensors and parameters."""
    return {
        "tensors": len(supernet.weights) + len(supernet.stats),
        "params": sum(p.numel() for p in supernet.weights.values()),
    }
