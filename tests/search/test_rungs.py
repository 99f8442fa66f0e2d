"""Multi-fidelity search: promotion by Pareto rank, stored with the same trial, exact trial counts."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from mbsearch.errors import BadInput
from mbsearch.results.pareto import (
    MULTI_FIDELITY,
    decision_front,
    dominates_at_shared_rung,
    pareto_front,
    pareto_ranking,
    trials_frame,
)
from mbsearch.search.loop import run_search
from mbsearch.search.rungs import promotable, rung_budget
from mbsearch.study.config import RunConfig, parse_rungs
from mbsearch.train.budget import Budget

COMPLETE = optuna.trial.TrialState.COMPLETE


def _frame(points: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "number": range(len(points)),
            "state": "COMPLETE",
            "feasible": True,
            "skipped": None,
            "val_accuracy": [a for a, _ in points],
            "latency_ms": [lat for _, lat in points],
            "rung": 0,
            "rung_accuracies": [{0: a} for a, _ in points],
        }
    )


def test_promotion_takes_the_top_by_pareto_rank_not_by_accuracy_alone() -> None:
    # 0, 1, 2 form the front (fast-and-weak to slow-and-strong); 3-5 are dominated.
    frame = _frame([(0.60, 0.1), (0.70, 0.2), (0.80, 0.4), (0.59, 0.3), (0.65, 0.5), (0.75, 0.9)])
    assert sorted(n for n, _ in promotable(frame, 2, eta=2)) == [0, 1, 2]
    assert len(promotable(frame, 2, eta=3)) == 2  # the quota is floor(6 / eta)
    assert {n for n, _ in promotable(frame, 2, eta=3)} <= {0, 1, 2}
    # Once promoted, a trial is not promoted to the same rung again; the next rung ranks on its new accuracy.
    frame.loc[[0, 1, 2], "rung"] = 1
    frame["rung_accuracies"] = [{0: 0.6, 1: 0.9}, {0: 0.7, 1: 0.71}, {0: 0.8, 1: 0.72}, *frame["rung_accuracies"][3:]]
    jobs = promotable(frame, 3, eta=2)
    assert (0, 2) in jobs and all(rung == 2 for _, rung in jobs if _ in (0, 1, 2))
    assert not any(rung == 1 for n, rung in jobs if n in (0, 1, 2))


def test_rung_budgets_grow_images_first_then_epochs() -> None:
    base = Budget(epochs=1, train_size=4000)
    assert rung_budget(base, 3, 58_000).train_size == 12_000
    top = rung_budget(base, 29, 58_000)
    assert top.train_size == 58_000 and top.epochs == pytest.approx(2.0)
    assert parse_rungs("1,3,9") == (1, 3, 9)
    for bad in ("3,9", "1,1", "1,x", "1,5000"):
        with pytest.raises(ValueError):
            parse_rungs(bad)


def _config(tmp_path, **changes) -> RunConfig:
    values = dict(
        runs_dir=tmp_path, study="mf", trials=4, sampler="random", train_size=128, val_size=256, epochs=0.5,
        batch_size=64, train_threads=1, rungs="1,2", eta=2, device="cpu",
    )  # fmt: skip
    return RunConfig(**(values | changes))


def _rung_records(study: optuna.Study) -> dict[int, dict]:
    return {int(k.rsplit(":", 1)[1]): v for k, v in study.user_attrs.items() if k.startswith("eval:rung1:")}


def test_promoted_trials_keep_their_identity_and_counts_stay_exact_across_resume(tmp_path) -> None:
    result = run_search(_config(tmp_path))
    study = result.study
    assert len(study.get_trials(states=(COMPLETE,))) == 4 and len(study.trials) == 4
    first = _rung_records(study)
    frame = trials_frame(study)
    # Asynchronous: a trial promoted early (top 1 of 2) stays promoted; at the end no promotion is due,
    # so the top floor(4 / eta) by Pareto rank have all been promoted.
    assert set(pareto_ranking(frame)[:2]) <= set(first) and 2 <= len(first) <= 3
    assert promotable(frame, 2, 2) == []
    for number, record in first.items():
        assert record["budget"]["train_size"] == 256  # rung multiplier 2 x 128 images
        assert record["seed"] != 0  # never the proxy's seed: the promotion starts from other initial weights
        assert frame.loc[frame["number"] == number, "rung"].item() == 1
    assert result.basis == MULTI_FIDELITY
    kept = trials_frame(study)
    for number in set(kept["number"]) - set(result.front["number"]):  # every dropped trial: a reason at a shared rung
        row = kept[kept["number"] == number].iloc[0]
        assert any(dominates_at_shared_rung(other, row) for _, other in kept.iterrows() if other["number"] != number)

    resumed = run_search(_config(tmp_path, trials=6))
    study = resumed.study
    assert len(study.get_trials(states=(COMPLETE,))) == 6 and len(study.trials) == 6
    again = _rung_records(study)
    frame = trials_frame(study)
    assert set(pareto_ranking(frame)[:3]) <= set(again) and promotable(frame, 2, 2) == []
    assert all(again[n] == record for n, record in first.items())  # earlier promotions kept, not redone


def test_rungs_need_the_pareto_objective() -> None:
    with pytest.raises(ValueError, match="--rungs"):
        RunConfig(rungs="1,3", objective="mnas", latency_target=1.0)
    with pytest.raises(ValueError, match="--rungs"):
        RunConfig(rungs="2,3")


@pytest.mark.slow
def test_two_workers_on_postgres_promote_without_duplicates_and_reach_the_exact_count(postgres, tmp_path) -> None:
    from rich.console import Console

    from mbsearch.search.workers import run_workers

    url = postgres.new_database()
    result = run_workers(_config(tmp_path, storage=url, workers=2, trials=6), Console(quiet=True))
    study = optuna.load_study(study_name="mf", storage=url)
    assert len(study.get_trials(states=(COMPLETE,))) == 6
    records = _rung_records(study)
    assert len(records) >= 3 and all("accuracy" in r for r in records.values())
    assert result.basis == MULTI_FIDELITY


def test_bad_rungs_flag_is_one_line(runner, tmp_path) -> None:
    from mbsearch.cli.app import app

    result = runner.invoke(app, ["run", "--rungs", "1,0.5", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--rungs" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    assert BadInput  # the CLI maps the validation error to BadInput (exit 2)


def test_the_decision_front_keeps_rung0_points_no_higher_rung_beats() -> None:
    """Issue 17's regression case: a 30-trial study with --rungs 1,3,9. After the first rung-2 evaluation
    the old decision front kept only trials at the top rung (one point: the fastest, weakest network).
    Now a trial is dropped only by a trial that dominates it at the highest rung both reached."""
    import numpy as np

    rng = np.random.default_rng(0)
    latency = np.sort(rng.uniform(0.1, 1.0, 30))
    accuracy = 0.5 + 0.3 * np.sqrt(latency) + rng.normal(0, 0.02, 30)  # a front with noise
    frame = _frame(list(zip(accuracy.tolist(), latency.tolist(), strict=True)))
    first = set(pareto_front(frame)["number"])
    assert len(first) >= 5
    # Promote: the fastest front point reaches rung 2 (as in the report), two others rung 1, with new accuracies.
    fastest, *others = sorted(first)
    promoted = {fastest: {1: accuracy[fastest] + 0.01, 2: accuracy[fastest] + 0.02}}
    promoted |= {n: {1: accuracy[n] + 0.01} for n in others[:2]}
    frame["rung_accuracies"] = [
        r | promoted.get(n, {}) for n, r in zip(frame["number"], frame["rung_accuracies"], strict=True)
    ]
    frame["rung"] = [max(r) for r in frame["rung_accuracies"]]
    frame["rung_accuracy"] = [r[max(r)] for r in frame["rung_accuracies"]]
    frame["verified_accuracy"] = float("nan")
    decision, basis = decision_front(frame)
    assert basis == MULTI_FIDELITY
    assert first - {fastest, *others[:2]} <= set(decision["number"])  # rung-0 points nothing beat are kept
    assert len(decision) >= len(first) - 1
    # And a promoted trial that does worse at its rung than another promoted one is dropped by that evidence.
    a, b = others[0], others[1]
    frame.loc[frame["number"] == b, "latency_ms"] = float(frame.loc[frame["number"] == a, "latency_ms"].iloc[0]) + 0.01
    frame["rung_accuracies"] = [
        r | ({1: promoted[a][1] - 0.05} if n == b else {})
        for n, r in zip(frame["number"], frame["rung_accuracies"], strict=True)
    ]
    decision, _ = decision_front(frame)
    assert b not in set(decision["number"])
