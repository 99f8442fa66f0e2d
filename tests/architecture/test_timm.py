"""timm builds exactly our blocks from the strings we print: same parameters, same outputs for the same
weights. Checked against timm itself (a dev dependency), imported with a torchvision stand-in."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.blockstrings import NotExpressible, block_string, has_skip, timm_arch_def
from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import list_spaces, load_space
from mbsearch.architecture.zoo import reference_arch, reference_names
from mbsearch.nn.model import build_model
from tests.timm_support import import_timm

timm = import_timm()
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402
from timm.models._efficientnet_builder import decode_arch_def, round_channels  # noqa: E402
from timm.models.mobilenetv3 import MobileNetV3  # noqa: E402


def timm_model(arch_def: list[list[str]], in_chs: int) -> MobileNetV3:
    """timm's MobileNetV3 with the arguments blockstrings.TIMM_KWARGS_HELP documents."""
    se_layer = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    return MobileNetV3(
        block_args=decode_arch_def(arch_def), stem_size=in_chs, fix_stem=True, se_layer=se_layer, round_chs_fn=int
    )


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _copy_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """Same layers in the same order: copy ours into timm's, checking every shape."""
    mine, other = ours.state_dict(), theirs.state_dict()
    assert len(mine) == len(other), (list(mine), list(other))
    generator = torch.Generator().manual_seed(0)
    for (key, value), (other_key, other_value) in zip(mine.items(), other.items(), strict=True):
        assert value.shape == other_value.shape, (key, other_key)
        if value.is_floating_point() and "running_var" not in key:
            value.copy_(torch.randn(value.shape, generator=generator) * 0.3)  # non-trivial BN statistics too
        elif "running_var" in key:
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    theirs.load_state_dict(dict(zip(other.keys(), mine.values(), strict=True)))


def _assert_same(ours: nn.Module, theirs: nn.Module, in_chs: int, size: int) -> None:
    assert _params(theirs) == _params(ours)
    _copy_weights(ours, theirs)
    ours.eval(), theirs.eval()
    x = torch.randn(2, in_chs, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_timm_builds_the_reference_mobilenets_blocks_exactly(name: str) -> None:
    arch = reference_arch(name)
    ours = build_model(arch).features[1:-1]
    theirs = timm_model(timm_arch_def(arch), arch.stem.out).blocks
    _assert_same(ours, theirs, arch.stem.out, 56)


def _timm_reference(name: str) -> nn.Module:
    """timm's builder for the paper's table at the reference's width (timm registers no large_050)."""
    from timm.models.efficientnet import _gen_mobilenet_v2
    from timm.models.mobilenetv3 import _gen_mobilenet_v3

    width = 0.5 if name.endswith("_050") else 0.75 if name.endswith("_075") else 1.0
    if name.startswith("mobilenet_v2"):
        return _gen_mobilenet_v2("mobilenetv2_100", width)
    variant = "mobilenetv3_large_100" if "large" in name else "mobilenetv3_small_100"
    return _gen_mobilenet_v3(variant, width)


@pytest.mark.parametrize("name", reference_names())
def test_every_reference_is_timms_network_at_its_width(name: str) -> None:
    """Issue 35: the whole network (stem, blocks, head, classifier) equals timm's builder at every width:
    the same parameter count at 224x224x3 and 1000 classes, and the same outputs for the same weights.
    The width multiplier once scaled V3's last layer (1280 / 1024) and the 16-channel stem, which the paper
    (and timm) keep below width 1 (below 0.75 for the stem): 4 of the 9 were not the papers' networks."""
    ours = build_model(reference_arch(name))
    theirs = _timm_reference(name)
    assert _params(ours) == _params(theirs) == TIMM_PARAMS[name]
    mine, other = ours.state_dict(), theirs.state_dict()
    assert len(mine) == len(other)
    generator = torch.Generator().manual_seed(0)
    for (key, value), other_value in zip(mine.items(), other.values(), strict=True):
        assert value.numel() == other_value.numel(), key  # our hidden Linear is timm's 1x1 conv_head
        if value.is_floating_point():
            value.copy_(torch.rand(value.shape, generator=generator) * 0.2 + (0.9 if "running_var" in key else -0.1))
    theirs.load_state_dict({k: v.reshape(o.shape) for (k, o), v in zip(other.items(), mine.values(), strict=True)})
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)


# timm 1.0.31's parameter counts at 224x224x3, 1000 classes (shared/DESIGN.md; the V3 paper's table gives
# 4.0M for V3-Large 0.75 and 2.0M for V3-Small 0.75).
TIMM_PARAMS = {
    "mobilenet_v2_050": 1_968_680,
    "mobilenet_v2_075": 2_636_424,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large_050": 2_689_904,
    "mobilenet_v3_large_075": 3_993_528,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small_050": 1_593_224,
    "mobilenet_v3_small_075": 2_041_872,
    "mobilenet_v3_small": 2_542_856,
}


def _sampled(space: str, count: int = 6) -> list[Arch]:
    return [random_arch(load_space(space), seed, 32, 3, 10) for seed in range(count)]


@pytest.mark.parametrize("space", list_spaces())
def test_every_sampled_block_is_built_identically_by_timm(space: str) -> None:
    """Each block of sampled archs, and each whole arch, is built by timm from our strings, identically.
    (Before arch format /3 a `ds` at stride 1 and unchanged width had a shortcut and no timm form.)"""
    built = shortcut_free_ds = 0
    for arch in _sampled(space):
        model = build_model(arch)
        in_chs, size = arch.stem.out, 32 // arch.stem.stride
        for index, block in enumerate(arch.blocks):
            text = block_string(block, in_chs)
            shortcut_free_ds += block.type == "ds" and block.stride == 1 and in_chs == block.out
            theirs = timm_model([[text]], in_chs).blocks[0][0]
            _assert_same(model.features[1 + index], theirs, in_chs, size)
            built += 1
            in_chs, size = block.out, -(-size // block.stride)
        theirs = timm_model(timm_arch_def(arch), arch.stem.out).blocks
        _assert_same(model.features[1:-1], theirs, arch.stem.out, 32 // arch.stem.stride)
    assert built > 0
    if space in ("v1", "v3"):  # the shape where MobileNetV1's layer differs from the old ds was sampled
        assert shortcut_free_ds > 0


def test_an_old_ds_with_a_shortcut_reads_as_built_and_timm_refuses_it() -> None:
    """A /1 file's ds at stride 1 and unchanged width had a shortcut: it is read as dsr, built with it,
    and timm_arch_def refuses it (timm has no such block) instead of printing a different network."""
    arch = next(
        a
        for a in _sampled("v1", 12)
        if any(b.type == "ds" and has_skip(b.model_copy(update={"type": "dsr"}), c) for b, c in _inputs(a))
    )
    old = arch.to_dict() | {"format": "mbsearch.spec.arch/1"}
    read = Arch.from_dict(old)
    assert any(block.type == "dsr" for block in read.blocks)
    assert any(getattr(block, "has_skip", False) for block in build_model(read).features[1:-1])
    assert not any(getattr(block, "has_skip", False) for block in build_model(arch).features[1:-1])
    with pytest.raises(NotExpressible, match="no timm equivalent"):
        timm_arch_def(read)
    assert Arch.from_dict(read.to_dict()) == read  # written as /3 and read back unchanged


def _inputs(arch: Arch) -> list[tuple]:
    channels = [arch.stem.out] + [b.out for b in arch.blocks[:-1]]
    return list(zip(arch.blocks, channels, strict=True))


def test_an_explicit_expansion_width_is_built_identically_by_timm_or_refused() -> None:
    """Format /2 widths: a multiple of 8 is timm's rounding of a ratio, so timm builds the same block;
    another width has no timm string, and timm_arch_def says so instead of printing a wrong one."""
    arch = reference_arch("mobilenet_v3_small", 28, 1, 10)
    index = next(i for i, b in enumerate(arch.blocks) if b.type == "ir" and b.expand > 1)

    def with_mid(mid: int) -> Arch:
        blocks = list(arch.blocks)
        blocks[index] = blocks[index].model_copy(update={"mid": mid})
        return Arch.from_dict(arch.model_copy(update={"blocks": tuple(blocks)}).to_dict())

    slim = with_mid(48)
    theirs = timm_model(timm_arch_def(slim), slim.stem.out).blocks
    _assert_same(build_model(slim).features[1:-1], theirs, slim.stem.out, 28)
    with pytest.raises(NotExpressible, match="explicit expansion width 44"):
        timm_arch_def(with_mid(44))


@pytest.mark.parametrize("pick", ["knee", "max-accuracy", "min-latency"])
def test_export_timm_writes_every_pick_of_a_study_and_timm_builds_the_same_blocks(
    runner, tiny_study, tmp_path, pick: str
) -> None:
    """Issue 16: `export --timm` refused most searched v3 archs (a ds with a shortcut); now every pick of a
    study has a timm arch_def, and timm builds exactly the exported blocks from it."""
    import json

    from mbsearch.architecture.arch import load_arch
    from mbsearch.cli.app import app

    runs, name, _ = tiny_study
    out = tmp_path / f"{pick}.json"
    result = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--pick", pick, "-o", str(out), "--timm"])
    assert result.exit_code == 0, result.output
    arch_def = json.loads(result.stdout[result.stdout.index("[") :])
    arch = load_arch(out)
    assert arch_def == timm_arch_def(arch)
    size = arch.input.size // arch.stem.stride
    _assert_same(build_model(arch).features[1:-1], timm_model(arch_def, arch.stem.out).blocks, arch.stem.out, size)
