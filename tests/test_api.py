"""mbsearch from Python (issue 39, first part): search, open_study, and a Study's trials, front, pick, export
and report, on the same library calls as the command line."""

from __future__ import annotations

import json

import pytest

import mbsearch
from mbsearch.architecture.arch import load_arch
from mbsearch.cli.app import app
from tests.conftest import TINY_BUDGET


def test_a_search_from_python_gives_the_trials_front_pick_export_and_report(runner, tmp_path) -> None:
    study = mbsearch.search(runs_dir=tmp_path, study="py", trials=2, sampler="random", **TINY_BUDGET)
    assert isinstance(study, mbsearch.Study) and study.name == "py"
    assert len(study.trials) == 2 and set(study.trials["state"]) == {"COMPLETE"}
    assert not study.front.empty and set(study.front["number"]) <= set(study.trials["number"])
    with pytest.raises(mbsearch.BadInput, match="unknown --pick 'best'"):
        study.pick("best")
    knee = study.pick("knee")
    assert knee.provenance["study"] == "py" and int(knee.provenance["trial"]) in set(study.front["number"])
    assert mbsearch.build_model(knee) is not None
    written = study.export(tmp_path / "best.json")
    assert load_arch(tmp_path / "best.json").key() == written.key() == knee.key()
    # the command line reads the same study and picks the same trial
    cli = runner.invoke(app, ["export", "py", "--runs-dir", str(tmp_path), "-o", str(tmp_path / "cli.json")])
    assert cli.exit_code == 0, cli.output
    assert json.loads((tmp_path / "cli.json").read_text())["provenance"]["trial"] == knee.provenance["trial"]
    page = study.report(baselines=False)
    assert page == tmp_path / "py" / "report.html" and "Pareto" in page.read_text()
    # a rerun of the same settings resumes the same study (2 trials stay 2), and open_study finds it
    again = mbsearch.search(runs_dir=tmp_path, study="py", trials=2, sampler="random", **TINY_BUDGET)
    assert len(again.trials) == 2
    assert len(mbsearch.open_study("py", runs_dir=tmp_path).trials) == 2


def test_open_study_refuses_an_unknown_study_with_one_clear_error(tmp_path) -> None:
    with pytest.raises(mbsearch.BadInput, match="nope"):
        mbsearch.open_study("nope", runs_dir=tmp_path)
    with pytest.raises(mbsearch.BadInput, match="nope"):
        mbsearch.Study("nope", tmp_path).pick("knee")
