"""--precision int8 (issue 28): each trained candidate is quantized by ONNX Runtime (static, QDQ, per-channel,
calibrated on training images), its int8 accuracy and int8 latency are the objectives, the float numbers
are kept beside them, and `export --onnx` writes the very graph that was scored and timed."""

from __future__ import annotations

import numpy as np
import onnx
import optuna
import pytest

from mbsearch.cli.app import app
from mbsearch.nn.quantize import onnx_accuracy
from mbsearch.study import records
from mbsearch.study.storage import open_storage
from mbsearch.train.data import load_dataset
from mbsearch.train.loop import Normalizer

pytestmark = pytest.mark.slow
# 2 epochs x 4,096 images: enough training for accuracies well above chance, where int8 error shows
BUDGET = ["--train-size", "4096", "--val-size", "1000", "--epochs", "2", "--batch-size", "64", "--device", "cpu"]
INT8_BOUND = 0.03  # stated bound: per-channel int8 within 3 points of float (seen here: 0.7 points)
# A small MobileNetV3-style space: every operator int8 must handle (inverted residuals with SE and h-swish,
# the hidden head layer), at networks that train in seconds; the shipped v3 space's random networks made this
# test take 5-7 minutes on the 2-core VM (2026-12-08).
SMALL_V3 = """
name: small-v3
stem: {out: 16, kernel: 3, stride: 2, act: hswish}
width: [1.0]
choices: {block: [ir], kernel: [3, 5], expand: [3, 4], se: [0, 0.25], act: [relu, hswish], depth: [1, 2]}
stages:
  - {out: 16, stride: 1, expand: [1]}
  - {out: 24, stride: 2}
  - {out: 40, stride: 2, se: [0.25], act: [hswish]}
  - {out: 80, stride: 2}
head: {conv: 480, hidden: 1024, act: hswish, dropout: 0.2}
"""


@pytest.mark.slow(seconds=120)
def test_an_int8_search_scores_and_times_the_quantized_graph_and_exports_it(runner, tmp_path) -> None:
    runs = tmp_path / "runs"
    space = tmp_path / "small-v3.yaml"
    space.write_text(SMALL_V3)
    command = ["run", "--space", str(space), "--trials", "2", "--sampler", "random", "--precision", "int8",
               "--runs-dir", str(runs), "--study", "q", "--train-threads", "1", *BUDGET]  # fmt: skip
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="q", storage=open_storage(f"sqlite:///{runs / 'q' / 'study.db'}"))
    assert study.user_attrs[records.PRECISION]["recipe"]["per_channel"] is True
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        int8, fp32 = trial.user_attrs[records.VAL_ACCURACY], trial.user_attrs[records.FLOAT_VAL_ACCURACY]
        assert fp32 > 0.3 and abs(int8 - fp32) <= INT8_BOUND, (int8, fp32)
        assert trial.values == [int8, trial.user_attrs[records.LATENCY_MS]]
        assert trial.user_attrs[records.FLOAT_LATENCY_MS] > 0
    graph = tmp_path / "best.onnx"
    exported = runner.invoke(app, ["export", "q", "--runs-dir", str(runs), "--pick", "max-accuracy",
                                   "--output", str(tmp_path / "best.json"), "--onnx", str(graph)])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert "int8 ONNX" in exported.output
    model = onnx.load(graph)
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)  # a QDQ graph
    best = max(trials, key=lambda t: t.user_attrs[records.VAL_ACCURACY])
    from mbsearch.study.dashboard import trial_artifact

    assert graph.read_bytes() == trial_artifact(study, runs / "q", best.number, ".int8.onnx")  # the timed graph
    # Issue 35: on a host without the study's artifacts (a copied study.db) optuna's ArtifactNotFound
    # escaped as "internal error"; now one line that says what is missing, and nothing is written
    (runs / "q" / "artifacts").rename(runs / "q" / "elsewhere")
    (runs / "q" / "artifacts").mkdir()  # this host's own artifacts folder, without the search's files
    try:
        missing = runner.invoke(app, ["export", "q", "--runs-dir", str(runs), "--pick", "max-accuracy",
                                      "-o", str(tmp_path / "m.json"), "--onnx", str(tmp_path / "m.onnx")])  # fmt: skip
    finally:
        (runs / "q" / "artifacts").rmdir()
        (runs / "q" / "elsewhere").rename(runs / "q" / "artifacts")
    assert missing.exit_code == 2 and "internal error" not in missing.stderr, missing.output
    assert "int8 graph is not in" in missing.stderr and not (tmp_path / "m.onnx").exists()
    as_float = runner.invoke(app, ["export", "q", "--runs-dir", str(runs), "--pick", "max-accuracy", "--output",
                                   str(tmp_path / "f.json"), "--onnx", str(tmp_path / "f.onnx"),
                                   "--precision", "fp32"])  # fmt: skip
    assert as_float.exit_code == 0 and "untrained weights" in as_float.output
    assert not any(node.op_type == "QuantizeLinear" for node in onnx.load(tmp_path / "f.onnx").graph.node)
    data = load_dataset("fashion-mnist", val_size=1000, seed=0)
    normalize = Normalizer.fit(data.train.images[:4096])
    rescored = onnx_accuracy(graph.read_bytes(), normalize(data.val.images).numpy(), data.val.labels.numpy())
    assert rescored == best.user_attrs[records.VAL_ACCURACY]  # ONNX Runtime gives back the stored int8 accuracy
    assert np.isfinite(best.user_attrs[records.LATENCY_MS])
    resumed = runner.invoke(app, [*command[: -len(BUDGET)], *BUDGET[:-2], "--device", "cpu", "--precision", "fp32"])
    assert resumed.exit_code == 2 and "precision='int8'" in resumed.output  # a study keeps its precision

    # verify of an int8 study scores the retrained network's int8 graph, the float accuracy beside it
    # 4 epochs x 4,096 images at verify's batch of 128 (128 steps, as the search's 2 x 64 of batch 64): with 1
    # epoch (32 steps) a front member stayed at 0.23 float accuracy in one CI run, too near chance to test int8
    verified = runner.invoke(app, ["verify", "q", "--runs-dir", str(runs), "--top", "1", "--epochs", "4",
                                   "--train-size", "4096", "--device", "cpu", "--no-baselines"])  # fmt: skip
    assert verified.exit_code == 0, verified.output
    from mbsearch.results.finished import open_finished
    from mbsearch.study import evaluations

    finished = open_finished("q", runs, None)
    for record in evaluations.stored(finished.study, "verify")["verify"].values():  # the front: 1 or 2 trials
        assert record["float_accuracy"] > 0.3 and record["accuracy"] != record["float_accuracy"]
        assert abs(record["accuracy"] - record["float_accuracy"]) <= INT8_BOUND

    # the report's baselines of an int8 study are quantized, scored and timed as its trials are
    from mbsearch.report.page import _int8_baselines_text
    from mbsearch.results.baselines import baseline_frame

    int8_rows = baseline_frame(finished.settings, runs, names=["mobilenet_v3_small_050"])
    float_rows = baseline_frame(finished.settings | {"precision": "fp32"}, runs, names=["mobilenet_v3_small_050"])
    (int8_row,), (float_row,) = int8_rows.to_dict("records"), float_rows.to_dict("records")
    assert int8_row["float_val_accuracy"] == float_row["val_accuracy"]  # the same training, then quantized
    assert abs(int8_row["val_accuracy"] - float_row["val_accuracy"]) <= INT8_BOUND
    assert int8_row["latency_ms"] != int8_row["float_latency_ms"] and np.isnan(float_row["float_latency_ms"])
    assert "int8 speed-up" in _int8_baselines_text(int8_rows)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runtime", "torch"], "use --runtime onnxruntime"),
        (["--latency-input-size", "224"], "search at the deployment's --input-size"),
    ],
)
def test_int8_refuses_what_it_cannot_do_in_one_line(runner, tmp_path, flags, message) -> None:
    result = runner.invoke(app, ["run", "--precision", "int8", "--runs-dir", str(tmp_path), *flags])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_verify_of_a_float_study_refuses_another_precision(runner, tiny_study) -> None:
    runs, name, _ = tiny_study
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), "--precision", "int8"])
    assert result.exit_code == 2 and "searched in fp32" in result.output
    assert len(result.output.strip().splitlines()) == 1
    exported = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "--precision", "int8", "--onnx",
                                   str(runs / "x.onnx"), "--output", str(runs / "x.json")])  # fmt: skip
    assert exported.exit_code == 2 and "searched in fp32: its trials have no int8 graph" in exported.output
    assert not (runs / "x.json").exists() and not (runs / "x.onnx").exists()
