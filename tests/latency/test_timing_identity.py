"""Issue 20: every study records how its latencies were taken (recipe and exporter), and a resumed study
timed another way is refused instead of mixing two kinds of latency on one front."""

from __future__ import annotations

import optuna
import pytest

from mbsearch.errors import BadInput
from mbsearch.latency.targets import SEARCH_RECIPE, LocalTarget, timing_identity
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
