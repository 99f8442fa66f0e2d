"""Format mbsearch.spec.arch/2: explicit expansion widths (for NetAdapt-style per-layer widths), /1 still read."""

from __future__ import annotations

import json

import pytest
import torch

from mbsearch.architecture.arch import FORMAT, FORMAT_V2, Arch, load_arch
from mbsearch.architecture.plan import estimate_params, plan_layers
from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import load_space
from mbsearch.architecture.zoo import reference_arch
from mbsearch.errors import BadInput
from mbsearch.nn.cost import count_params
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import to_onnx


def _with_mid(arch: Arch, index: int, mid: int) -> Arch:
    blocks = list(arch.blocks)
    blocks[index] = blocks[index].model_copy(update={"mid": mid})
    return Arch.from_dict(arch.model_copy(update={"blocks": tuple(blocks)}).to_dict())


def _first_expanding_block(arch: Arch) -> int:
    return next(i for i, b in enumerate(arch.blocks) if b.type == "ir" and b.expand > 1)


def test_a_v1_arch_is_written_and_keyed_as_before(tmp_path) -> None:
    arch = random_arch(load_space("v2"), 4, 28, 1, 10)  # v2 has no ds blocks, whose meaning /3 changed
    assert arch.to_dict()["format"] == FORMAT and "mid" not in json.dumps(arch.to_dict())
    assert '"mid"' not in arch.key()  # latency caches and lookup tables keep their keys
    path = tmp_path / "a.json"
    path.write_text(arch.to_json())
    assert load_arch(path) == arch


def test_explicit_expansion_width_builds_round_trips_and_is_written_as_v2(tmp_path) -> None:
    arch = reference_arch("mobilenet_v3_small", 28, 1, 10)
    index = _first_expanding_block(arch)
    in_chs = plan_layers(arch)[index + 1].in_chs
    default_mid = plan_layers(arch)[index + 1].mid_chs
    slim = _with_mid(arch, index, default_mid - 16)
    assert slim.to_dict()["format"] == FORMAT_V2
    assert plan_layers(slim)[index + 1].mid_chs == default_mid - 16
    path = tmp_path / "slim.json"
    path.write_text(slim.to_json())
    again = load_arch(path)
    assert again == slim
    model = build_model(again)
    assert count_params(model) < count_params(build_model(arch))
    assert count_params(model) == count_params(build_model(slim))
    assert estimate_params(slim) < estimate_params(arch)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert len(to_onnx(model, again)) > 1000  # export --onnx and timing take it
    assert abs(summary_ratio(again, index) - (default_mid - 16) / in_chs) < 0.01


def summary_ratio(arch: Arch, index: int) -> float:
    """What `show` prints in its expansion column for block `index`."""
    from mbsearch.nn.summary import summarize

    rows, _ = summarize(arch)
    return rows[index + 1].expand


def test_v1_file_with_an_explicit_width_and_misplaced_widths_are_refused(tmp_path) -> None:
    arch = reference_arch("mobilenet_v3_small", 28, 1, 10)
    index = _first_expanding_block(arch)
    data = _with_mid(arch, index, 48).to_dict() | {"format": FORMAT}
    with pytest.raises(BadInput, match=f"blocks.{index}.mid: an explicit expansion width needs"):
        Arch.from_dict(data)
    ds_index = next(i for i, b in enumerate(arch.blocks) if b.expand == 1)
    data = arch.to_dict()
    data["blocks"][ds_index]["mid"] = 32
    data["format"] = FORMAT_V2
    with pytest.raises(BadInput, match="ir blocks with expand > 1 only"):
        Arch.from_dict(data)
    with pytest.raises(BadInput, match="expected one of"):
        Arch.from_dict(arch.to_dict() | {"format": "mbsearch.spec.arch/9"})
