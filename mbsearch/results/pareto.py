"""Study -> DataFrame -> Pareto front, knee point and hypervolume. Pure functions, no drawing."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd

from mbsearch.study import evaluations, records

# The frame's columns: the trial's own fields, then its stored attributes under their own names.
COLUMNS = [
    "number",
    "state",
    records.VAL_ACCURACY,
    records.LATENCY_MS,
    records.LATENCY_IQR_MS,
    records.LATENCY_SD_MS,
    records.LATENCY_SOURCE,
    records.PARAMS,
    records.MACS,
    "feasible",
    records.EPOCHS_RUN,
    records.TRAIN_SECONDS,
    records.BLOCKS,
    records.SKIPPED,
    records.FAIL_REASON,
    records.FLOAT_VAL_ACCURACY,
    records.FLOAT_LATENCY_MS,
    "started",
    "completed",
]


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the numbers a user compares; parameters as s*_ columns."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "feasible": _feasible(trial),
            "started": trial.datetime_start,
            "completed": trial.datetime_complete,
        }
        for key in COLUMNS:
            if key not in row:
                row[key] = attrs.get(key)
        row.update(trial.params)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else COLUMNS)
    return _with_evaluations(frame, evaluations.stored(study))


VERIFY_TAG = "verify"


def rung_tag(rung: int) -> str:
    return f"rung{rung}"


def _with_evaluations(frame: pd.DataFrame, stored: dict[str, dict[int, dict]]) -> pd.DataFrame:
    """Add the accuracies of later evaluations: `rung` (highest reached, 0 = the proxy), `rung_accuracy`
    and `verified_accuracy` (NaN where the trial was not verified)."""
    frame = frame.copy()
    numbers = frame["number"].tolist() if not frame.empty else []
    verified = stored.get(VERIFY_TAG, {})
    frame["verified_accuracy"] = [_accuracy(verified.get(n)) for n in numbers]
    rungs = [0] * len(numbers)
    rung_accuracy = list(frame["val_accuracy"]) if not frame.empty else []
    per_rung: list[dict[int, float]] = [{0: a} if a is not None and a == a else {} for a in rung_accuracy]
    for tag, by_trial in stored.items():
        if not tag.startswith("rung"):
            continue
        level = int(tag.removeprefix("rung"))
        for index, number in enumerate(numbers):
            accuracy = _accuracy(by_trial.get(number))
            if accuracy != accuracy:  # NaN: not evaluated at this rung (or diverged)
                continue
            per_rung[index][level] = accuracy
            if level > rungs[index]:
                rungs[index], rung_accuracy[index] = level, accuracy
    frame["rung"] = rungs
    frame["rung_accuracy"] = rung_accuracy
    frame["rung_accuracies"] = per_rung
    return frame


def _accuracy(record: dict | None) -> float:
    value = record.get("accuracy") if record else None
    return float(value) if value is not None else float("nan")


MULTI_FIDELITY = "multi-fidelity"  # the basis of a front judged at the highest rung each pair shares


def decision_front(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The front decisions use (run's table, pareto.csv, export, verify, report), and what it rests on:
    verified accuracy where any trial was verified; else, where any trial was promoted, the multi-fidelity
    rule (`dominates_at_shared_rung`), with `val_accuracy` holding each trial's highest-rung accuracy; else
    the proxy."""
    if frame.empty:
        return pareto_front(frame), "proxy"
    if frame["verified_accuracy"].notna().any():
        pool = frame[frame["verified_accuracy"].notna()].assign(val_accuracy=frame["verified_accuracy"])
        return pareto_front(pool), "verified"
    if int(frame["rung"].max()) > 0:
        pool = candidates(frame)
        front = pool[multi_fidelity_mask(pool)].assign(val_accuracy=pool["rung_accuracy"])
        return front.sort_values("latency_ms").reset_index(drop=True), MULTI_FIDELITY
    return pareto_front(frame), "proxy"


def at_proxy_budget(front: pd.DataFrame) -> pd.DataFrame:
    """A front with each trial's proxy (rung-0) accuracy in `val_accuracy`: the terms on which it is compared
    with baselines trained at the proxy budget. A multi-fidelity front holds rung accuracies, from bigger
    budgets than the baselines had; judging those against proxy-budget baselines inflates every margin."""
    if front.empty or "rung_accuracies" not in front:
        return front
    proxy = [rungs.get(0, float("nan")) if isinstance(rungs, dict) else acc
             for rungs, acc in zip(front["rung_accuracies"], front["val_accuracy"], strict=True)]  # fmt: skip
    return front.assign(val_accuracy=proxy)


def dominates(accuracy_a, latency_a, accuracy_b, latency_b):
    """Pareto dominance, the one rule every front uses: A is at least as accurate and at most as slow as B,
    and strictly better in one. Numbers give a bool; numpy arrays broadcast to a mask."""
    at_least_as_good = (accuracy_a >= accuracy_b) & (latency_a <= latency_b)
    return at_least_as_good & ((accuracy_a > accuracy_b) | (latency_a < latency_b))


def dominates_at_shared_rung(a: pd.Series, b: pd.Series) -> bool:
    """Multi-fidelity dominance: A dominates B when it does at the highest rung both reached. Unpromoted
    trials are so compared on their proxy accuracy, promoted ones on their more trustworthy accuracy, and a
    trial is dropped only by evidence at least as good as its own is compared with."""
    shared = set(a["rung_accuracies"]) & set(b["rung_accuracies"])
    if not shared:
        return False
    level = max(shared)
    return dominates(a["rung_accuracies"][level], a["latency_ms"], b["rung_accuracies"][level], b["latency_ms"])


def multi_fidelity_mask(pool: pd.DataFrame) -> np.ndarray:
    """True where no other trial dominates at the highest rung the two share, except by a cycle.

    The shared-rung rule is not transitive: A beats B at rung 0, B beats C at rung 0, and C beats A at
    rung 1, which only the two of them reached. Where such a cycle leaves every trial dominated, the rule's
    fixed point is the top of its dominance graph's condensation: a trial is kept when every trial that
    dominates it is one it dominates back, directly or through others (its strongly connected component
    has no edge coming in). Without cycles this is exactly "no other trial dominates it", and the set is
    never empty for a non-empty pool."""
    rows = [row for _, row in pool.iterrows()]
    count = len(rows)
    beats = np.zeros((count, count), dtype=bool)  # beats[i, j]: i dominates j at their shared rung
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            beats[i, j] = i != j and dominates_at_shared_rung(a, b)
    reach = beats.copy()  # transitive closure (Warshall): reach[i, j] when i dominates j through a chain
    for k in range(count):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    # i is kept unless some j dominates it that i cannot reach back
    return ~np.any(beats & ~reach.T, axis=0)


def nondominated_layers(frame: pd.DataFrame, multi_fidelity: bool = False) -> list[pd.DataFrame]:
    """Non-dominated sorting of the front candidates: the front, then the front of the rest, and so on.
    On `val_accuracy` as given (a rung's ranking), or, with `multi_fidelity` where trials were promoted, by
    the multi-fidelity rule, whose first layer is the decision front."""
    pool = candidates(frame)
    promoted = multi_fidelity and not pool.empty and "rung" in pool and int(pool["rung"].max()) > 0
    layers = []
    while not pool.empty:
        if promoted:
            mask = multi_fidelity_mask(pool)
        else:
            mask = pareto_mask(pool["val_accuracy"].to_numpy(float), pool["latency_ms"].to_numpy(float))
        if not mask.any():  # cannot happen (both rules keep a point of any non-empty pool): never loop on it
            raise AssertionError("non-dominated sorting found no front in a non-empty pool")
        layers.append(pool[mask].sort_values("latency_ms"))
        pool = pool[~mask]
    return layers


def crowding_distance(layer: pd.DataFrame) -> pd.Series:
    """NSGA-II's crowding distance within one layer (ends are infinitely far): prefers spread points."""
    distance = pd.Series(0.0, index=layer.index)
    if len(layer) <= 2:
        return distance + math.inf
    for column in ("val_accuracy", "latency_ms"):
        ordered = layer[column].astype(float).sort_values()
        span = ordered.iloc[-1] - ordered.iloc[0] or 1.0
        distance[ordered.index[0]] = distance[ordered.index[-1]] = math.inf
        for before, here, after in zip(ordered.index[:-2], ordered.index[1:-1], ordered.index[2:], strict=True):
            distance[here] += (ordered[after] - ordered[before]) / span
    return distance


def pareto_ranking(frame: pd.DataFrame) -> list[int]:
    """Trial numbers best first: by non-dominated layer, then by crowding distance (multi-objective ASHA)."""
    ranked = []
    for layer in nondominated_layers(frame):
        crowd = crowding_distance(layer)
        ranked += (
            layer.assign(crowd=crowd).sort_values(["crowd", "latency_ms"], ascending=[False, True])["number"].tolist()
        )
    return [int(n) for n in ranked]


def pareto_mask(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """True where no other point dominates."""
    mask = np.ones(len(accuracy), dtype=bool)
    for i in range(len(accuracy)):
        mask[i] = not np.any(dominates(accuracy, latency, accuracy[i], latency[i]))
    return mask


def candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """Complete, feasible, trained trials: the ones that may be on the front."""
    if frame.empty:
        return frame
    keep = (frame["state"] == "COMPLETE") & frame["feasible"].astype(bool) & frame["skipped"].isna()
    keep &= frame["val_accuracy"].notna() & frame["latency_ms"].notna()
    return frame[keep]


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """The accuracy-latency front (maximise accuracy, minimise latency), sorted by latency."""
    pool = candidates(frame)
    if pool.empty:
        return pool
    mask = pareto_mask(pool["val_accuracy"].to_numpy(float), pool["latency_ms"].to_numpy(float))
    # Equal points are both non-dominated; keep the earlier trial only.
    front = pool[mask].drop_duplicates(subset=["val_accuracy", "latency_ms"], keep="first")
    return front.sort_values("latency_ms").reset_index(drop=True)


def knee(front: pd.DataFrame) -> int:
    """Row index of the knee: the point farthest from the line joining the front's extremes
    (accuracy and log-latency normalised to [0, 1])."""
    if len(front) <= 2:
        return int(front["val_accuracy"].to_numpy().argmax())
    x = np.log(front["latency_ms"].to_numpy(float))
    y = front["val_accuracy"].to_numpy(float)
    x = (x - x.min()) / (np.ptp(x) or 1.0)
    y = (y - y.min()) / (np.ptp(y) or 1.0)
    # Extremes: (0, 0) fastest/least accurate to (1, 1); distance to the line y = x, above it.
    distance = (y - x) / math.sqrt(2)
    return int(distance.argmax())


def hypervolume(accuracy: np.ndarray, latency: np.ndarray, reference_latency: float) -> float:
    """Area dominated by the points, above accuracy 0 and left of `reference_latency` (2-D, exact)."""
    points = sorted(
        (lat, acc) for acc, lat in zip(accuracy, latency, strict=True) if lat < reference_latency and acc > 0
    )
    area, best = 0.0, 0.0
    for index, (lat, acc) in enumerate(points):
        best = max(best, acc)
        right = points[index + 1][0] if index + 1 < len(points) else reference_latency
        area += best * (right - lat)
    return area


def hypervolume_history(frame: pd.DataFrame, reference_latency: float | None = None) -> pd.DataFrame:
    """Hypervolume after each completed trial, in trial order."""
    pool = candidates(frame).sort_values("number")
    if pool.empty:
        return pd.DataFrame({"number": [], "hypervolume": []})
    reference = reference_latency or float(pool["latency_ms"].max()) * 1.1
    values = []
    for end in range(1, len(pool) + 1):
        part = pool.iloc[:end]
        values.append(hypervolume(part["val_accuracy"].to_numpy(float), part["latency_ms"].to_numpy(float), reference))
    return pd.DataFrame({"number": pool["number"].to_numpy(), "hypervolume": values})
