from __future__ import annotations

import json

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbsearch.architecture.arch import MAX_BLOCKS, Arch, Block, load_arch
from mbsearch.architecture.blockstrings import (
    NotExpressible,
    block_string,
    block_strings,
    parse_block_string,
    parse_block_strings,
)
from mbsearch.architecture.sample import sample_arch
from mbsearch.architecture.space import list_spaces, load_space
from mbsearch.architecture.zoo import reference_arch, reference_names
from mbsearch.errors import BadInput


def _arch_dict() -> dict:
    return reference_arch("mobilenet_v3_small", 28, 1, 10).to_dict()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=st.sampled_from(list_spaces()), seed=st.integers(0, 2**31 - 1), size=st.sampled_from([28, 32, 224]))
def test_sampled_archs_round_trip_losslessly(space: str, seed: int, size: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    arch = sample_arch(study.ask(), load_space(space), size, 3, 10)
    text = arch.to_json()
    again = Arch.from_json(text)
    assert again == arch
    assert again.to_json() == text
    assert parse_block_strings(block_strings(arch), arch.stem.out) == arch.blocks


@pytest.mark.parametrize("name", reference_names())
def test_reference_archs_round_trip(name: str) -> None:
    arch = reference_arch(name)
    assert Arch.from_dict(json.loads(arch.to_json())) == arch


def test_block_strings_use_timms_meaning() -> None:
    block = Block(type="ir", kernel=5, stride=2, expand=3, out=40, se=0.25, act="relu")
    assert block_string(block, 24) == "ir_r1_k5_s2_e3_c40_se0.25_nre"
    # timm's ds: depthwise + act, linear pointwise, shortcut when shapes match = our ir without expansion.
    assert parse_block_string("ds_r1_k3_s1_c16_nhs", 16) == Block(
        type="ir", kernel=3, stride=1, expand=1, out=16, se=0, act="hswish"
    )
    # timm's dsa: pointwise activation, never a shortcut = our ds (MobileNetV1's layer), at any shape.
    assert parse_block_string("dsa_r1_k3_s2_c32_se0.25_nre", 16) == Block(
        type="ds", kernel=3, stride=2, expand=1, out=32, se=0.25, act="relu"
    )
    assert parse_block_string("dsa_r1_k3_s1_c16_nre", 16).type == "ds"
    assert parse_block_string("ir_r1_k3_s1_e2.3_c80_nr6", 40).expand == pytest.approx(2.3)
    assert parse_block_string("ir_r1_k3_s2_e6_c24_noskip_nre", 16).type == "ir"  # no shortcut anyway


@pytest.mark.parametrize(
    ("text", "in_chs"),
    [
        ("ir_r1_k3_s1_e6_c16_noskip_nre", 16),
        ("ir_r1_k3_s1_e1_c16_nre", 8),  # timm keeps an expansion conv at e1; ours has none
        ("ds_r1_k3_s1_c16_noskip_nre", 16),
    ],
)
def test_timm_strings_mbsearch_cannot_build_are_refused(text: str, in_chs: int) -> None:
    with pytest.raises(NotExpressible):
        parse_block_string(text, in_chs)


@pytest.mark.parametrize(
    "text",
    [
        "xx_r1_k3_s1_c8_nre",
        "ir_r2_k3_s1_e3_c8_nre",
        "ir_r1_kq_s1_e3_c8_nre",
        "ir_r1_k3_s1_e3_c8_nzz",
        "ds_r1_k3_c8_nre",
    ],
)
def test_bad_block_strings_are_refused(text: str) -> None:
    with pytest.raises(BadInput):
        parse_block_string(text, 8)


def _mutate(path: list, value) -> dict:
    data = _arch_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["blocks", 0, "kernel"], 4, "blocks[0].kernel: kernel must be odd"),
        (["blocks", 0, "kernel"], 0, "kernel must be odd"),
        (["blocks", 1, "stride"], 3, "blocks[1].stride: Input should be 1 or 2"),
        (["blocks", 1, "out"], -8, "blocks[1].out: Input should be greater than 0"),
        (["stem", "out"], 0, "stem.out"),
        (["blocks", 0, "type"], "conv", "blocks[0].type: Input should be 'ir', 'ds' or 'dsr'"),
        (["blocks", 0, "act"], "gelu", "blocks[0].act"),
        (["blocks", 0, "colour"], "red", "blocks[0].colour: unknown key"),
        (["blocks", 0, "kernel"], "3", "blocks[0].kernel"),
        (["format"], "mbsearch.spec.arch/9", "unsupported version"),
        (["blocks"], [], "blocks"),
    ],
)
def test_invalid_arch_is_one_clear_line(path: list, value, expected: str) -> None:
    with pytest.raises(BadInput) as info:
        Arch.from_dict(_mutate(path, value), "a.json")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("a.json: ")
    assert expected in message


def test_missing_key_and_too_many_blocks_are_refused() -> None:
    data = _arch_dict()
    del data["head"]
    with pytest.raises(BadInput, match="head: missing required key"):
        Arch.from_dict(data)
    data = _arch_dict()
    data["blocks"] = data["blocks"] * (MAX_BLOCKS // len(data["blocks"]) + 1)
    with pytest.raises(BadInput, match="over the limit"):
        Arch.from_dict(data)


def test_ds_block_with_expansion_is_refused() -> None:
    # The first block of MobileNetV3-Small has expand 1, so it may become ds; the second (4.5) may not.
    assert Arch.from_dict(_mutate(["blocks", 0, "type"], "ds")).blocks[0].type == "ds"
    with pytest.raises(BadInput, match="ds block has no expansion"):
        Arch.from_dict(_mutate(["blocks", 1, "type"], "ds"))


def test_load_arch_reports_truncated_json(tmp_path) -> None:
    path = tmp_path / "a.json"
    path.write_text(reference_arch("mobilenet_v2").to_json()[:200])
    with pytest.raises(BadInput, match="invalid JSON"):
        load_arch(path)
