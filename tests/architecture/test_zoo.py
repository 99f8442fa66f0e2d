from __future__ import annotations

import pytest

from mbsearch.architecture.rules import make_divisible
from mbsearch.architecture.zoo import FAMILIES, family_arch, reference_arch, reference_names
from mbsearch.errors import BadInput
from mbsearch.nn.cost import count_macs, count_params
from mbsearch.nn.model import build_model

# torchvision's (and timm's) parameter counts and the papers' MAdds at 224x224x3, 1000 classes.
TORCHVISION = {
    "mobilenet_v2": (3_504_872, 300e6),
    "mobilenet_v3_large": (5_483_032, 217e6),
    "mobilenet_v3_small": (2_542_856, 56e6),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_reference_params_equal_torchvision_and_macs_match_papers(name: str) -> None:
    params, macs = TORCHVISION[name]
    arch = reference_arch(name)
    model = build_model(arch)
    assert count_params(model) == params
    total, _ = count_macs(model, arch)
    assert abs(total - macs) / macs < 0.03


@pytest.mark.parametrize("name", reference_names())
def test_width_multipliers_follow_the_papers(name: str) -> None:
    """Block widths scale; V3 keeps its last layer at every width and its 16-channel stem below 0.75 (timm)."""
    width = 0.5 if name.endswith("_050") else 0.75 if name.endswith("_075") else 1.0
    arch = reference_arch(name)
    base = reference_arch(name.removesuffix("_050").removesuffix("_075"))
    for block, base_block in zip(arch.blocks, base.blocks, strict=True):
        assert block.out == make_divisible(base_block.out * width)
    fixed_stem = "v3" in name and width < 0.75
    assert arch.stem.out == (16 if fixed_stem else make_divisible(base.stem.out * width))
    if "v3" in name:
        assert arch.head.hidden == base.head.hidden


def test_smaller_widths_have_fewer_params() -> None:
    for family in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        counts = [count_params(build_model(reference_arch(f"{family}{s}"))) for s in ("_050", "_075", "")]
        assert counts == sorted(counts) and len(set(counts)) == 3


def test_make_divisible_matches_torchvision() -> None:
    assert make_divisible(18) == 24  # 16 would be more than 10% below 18
    assert make_divisible(36) == 40
    assert make_divisible(4) == 8
    assert make_divisible(120 // 4) == 32


@pytest.mark.parametrize("family", FAMILIES)
def test_any_width_multiplier_matches_the_named_references(family: str) -> None:
    """family_arch (the uniform-width baseline of benchmarks/netadapt.py) is the named reference at its
    widths, and shrinks monotonically between them."""
    for suffix, width in (("", 1.0), ("_075", 0.75), ("_050", 0.5)):
        assert family_arch(family, width, 224, 1, 10).key() == reference_arch(family + suffix, 224, 1, 10).key()
    params = [count_params(build_model(family_arch(family, w / 40, 224, 1, 10))) for w in range(8, 41, 4)]
    assert params == sorted(params) and len(set(params)) == len(params)
    with pytest.raises(BadInput, match="width multiplier"):
        family_arch(family, 0)
