"""Issue 20: every study records how its latencies were taken (recipe and exporter), and a resumed study
timed another way is refused instead of mixing two kinds of latency on one front."""

from __future__ import annotations

import json

import optuna
import pytest

from mbsearch.architecture.zoo import reference_arch
from mbsearch.errors import BadInput
from mbsearch.latency.cache import measure_on
from mbsearch.latency.recipes import POOLED_RECIPE, ROUNDS_RECIPE_SMALL_PROBE, SEARCH_RECIPE, recipe_of, timing_identity
from mbsearch.latency.targets import LocalTarget
from mbsearch.nn.model import build_model
from mbsearch.search.loop import check_device
from mbsearch.study import records


def test_a_study_records_its_timing_recipe_and_refuses_another() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    target = LocalTarget()
    check_device(study, target)
    stored = study.user_attrs[records.DEVICE]
    assert stored["timing"] == timing_identity(target)
    assert stored["timing"]["recipe"] == SEARCH_RECIPE and stored["timing"]["exporter"]["exporter"] == "torchscript"
    check_device(study, target)  # the same recipe resumes
    study.set_user_attr(records.DEVICE, stored | {"timing": {"recipe": {"name": "pooled", "runs": 200}}})
    with pytest.raises(BadInput, match="latencies would not compare; use a new --study"):
        check_device(study, target)
    legacy = {key: value for key, value in stored.items() if key != "timing"}
    study.set_user_attr(records.DEVICE, legacy)  # a study from before the record: resumes as it did
    check_device(study, target)


@pytest.mark.parametrize("recorded", ["pooled", "none", "small-probe"])
def test_a_study_started_with_an_earlier_recipe_resumes_with_its_own(recorded: str) -> None:
    """Studies timed by an earlier recipe (pooled, recorded or from before any record; the gated recipe
    with the small probe) keep it when resumed: the front never mixes two kinds of latency, and the study
    is not lost to the upgrade."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    check_device(study, LocalTarget())
    stored = study.user_attrs[records.DEVICE]
    earlier = ROUNDS_RECIPE_SMALL_PROBE if recorded == "small-probe" else POOLED_RECIPE
    old = stored | {"timing": {"recipe": json.loads(json.dumps(earlier)), "exporter": stored["timing"]["exporter"]}}
    if recorded == "none":
        old = {key: value for key, value in stored.items() if key != "timing"}
    study.set_user_attr(records.DEVICE, old)
    resumed = LocalTarget()
    check_device(study, resumed)
    assert recipe_of(resumed) == earlier and recipe_of(LocalTarget()) == SEARCH_RECIPE != earlier
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    stats = measure_on(resumed, build_model(arch), arch)
    if recorded == "small-probe":
        assert stats.attempts >= ROUNDS_RECIPE_SMALL_PROBE["rounds"]  # gated turns, by the recorded recipe
    else:
        assert stats.runs == POOLED_RECIPE["runs"] and stats.attempts <= POOLED_RECIPE["attempts"]  # the old way
