"""Issue 20: every study records how its latencies were taken (recipe and exporter), and a resumed study
timed another way is refused instead of mixing two kinds of latency on one front."""

from __future__ import annotations

import optuna
import pytest

from mbsearch.errors import BadInput
from mbsearch.latency.targets import (
    POOLED_RECIPE,
    SEARCH_RECIPE,
    LocalTarget,
    measure_on,
    recipe_of,
    timing_identity,
)
from mbsearch.nn.model import build_model
from mbsearch.search.loop import check_device
from mbsearch.spec.zoo import reference_arch
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


@pytest.mark.parametrize("recorded", ["pooled", "none"])
def test_a_study_started_before_the_gated_recipe_resumes_with_its_own(recorded: str) -> None:
    """Studies timed by the pooled recipe (recorded, or from before any record) keep it when resumed: the
    front never mixes pooled and gated latencies, and the study is not lost to the upgrade."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    check_device(study, LocalTarget())
    stored = study.user_attrs[records.DEVICE]
    old = stored | {"timing": {"recipe": POOLED_RECIPE, "exporter": stored["timing"]["exporter"]}}
    if recorded == "none":
        old = {key: value for key, value in stored.items() if key != "timing"}
    study.set_user_attr(records.DEVICE, old)
    resumed = LocalTarget()
    check_device(study, resumed)
    assert recipe_of(resumed) == POOLED_RECIPE and recipe_of(LocalTarget()) == SEARCH_RECIPE
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    stats = measure_on(resumed, build_model(arch), arch)
    assert stats.runs == POOLED_RECIPE["runs"] and stats.attempts <= POOLED_RECIPE["attempts"]  # timed the old way
