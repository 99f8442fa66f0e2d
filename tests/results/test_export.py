from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

from mbsearch.architecture.arch import load_arch
from mbsearch.architecture.blockstrings import NotExpressible, timm_arch_def
from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app
from mbsearch.nn.model import build_model
from mbsearch.results.export import pick_row


def test_export_knee_writes_json_with_metrics_and_provenance_that_rebuilds(runner, tiny_study, tmp_path) -> None:
    runs, name, result = tiny_study
    out, onnx_path = tmp_path / "best.json", tmp_path / "best.onnx"
    cli = runner.invoke(
        app,
        ["export", name, "--runs-dir", str(runs), "--pick", "knee", "-o", str(out), "--onnx", str(onnx_path)],
    )
    assert cli.exit_code == 0, cli.output
    arch = load_arch(out)
    trial = result.study.trials[arch.provenance["trial"]]
    assert arch.provenance["study"] == name and arch.provenance["dataset"] == "fashion-mnist"
    assert arch.provenance["budget"]["train_size"] == 256 and arch.provenance["runtime"] == "onnxruntime"
    assert arch.metrics["val_accuracy"] == trial.user_attrs["val_accuracy"]
    assert arch.metrics["latency_ms"] == trial.user_attrs["latency_ms"]
    assert arch.blocks == load_arch_from_trial(trial).blocks
    shown = runner.invoke(app, ["show", str(out), "--json"])
    assert json.loads(shown.stdout)["params"] == arch.metrics["params"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 1, 28, 28]


@pytest.mark.parametrize("pick", ["knee", "max-accuracy", "min-latency"])
def test_export_timm_prints_timms_arch_def_or_refuses_with_nothing_written(runner, tiny_study, tmp_path, pick) -> None:
    runs, name, _ = tiny_study
    out = tmp_path / "best.json"
    plain = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--pick", pick, "-o", str(out)])
    arch = load_arch(out)
    out.unlink()
    cli = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--pick", pick, "-o", str(out), "--timm"])
    try:
        expected = timm_arch_def(arch)
    except NotExpressible:
        assert plain.exit_code == 0 and cli.exit_code == 2
        assert "no timm equivalent" in cli.stderr and not out.exists()
    else:
        assert cli.exit_code == 0, cli.output
        assert json.loads(cli.stdout[cli.stdout.index("[") :]) == expected


def load_arch_from_trial(trial):
    from mbsearch.architecture.arch import Arch

    return Arch.from_dict(trial.user_attrs["arch"])


@pytest.mark.parametrize("pick", ["max-accuracy", "min-latency"])
def test_picks_choose_the_extremes_of_the_front(tiny_study, pick: str) -> None:
    _, _, result = tiny_study
    row = pick_row(result.front, pick)
    if pick == "max-accuracy":
        assert row["val_accuracy"] == result.front["val_accuracy"].max()
    else:
        assert row["latency_ms"] == result.front["latency_ms"].min()


def test_onnx_matches_torch_numerically(tmp_path) -> None:
    from mbsearch.nn.onnx_export import write_onnx

    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    write_onnx(arch, tmp_path / "m.onnx", model)
    x = torch.randn(1, 1, 28, 28)
    with torch.inference_mode():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_timm_arch_def_groups_blocks_into_stages() -> None:
    stages = timm_arch_def(reference_arch("mobilenet_v3_large"))
    assert stages[0] == ["ds_r1_k3_s1_c16_nre"]  # expansion 1: timm's ds, not ir_e1
    assert [len(s) for s in stages] == [1, 2, 3, 4, 2, 3]  # timm: 16 | 24 | 40 | 80 | 112 | 160
    assert stages[-1][0].startswith("ir_r1_k5_s2_e6_c160_se0.25_nhs")


def _one_line_exit_2(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_export_bad_input(runner, tiny_study, tmp_path) -> None:
    runs, name, _ = tiny_study
    out = tmp_path / "x.json"
    _one_line_exit_2(
        runner.invoke(app, ["export", "nope", "--runs-dir", str(runs), "-o", str(out)]), "unknown study 'nope'"
    )
    _one_line_exit_2(
        runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--max-latency", "0.000001", "-o", str(out)]),
        "no Pareto point meets --max-latency",
    )
    _one_line_exit_2(
        runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--pick", "best", "-o", str(out)]),
        "unknown --pick 'best'",
    )
    assert not out.exists()
    empty = tmp_path / "empty"
    (empty / "idle").mkdir(parents=True)
    study = optuna.create_study(study_name="idle", storage=f"sqlite:///{empty / 'idle' / 'study.db'}")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    _one_line_exit_2(
        runner.invoke(app, ["export", "idle", "--runs-dir", str(empty)]), "none of its 1 trial(s) completed"
    )


def test_fast_onnx_exporter_is_taken_for_every_block_type(capsys) -> None:
    """Every block kind the spaces can produce exports with the TorchScript exporter, never the slow path."""
    from mbsearch.architecture.arch import Block
    from mbsearch.nn.onnx_export import export_onnx

    base = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    kinds = [
        Block(type="ds", kernel=3, stride=1, expand=1, out=8, se=0, act="relu"),  # ds with a shortcut
        Block(type="ds", kernel=5, stride=2, expand=1, out=16, se=0.25, act="hswish"),
        Block(type="ir", kernel=7, stride=1, expand=1, out=16, se=0.25, act="relu6"),  # no expansion conv
        Block(type="ir", kernel=3, stride=2, expand=6, out=24, se=0, act="hswish"),
        Block(type="ir", kernel=3, stride=1, expand=4.5, out=24, se=0.25, act="relu"),  # shortcut + SE
    ]
    arch = base.model_copy(update={"blocks": tuple(kinds)})
    torch.manual_seed(0)
    exported = export_onnx(build_model(arch), arch)
    assert exported.exporter == "torchscript"
    assert "warning" not in capsys.readouterr().err
    session = ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == [1, 10]


def test_the_shipped_onnx_is_the_graph_the_search_timed(tmp_path) -> None:
    """Issue 20: `export --onnx`, `train` and `adapt` write exactly the graph a search times (one exporter),
    for every block kind; before, the search timed the TorchScript exporter's graph and shipped dynamo's."""
    from mbsearch.architecture.arch import Block
    from mbsearch.latency.targets import exported
    from mbsearch.nn.onnx_export import write_onnx

    base = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    kinds = [
        Block(type="ds", kernel=3, stride=1, expand=1, out=8, se=0, act="relu"),
        Block(type="dsr", kernel=3, stride=1, expand=1, out=8, se=0.25, act="hswish"),  # ds with a shortcut
        Block(type="ir", kernel=7, stride=1, expand=1, out=16, se=0.25, act="relu6"),
        Block(type="ir", kernel=3, stride=2, expand=6, out=24, se=0, act="hswish"),
        Block(type="ir", kernel=5, stride=1, expand=4.5, out=24, se=0.25, act="relu", mid=100),  # adapt's mid
    ]
    arch = base.model_copy(update={"blocks": tuple(kinds)})
    torch.manual_seed(0)
    model = build_model(arch)
    write_onnx(arch, tmp_path / "shipped.onnx", model)
    assert (tmp_path / "shipped.onnx").read_bytes() == exported(model, arch).payload
