from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbsearch.results.baselines import dominance
from mbsearch.results.pareto import hypervolume, knee, pareto_front, pareto_mask


def test_pareto_mask_keeps_only_non_dominated_points() -> None:
    accuracy = np.array([0.9, 0.8, 0.85, 0.7, 0.9])
    latency = np.array([2.0, 1.0, 3.0, 0.5, 2.5])
    assert pareto_mask(accuracy, latency).tolist() == [True, True, False, True, False]


def _frame(points, **extra) -> pd.DataFrame:
    rows = []
    for number, (acc, lat) in enumerate(points):
        rows.append(
            {
                "number": number,
                "state": "COMPLETE",
                "val_accuracy": acc,
                "latency_ms": lat,
                "feasible": True,
                "skipped": None,
            }
            | extra
        )
    return pd.DataFrame(rows)


def test_front_excludes_infeasible_skipped_and_failed_trials() -> None:
    frame = _frame([(0.9, 1.0), (0.95, 0.5), (0.5, 0.1)])
    frame.loc[1, "feasible"] = False
    frame.loc[2, "state"] = "FAIL"
    assert pareto_front(frame)["number"].tolist() == [0]
    frame.loc[1, "feasible"] = True
    frame.loc[1, "skipped"] = "over budget"
    assert pareto_front(frame)["number"].tolist() == [0]


def test_knee_is_the_point_of_best_trade_off() -> None:
    front = pd.DataFrame({"val_accuracy": [0.70, 0.88, 0.90, 0.91], "latency_ms": [0.1, 0.2, 1.0, 10.0]})
    assert knee(front) == 1
    assert knee(front.iloc[:2]) == 1  # two points: the more accurate one


def test_hypervolume_of_a_staircase() -> None:
    # Points (lat 1, acc .5) and (lat 2, acc .8), reference latency 4: .5*1 + .8*2 = 2.1
    assert hypervolume(np.array([0.5, 0.8]), np.array([1.0, 2.0]), 4.0) == pytest.approx(2.1)
    # A dominated point adds nothing.
    assert hypervolume(np.array([0.5, 0.8, 0.4]), np.array([1.0, 2.0, 3.0]), 4.0) == pytest.approx(2.1)


def test_dominance_says_by_how_much() -> None:
    front = pd.DataFrame({"val_accuracy": [0.80, 0.90], "latency_ms": [1.0, 2.0]})
    baselines = pd.DataFrame({"name": ["a", "b"], "val_accuracy": [0.85, 0.95], "latency_ms": [3.0, 1.5]})
    result = dominance(front, baselines).set_index("name")
    assert bool(result.loc["a", "dominated"]) is True
    assert result.loc["a", "accuracy_gain"] == pytest.approx(5.0)
    assert result.loc["a", "speedup"] == pytest.approx(1.5)
    assert bool(result.loc["b", "dominated"]) is False


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 10)), min_size=1, max_size=60))
def test_running_front_equals_the_front_computed_from_all_points(points) -> None:
    """The reporter's incremental front keeps exactly the non-dominated points (as a set)."""
    from mbsearch.search.progress import RunningFront

    running = RunningFront()
    for accuracy, latency in points:
        running.add(accuracy, latency)
    accuracy = np.array([p[0] for p in points])
    latency = np.array([p[1] for p in points])
    expected = {
        (a, lat) for a, lat, keep in zip(accuracy, latency, pareto_mask(accuracy, latency), strict=True) if keep
    }
    assert set(running.points) == expected


def test_a_predicted_search_confirms_its_front_and_the_candidates_uncertainty_could_put_there() -> None:
    """Issue 20: with --confirm-on, the front is timed, and so is every candidate whose latency, two sds
    faster than predicted, would be on the front; a candidate no front point would still dominate is not."""
    from mbsearch.results.retime import to_confirm

    # Front: 0 (0.80, 1.0 ms) and 1 (0.90, 2.0 ms). Trial 2 (0.85, 2.2 +- 0.3 ms) could be 1.6 ms: between
    # them, undominated. Trial 3 (0.85, 2.2 +- 0.01 ms) stays dominated by 1. Trial 4 (0.70, 3.0 +- 1 ms)
    # at 1.0 ms would still be dominated by 0.
    frame = _frame(
        [(0.80, 1.0), (0.90, 2.0), (0.85, 2.2), (0.85, 2.2), (0.70, 3.0)], verified_accuracy=float("nan"), rung=0
    )
    frame["latency_sd_ms"] = [0.05, 0.05, 0.3, 0.01, 1.0]
    assert to_confirm(frame) == [0, 1, 2]
    frame["latency_sd_ms"] = 0.0  # measured latencies: only the front
    assert to_confirm(frame) == [0, 1]


def _rung_frame(rows) -> pd.DataFrame:
    """Trials as (rung accuracies, latency, latency sd): a multi-fidelity study's frame."""
    frame = _frame([(r[0][0], r[1]) for r in rows], verified_accuracy=float("nan"))
    frame["rung_accuracies"] = [dict(r[0]) for r in rows]
    frame["rung"] = [max(r[0]) for r in rows]
    frame["rung_accuracy"] = [r[0][max(r[0])] for r in rows]
    frame["latency_sd_ms"] = [r[2] for r in rows]
    return frame


def _cycle() -> pd.DataFrame:
    """Three trials of equal latency: B beats A at rung 0, C beats B at rung 0, A beats C at rung 1 (which only
    A and C reached). Each is dominated by another: the shared-rung rule is not transitive."""
    return _rung_frame([({0: 0.70, 1: 0.90}, 1.0, 0.0), ({0: 0.80}, 1.0, 0.0), ({0: 0.90, 1: 0.80}, 1.0, 0.0)])


def _bounded(seconds: int):
    """Fail, instead of hanging the suite, where a call loops for ever (the old non-dominated sorting)."""
    import signal

    def expire(*_):
        raise TimeoutError(f"did not finish within {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


def test_a_cycle_of_shared_rung_dominance_keeps_its_members_and_sorting_ends() -> None:
    """Issue 30: the cycle gave an all-False mask; non-dominated sorting looped for ever (verify calls it)
    and the decision front was empty. The fixed point keeps the three, which beat each other in a cycle."""
    import signal

    from mbsearch.results.pareto import decision_front, multi_fidelity_mask, nondominated_layers

    frame = _cycle()
    assert multi_fidelity_mask(frame).tolist() == [True, True, True]
    _bounded(10)
    try:
        layers = nondominated_layers(frame, multi_fidelity=True)
    finally:
        signal.alarm(0)
    assert [sorted(layer["number"]) for layer in layers] == [[0, 1, 2]]
    front, basis = decision_front(frame)
    assert basis == "multi-fidelity" and sorted(front["number"]) == [0, 1, 2]
    assert front["val_accuracy"].notna().all()
    # a fourth trial that the cycle's member 2 dominates at rung 0, never beating any of them back, is dropped
    four = _rung_frame(
        [({0: 0.70, 1: 0.90}, 1.0, 0.0), ({0: 0.80}, 1.0, 0.0), ({0: 0.90, 1: 0.80}, 1.0, 0.0), ({0: 0.85}, 1.5, 0.0)]
    )
    assert multi_fidelity_mask(four).tolist() == [True, True, True, False]


def test_confirmation_judges_a_multi_fidelity_front_by_its_own_rule() -> None:
    """Issue 30: `to_confirm` compared rung accuracies by plain dominance. Trial 2 (proxy 0.82, 1.2 ± 0.1 ms)
    is dominated by trial 0 (proxy 0.83, 1.1 ms). Two sds faster (1.0 ms) trial 0 no longer dominates it,
    and trial 1 (promoted: proxy 0.80, rung 1 0.85, 1.0 ms) does not either at their shared rung 0, where
    trial 2 is the more accurate; plain dominance on rung accuracy (0.85 against 0.82) wrongly said it did."""
    from mbsearch.results.retime import to_confirm

    frame = _rung_frame([({0: 0.83}, 1.1, 0.0), ({0: 0.80, 1: 0.85}, 1.0, 0.0), ({0: 0.82}, 1.2, 0.1)])
    assert to_confirm(frame) == [0, 1, 2]
    frame["latency_sd_ms"] = 0.0  # measured: only the front
    assert to_confirm(frame) == [0, 1]


def test_a_multi_fidelity_front_meets_proxy_budget_baselines_on_its_proxy_accuracies() -> None:
    """Issue 30: a promoted trial's rung accuracy (a bigger budget) against baselines trained at the proxy
    budget inflated "dominates N baselines"."""
    from mbsearch.results.pareto import at_proxy_budget, decision_front

    frame = _rung_frame([({0: 0.80, 1: 0.85}, 1.0, 0.0), ({0: 0.70}, 0.5, 0.0)])
    front, _ = decision_front(frame)
    baseline = pd.DataFrame([{"name": "m", "val_accuracy": 0.82, "latency_ms": 1.1}])
    assert bool(dominance(front, baseline)["dominated"].iloc[0])  # at rung 1's accuracy: the inflated claim
    fair = dominance(at_proxy_budget(front), baseline)
    assert not bool(fair["dominated"].iloc[0]) and fair["accuracy_gain"].iloc[0] == pytest.approx(-2.0)
