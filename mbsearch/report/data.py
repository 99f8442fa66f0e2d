"""What the report draws, read from a finished study and the stored baselines: the trials, the fronts
(searched, verified, confirmed), the baselines and their dominance, the parameters' importances. Nothing
here trains or times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd

from mbsearch.ranking import kendall_tau
from mbsearch.results.baselines import dominance
from mbsearch.results.finished import FinishedStudy
from mbsearch.results.pareto import at_proxy_budget, candidates, hypervolume_history, knee, pareto_front
from mbsearch.results.retime import retimings
from mbsearch.results.seed_noise import SeedNoise
from mbsearch.study import records


@dataclass
class ReportData:
    title: str
    settings: dict
    points: pd.DataFrame  # every complete trial, with a "kind": front | dominated | infeasible
    front: pd.DataFrame
    knee_number: int | None
    history: pd.DataFrame  # number, val_accuracy, hypervolume
    importances: dict[str, dict[str, float]]
    baselines: pd.DataFrame | None
    dominance: pd.DataFrame | None
    counts: dict[str, int]
    verified: VerifiedData | None = None
    device: dict | None = None  # the latency target and its fingerprint (search.check_device)
    confirmed: pd.DataFrame | None = None  # number, latency_ms (the search's), confirmed_ms, target
    sources: dict[str, int] | None = None  # predicted latencies by source (table, interpolated, extrapolated)
    supernet: dict | None = None  # --evaluator supernet: the supernet that scored the trials (search.check_supernet)
    adapted: pd.DataFrame | None = None  # networks trimmed by `mbsearch adapt` (adapted.adapted_frame)


@dataclass
class VerifiedData:
    """The proxy front beside the verified one: what `mbsearch verify` found for this study."""

    points: pd.DataFrame  # verified trials: number, val_accuracy (proxy), verified_accuracy, latency_ms, ...
    proxy_front: pd.DataFrame
    front: pd.DataFrame  # the front on verified accuracy (in val_accuracy)
    tau: float | None  # Kendall tau, proxy vs verified, over the verified trials
    budget: dict
    baselines: pd.DataFrame | None  # the baselines trained at the verification budget
    dominance: pd.DataFrame | None  # judged on verified accuracy
    noise: SeedNoise | None = None  # the verification's seed-to-seed noise (report --seed-noise N)


def compute_verified(
    finished: FinishedStudy, budget: dict | None, baselines: pd.DataFrame | None, noise: SeedNoise | None = None
) -> VerifiedData | None:
    """Proxy vs verified, or None where nothing was verified."""
    frame = finished.frame
    points = frame[frame["verified_accuracy"].notna()].copy()
    if points.empty or budget is None:
        return None
    tau = (
        kendall_tau(points["val_accuracy"].astype(float).tolist(), points["verified_accuracy"].astype(float).tolist())
        if len(points) > 2
        else None
    )
    front = pareto_front(points.assign(val_accuracy=points["verified_accuracy"]))
    return VerifiedData(
        points=points,
        proxy_front=finished.front,
        front=front,
        tau=tau,
        budget=budget,
        baselines=baselines,
        dominance=dominance(front, baselines) if baselines is not None and not front.empty else None,
        noise=noise,
    )


def _importances(study: optuna.Study, trained: pd.DataFrame) -> dict[str, dict[str, float]]:
    """PED-ANOVA importances for accuracy and latency over the trained trials (skipped ones would distort).

    PED-ANOVA is Optuna's own implementation; fANOVA would add scikit-learn as a dependency.
    """
    if len(trained) < 4:
        return {}
    keep = set(trained["number"])
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in keep]
    result = {}
    for key, direction in ((records.VAL_ACCURACY, "maximize"), (records.LATENCY_MS, "minimize")):
        # One single-objective view per metric, so that the evaluator knows which way is better.
        view = optuna.create_study(direction=direction)
        view.add_trials(
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.user_attrs[key])
            for t in trials
        )
        try:
            result[key] = optuna.importance.get_param_importances(
                view, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
        except (RuntimeError, ValueError):  # e.g. every trial shares one value of every parameter
            continue
    return result


def compute(
    finished: FinishedStudy,
    baselines: pd.DataFrame | None,
    verify_budget: dict | None = None,
    verified_baselines: pd.DataFrame | None = None,
    adapted: pd.DataFrame | None = None,
    noise: SeedNoise | None = None,
) -> ReportData:
    """Everything the page shows, as data."""
    frame = finished.frame
    complete = frame[frame["state"] == "COMPLETE"].copy()
    trained = candidates(frame)
    front_numbers = set(finished.front["number"])
    complete["kind"] = "dominated"
    complete.loc[~complete["number"].isin(trained["number"]), "kind"] = "infeasible"
    complete.loc[complete["number"].isin(front_numbers), "kind"] = "front"
    history = hypervolume_history(frame).merge(trained[["number", "val_accuracy"]], on="number", how="left")
    front = finished.front
    supernet = (
        finished.study.user_attrs.get(records.SUPERNET) if finished.settings.get("evaluator") == "supernet" else None
    )
    return ReportData(
        title=f"mbsearch report: {finished.study.study_name}",
        settings=finished.settings,
        points=complete,
        front=front,
        knee_number=int(front.loc[knee(front), "number"]) if not front.empty else None,
        history=history,
        importances=_importances(finished.study, trained),
        baselines=baselines,
        # the baselines trained at the proxy budget: the front is judged on its trials' proxy accuracies, and
        # not at all where inherited weights scored it (a baseline is no sub-network: no inherited score)
        dominance=dominance(at_proxy_budget(front), baselines)
        if baselines is not None and not front.empty and supernet is None
        else None,
        supernet=supernet,
        counts={state: int((frame["state"] == state).sum()) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        verified=compute_verified(finished, verify_budget, verified_baselines, noise),
        device=records.device(finished.study) or None,
        confirmed=_confirmed_frame(finished),
        sources=_sources(complete),
        adapted=adapted,
    )


def _confirmed_frame(finished: FinishedStudy) -> pd.DataFrame | None:
    retimed = retimings(finished.study)
    if not retimed:
        return None
    frame = finished.frame.set_index("number")
    rows = [
        {
            "number": number,
            "latency_ms": float(frame["latency_ms"].get(number, float("nan"))),
            "sd_ms": _stored(frame, records.LATENCY_SD_MS, number, 0.0),
            "source": str(_stored(frame, records.LATENCY_SOURCE, number, "measured")),
            "confirmed_ms": record["latency_ms"],
            "target": record["target"],
            "fingerprint": record["fingerprint"],
        }
        for number, record in sorted(retimed.items())
    ]
    return pd.DataFrame(rows)


def _stored(frame: pd.DataFrame, column: str, number: int, default: Any) -> Any:
    """A trial's stored attribute from the frame; `default` where the trial predates it."""
    value = frame[column].get(number) if column in frame else None
    return default if value is None or pd.isna(value) else value


def _sources(complete: pd.DataFrame) -> dict[str, int] | None:
    """How many complete trials' latencies each predictor source gave (None for a measured study)."""
    if records.LATENCY_SOURCE not in complete:
        return None
    counts = complete[records.LATENCY_SOURCE].dropna().value_counts()
    prefix = "predicted:"
    predicted = {str(k).removeprefix(prefix): int(v) for k, v in counts.items() if str(k).startswith(prefix)}
    return predicted or None
