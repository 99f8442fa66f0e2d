"""The network-level correction of a lookup table: whole networks timed by the gated rounds recipe, a
linear fit of their latency on the parts' sum (and, where it helps on held-out networks, the weights and
feature maps they move), chosen and judged by k-fold error on networks it was not fitted on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import SearchSpace
from mbsearch.latency.lut import FOLDS, NETWORK_FEATURES, LookupTable, network_features, prediction_error
from mbsearch.latency.parts import _graph
from mbsearch.latency.profiler import build_seeded
from mbsearch.latency.recipes import latencies_by_rounds
from mbsearch.latency.targets import Prepared, Target, exported

CALIBRATION_SEED = 1_000_000  # calibration networks are drawn apart from any seed a user would pick


CORRECTIONS = (("sum",), NETWORK_FEATURES)  # the candidates, judged by held-out error


def _network(arch: Arch, precision: str = "fp32") -> Prepared:
    prepared = exported(build_seeded(arch, 0), arch)
    return replace(prepared, payload=_graph(prepared.payload, prepared.shape, precision))


def whole_network_latencies(target: Target, archs: list[Arch], precision: str = "fp32") -> list[float]:
    """Networks timed whole by the gated rounds recipe: the ground truth tables are calibrated and judged on."""
    return latencies_by_rounds(target, [_network(arch, precision) for arch in archs]) if archs else []


def calibration_archs(
    space: SearchSpace, count: int, input_size: int, channels: int, num_classes: int, seed: int = 0
) -> list[Arch]:
    """The networks a table is calibrated on: sampled with seeds apart from any a user would pick."""
    return [
        random_arch(space, CALIBRATION_SEED + seed + index, input_size, channels, num_classes) for index in range(count)
    ]


def _held_out(features: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each network's prediction by a linear fit on the other folds, weighted for relative error."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold

    predicted = np.zeros_like(truth)
    for fit_on, judge_on in KFold(FOLDS, shuffle=True, random_state=0).split(features):
        fit = LinearRegression().fit(features[fit_on], truth[fit_on], sample_weight=truth[fit_on] ** -2.0)
        predicted[judge_on] = fit.predict(features[judge_on])
    return predicted


def _rmspe(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(error**2)))


def _best_correction(
    feature_sets: dict[tuple[str, ...], np.ndarray], plain: np.ndarray, truth: np.ndarray, rows: np.ndarray
) -> tuple[tuple[str, ...] | None, dict[tuple[str, ...], np.ndarray]]:
    """The correction with the lowest k-fold held-out RMSPE on `rows` (None: the plain sum, which wins
    ties), and each candidate's held-out relative errors there."""
    truth_here = truth[rows]
    best, best_rmspe = None, _rmspe((plain[rows] - truth_here) / truth_here)
    errors: dict[tuple[str, ...], np.ndarray] = {}
    if len(rows) < 2 * FOLDS:
        return best, errors
    for names, features in feature_sets.items():
        errors[names] = (_held_out(features[rows], truth_here) - truth_here) / truth_here
        if _rmspe(errors[names]) < best_rmspe:
            best, best_rmspe = names, _rmspe(errors[names])
    return best, errors


def _fit_correction(features: np.ndarray, truth: np.ndarray):
    from sklearn.linear_model import LinearRegression

    return LinearRegression().fit(features, truth, sample_weight=truth**-2.0)


def _nested_error(feature_sets: dict[tuple[str, ...], np.ndarray], plain: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each network's relative error when the whole procedure, choosing the correction included, ran on the
    other folds only (nested cross-validation). The minimum of the candidates' held-out errors is biased
    low by the choice itself; this is the error a new network can expect."""
    from sklearn.model_selection import KFold

    error = np.zeros_like(truth)
    for fit_on, judge_on in KFold(FOLDS, shuffle=True, random_state=1).split(truth):
        choice, _ = _best_correction(feature_sets, plain, truth, fit_on)
        if choice is None:
            predicted = plain[judge_on]
        else:
            features = feature_sets[choice]
            predicted = _fit_correction(features[fit_on], truth[fit_on]).predict(features[judge_on])
        error[judge_on] = (predicted - truth[judge_on]) / truth[judge_on]
    return error


def calibrated(table: LookupTable, archs: list[Arch], measured: list[float]) -> LookupTable:
    """The table with a network-level correction, fitted on networks timed whole: a linear model of the
    parts' sum (and, as a second candidate, the network's weights and feature maps, CORRECTIONS), weighted
    for relative error. Each candidate is judged by its error on networks it was not fitted on (k-fold) and
    the lowest held-out RMSPE, the plain sum included, is used. The error reported, and every prediction's
    network-level uncertainty, come from nested cross-validation (the choice made on the other folds too),
    not from the winning candidate's own held-out error, which the choice makes optimistic."""
    if not archs:
        return table
    plain = np.array([table.plain_sum(arch) for arch in archs])
    truth = np.array(measured)
    summary: dict[str, Any] = {"networks": len(archs), "held_out_sum": prediction_error(list(plain), list(truth))}
    update: dict[str, Any] = {"use": "sum", "correction": None, "correction_features": ["sum"]}
    feature_sets = {
        names: np.array([network_features(a, s, names) for a, s in zip(archs, plain, strict=True)])
        for names in CORRECTIONS
    }
    choice, errors = _best_correction(feature_sets, plain, truth, np.arange(len(truth)))
    for names, error in errors.items():
        summary[f"held_out_{'+'.join(names)}"] = prediction_error(list(truth * (1 + error)), list(truth))
    if choice is not None:
        fit = _fit_correction(feature_sets[choice], truth)
        update |= {
            "use": "corrected",
            "correction": [*map(float, fit.coef_), float(fit.intercept_)],
            "correction_features": list(choice),
        }
    honest = _nested_error(feature_sets, plain, truth) if len(archs) >= 2 * FOLDS else (plain - truth) / truth
    summary["held_out"] = prediction_error(list(truth * (1 + honest)), list(truth))
    update |= {"calibration": summary, "residual_sd": _rmspe(honest)}
    return LookupTable(table.data.model_copy(update=update), table.path)
