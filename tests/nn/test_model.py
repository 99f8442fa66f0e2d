from __future__ import annotations

import optuna
import pytest
import torch

from mbsearch.architecture.plan import plan_layers
from mbsearch.architecture.sample import sample_arch
from mbsearch.architecture.space import list_spaces, load_space
from mbsearch.architecture.zoo import reference_arch
from mbsearch.nn.model import build_model


@pytest.mark.parametrize("space_name", list_spaces())
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (224, 3), (224, 1)])
def test_sampled_archs_build_and_run_forward(space_name: str, size: int, channels: int) -> None:
    space = load_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=size + channels))
    for _ in range(2):
        arch = sample_arch(study.ask(), space, size, channels, 10)
        model = build_model(arch).eval()
        with torch.inference_mode():
            out = model(torch.randn(2, channels, size, size))
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
        final = plan_layers(arch)[-1].out_size
        assert final >= 2  # small inputs drop early strides instead of collapsing to 1x1


def test_small_inputs_drop_early_strides_like_cifar_mobilenets() -> None:
    arch = reference_arch("mobilenet_v2", input_size=32, channels=3, num_classes=10)
    assert arch.stem.stride == 1
    assert [b.stride for b in arch.blocks][:2] == [1, 2]  # only the stem's stride is dropped
    assert plan_layers(arch)[-1].out_size == 2
    assert plan_layers(reference_arch("mobilenet_v2", input_size=28))[-1].out_size == 2
    assert plan_layers(reference_arch("mobilenet_v2"))[-1].out_size == 7
    tiny = reference_arch("mobilenet_v3_small", input_size=8)  # too small for any stride-2 step but one
    assert plan_layers(tiny)[-1].out_size == 2


def test_skip_connection_only_when_shapes_match() -> None:
    model = build_model(reference_arch("mobilenet_v2"))
    skips = [layer.has_skip for layer in list(model.features)[1:-1]]
    # MobileNetV2: t1 (16, no skip: 32->16), then per stage the first block has none, the repeats have one.
    assert "".join("T" if skip else "F" for skip in skips) == "FFTFTTFTTTFTTFTTF"


def test_expand_one_has_no_expansion_conv_and_se_uses_hard_sigmoid() -> None:
    model = build_model(reference_arch("mobilenet_v3_small"))
    first = model.features[1]
    assert isinstance(first.conv_pw, torch.nn.Identity)
    assert isinstance(first.se.gate, torch.nn.Hardsigmoid)
    assert first.se.fc1.out_channels == 8  # _make_divisible(16 // 4, 8)


def test_width_multiplier_scales_every_channel_count() -> None:
    space = load_space("v3")
    params = {"width": 0.5} | {
        f"s{i}_{k}": v
        for i in range(1, 7)
        for k, v in (("block", "ir"), ("kernel", 3), ("expand", 1.0), ("se", 0.0), ("act", "relu"), ("depth", 1))
    }
    narrow = sample_arch(optuna.trial.FixedTrial(params), space)
    wide = sample_arch(optuna.trial.FixedTrial(params | {"width": 1.0}), space)
    assert narrow.stem.out == 8 and wide.stem.out == 16
    assert [b.out for b in narrow.blocks] == [8, 16, 24, 40, 56, 80]
    assert [b.out for b in wide.blocks] == [16, 24, 40, 80, 112, 160]
    assert (narrow.head.conv, narrow.head.hidden) == (288, 512)
