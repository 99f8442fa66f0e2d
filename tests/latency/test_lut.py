"""Per-block lookup tables: built on this CPU for a small space, saved, loaded, used by a search."""

from __future__ import annotations

import json

import optuna
import pytest

from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.latency.lut import FORMAT, LookupTable, arch_parts, profile, space_parts
from mbsearch.latency.targets import LocalTarget, measure_on
from mbsearch.nn.model import build_model
from mbsearch.search.loop import run_search
from mbsearch.spec.arch import Arch
from mbsearch.spec.sample import random_arch
from mbsearch.spec.space import load_space
from mbsearch.study.config import RunConfig
from tests.conftest import TINY_BUDGET

SMALL_SPACE = """
name: small
stem: {out: 16, kernel: 3, stride: 2, act: hswish}
width: [0.5, 1.0]
choices: {block: [ir, ds], kernel: [3, 5], expand: [1, 3], se: [0, 0.25], act: [relu], depth: [1, 2]}
stages:
  - {out: 16, stride: 1}
  - {out: 24, stride: 2}
  - {out: 40, stride: 2}
head: {conv: 96, hidden: 128, act: hswish, dropout: 0.2}
"""


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(tmp_path))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The space file and a table profiled for it on this CPU, with 6 calibration networks."""
    folder = tmp_path_factory.mktemp("lut")
    path = folder / "small.yaml"
    path.write_text(SMALL_SPACE)
    table = profile(load_space(path), LocalTarget("cpu", "onnxruntime", 1), 28, 1, 10, calibrate=6)
    table.save(folder / "small-lut.json")
    return path, folder / "small-lut.json", table


def test_every_sampled_network_is_covered_by_the_parts_of_its_space(small) -> None:
    space_path, _, table = small
    space = load_space(space_path)
    keys = set(space_parts(space, 28, 1, 10))
    assert set(table.data.entries) == keys
    for seed in range(25):
        arch = random_arch(space, seed, 28, 1, 10)
        assert {part.key for part in arch_parts(arch)} <= keys
        assert table.predict(arch) > 0


def test_table_round_trips_through_its_file(small) -> None:
    space_path, lut_path, table = small
    raw = json.loads(lut_path.read_text())
    assert raw["format"] == FORMAT and raw["space"] == "small" and raw["input"] == {"channels": 1, "size": 28}
    assert raw["device"]["fingerprint"] == LocalTarget().device()["fingerprint"]
    assert raw["calibration"]["networks"] == 6 and raw["use"] in ("sum", "corrected")
    loaded = LookupTable.load(lut_path)
    assert loaded.data == table.data
    arch = random_arch(load_space(space_path), 3, 28, 1, 10)
    assert loaded.predict(arch) == table.predict(arch)
    assert loaded.device()["fingerprint"].startswith("lut-")
    assert loaded.device()["predicts_for"] == raw["device"]["fingerprint"]


def test_predictions_are_in_the_range_of_whole_network_timings(small) -> None:
    """A loose check that the parts add up to a network (benchmarks/latency.py measures the error). The
    plain sum is checked: the correction fitted on 6 calibration networks may extrapolate far on a loaded
    VM (CI saw 0.024 ms predicted against 0.076 ms measured), which is the benchmark's to measure."""
    space_path, _, table = small
    for seed in (100, 101, 102):
        arch = random_arch(load_space(space_path), seed, 28, 1, 10)
        measured = measure_on(LocalTarget(), build_model(arch), arch).median_ms
        assert 0.4 * measured < table.predict(arch, how="sum") < 2.5 * measured


def test_search_on_predicted_latency_then_confirm_on_the_cpu(small, tmp_path, runner) -> None:
    from mbsearch.cli.app import app
    from mbsearch.results.retime import retimings

    space_path, lut_path, table = small
    config = RunConfig(
        space=str(space_path),
        latency="predicted",
        lut=lut_path,
        confirm_on="cpu",
        runs_dir=tmp_path,
        trials=4,
        sampler="random",
        **TINY_BUDGET,
    )
    assert config.study_name == "small-predicted-fashion-mnist"
    result = run_search(config)
    for trial in result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert trial.user_attrs["latency_ms"] == table.predict(Arch.from_dict(trial.user_attrs["arch"]))
        assert trial.user_attrs["latency_iqr_ms"] == 0.0
    timed = retimings(result.study)
    assert set(timed) == set(result.front["number"]) and all(r["latency_ms"] > 0 for r in timed.values())
    outcome = runner.invoke(app, ["report", config.study_name, "--runs-dir", str(tmp_path), "--no-baselines"])
    assert outcome.exit_code == 0, outcome.output
    page = (tmp_path / config.study_name / "report.html").read_text()
    assert "predicted by the lookup table" in page and "id='confirmed-table'" in page


def test_a_table_for_another_input_or_space_is_refused_before_the_search(small, tmp_path) -> None:
    space_path, lut_path, _ = small
    with pytest.raises(BadInput, match=r"made for input 1x28 \(search: 1x64\)"):
        run_search(
            RunConfig(
                space=str(space_path), latency="predicted", lut=lut_path, latency_input_size=64, runs_dir=tmp_path
            )
        )
    with pytest.raises(BadInput, match=r"made for space small \(search: v3\)"):
        run_search(RunConfig(latency="predicted", lut=lut_path, runs_dir=tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half-made


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "JSON"),
        ('{"format": "mbsearch.latency.lut/9"}', "rebuild it with 'mbsearch profile'"),
        ('{"format": "mbsearch.latency.lut/1", "space": "x"}', "input"),
    ],
)
def test_a_broken_table_file_is_one_clear_line(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "lut.json"
    path.write_text(content)
    with pytest.raises(BadInput, match=message):
        LookupTable.load(path)


def test_a_network_outside_the_table_is_a_clear_failure(small) -> None:
    _, _, table = small
    with pytest.raises(RuntimeFailure, match="is not in the lookup table"):
        table.predict(random_arch(load_space("v3"), 0, 28, 1, 10))


def test_profile_command_writes_the_table_and_resumes_from_its_partial_file(small, tmp_path, runner) -> None:
    from mbsearch.cli.app import app

    space_path, _, _ = small
    output = tmp_path / "lut.json"
    keys = list(space_parts(load_space(space_path), 28, 1, 10))
    # An interrupted profile left every part behind: the rerun times none of them again.
    header = {"space": "small", "input": "1x28", "device": LocalTarget().device()["fingerprint"]}
    entries = dict.fromkeys(keys, 0.125) | {"empty-run": 0.01}
    (tmp_path / "lut.json.partial").write_text(json.dumps({"header": header, "entries": entries}))
    outcome = runner.invoke(app, ["profile", "--space", str(space_path), "--calibrate", "0", "-o", str(output)])
    assert outcome.exit_code == 0, outcome.output
    table = LookupTable.load(output)
    assert table.data.entries == dict.fromkeys(keys, 0.125) and table.data.run_overhead_ms == 0.01
    assert not (tmp_path / "lut.json.partial").exists()
    assert f"profiling {len(keys)} parts of space small" in outcome.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("negative", "entries"),
        ("nan", "entries"),
        ("no input size", "input.size"),
        ("missing part", "lacks 1 part"),
    ],
)
def test_a_table_is_checked_completely_before_anything_starts(small, tmp_path, change: str, message: str) -> None:
    """Issue 16: a negative entry reached the front, a NaN one cost 5 trainings and left a half-made study,
    a table without the input's keys crashed, and a missing part was found only after 5 trainings."""
    space_path, lut_path, _ = small
    raw = json.loads(lut_path.read_text())
    first = next(iter(raw["entries"]))
    if change == "negative":
        raw["entries"][first] = -0.5
    elif change == "nan":
        raw["entries"][first] = float("nan")
    elif change == "no input size":
        del raw["input"]["size"]
    else:
        del raw["entries"][next(key for key in raw["entries"] if key.startswith("block|"))]
    broken = tmp_path / "broken-lut.json"
    broken.write_text(json.dumps(raw))
    runs = tmp_path / "runs"
    with pytest.raises(BadInput, match=message):
        run_search(RunConfig(space=str(space_path), latency="predicted", lut=broken, runs_dir=runs, **TINY_BUDGET))
    assert not runs.exists() or not any(runs.iterdir())  # no study, no half-made folder
