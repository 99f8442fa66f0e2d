"""Re-time chosen trials on a real target: the step after a search on predicted latency (or on another
device). `run --confirm-on TARGET` and `verify --target TARGET` store, per trial, the latency measured
there as a study user attribute `confirmed:<trial>`; the report sets it beside the search's own latency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import numpy as np
import optuna
import pandas as pd

from mbsearch.latency.profiler import latency_of
from mbsearch.latency.targets import Target
from mbsearch.results.pareto import MULTI_FIDELITY, candidates, decision_front, dominates, dominates_at_shared_rung
from mbsearch.study import records

UNCERTAINTY_Z = 2.0  # a predicted latency could be this many sds faster than predicted


def retimings(study: optuna.Study) -> dict[int, dict]:
    """Trial number -> {latency_ms, iqr_ms, target, fingerprint, cpu} for every re-timed trial."""
    return {
        int(key.removeprefix(records.CONFIRMED_PREFIX)): value
        for key, value in study.user_attrs.items()
        if key.startswith(records.CONFIRMED_PREFIX) and isinstance(value, dict)
    }


def retime(
    study: optuna.Study,
    numbers: Iterable[int],
    target: Target,
    on_done: Callable[[int, float, float], None] | None = None,
    precision: str = "fp32",
) -> dict[int, dict]:
    """Time each trial's arch on `target` in the study's `precision` (an int8 study's graph is the int8 one),
    skipping those already timed on this device; returns them all."""
    device = target.device()
    done = retimings(study)
    for number in numbers:
        if done.get(number, {}).get("fingerprint") == device["fingerprint"]:
            continue  # a rerun resumes: what was timed on this device stays
        trial = study.trials[number]
        arch = records.trial_arch(trial)
        stats = latency_of(arch, target, precision=precision)
        record = {
            "latency_ms": stats.median_ms,
            "iqr_ms": stats.iqr_ms,
            "target": target.name,
            "fingerprint": device["fingerprint"],
            "cpu": device.get("cpu"),
            "precision": precision,
            "timed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        study.set_user_attr(f"{records.CONFIRMED_PREFIX}{number}", record)
        done[number] = record
        if on_done:
            on_done(number, trial.user_attrs.get(records.LATENCY_MS, float("nan")), stats.median_ms)
    return done


def to_confirm(frame: pd.DataFrame, z: float = UNCERTAINTY_Z) -> list[int]:
    """The trials a predicted search times on the real device: its front, and every candidate whose latency,
    `z` sds faster than predicted, would put it on the front (its uncertainty could change its place)."""
    front, basis = decision_front(frame)
    if front.empty:
        return []
    pool = candidates(frame)
    # Each candidate's accuracy on the front's own basis (pareto.decision_front).
    column = {"verified": "verified_accuracy", MULTI_FIDELITY: "rung_accuracy"}.get(basis, "val_accuracy")
    pool = pool[pool[column].notna()]
    sd = pool[records.LATENCY_SD_MS].fillna(0.0).astype(float) if records.LATENCY_SD_MS in pool else 0.0
    optimistic = (pool["latency_ms"].astype(float) - z * sd).clip(lower=0.0).to_numpy()
    chosen = set(front["number"].astype(int))
    if basis == MULTI_FIDELITY:
        # The front's own rule: a candidate is judged against each front trial at the highest rung the two
        # share (its proxy accuracy against an unpromoted one, a rung accuracy against a promoted one).
        members = [row for _, row in front.iterrows()]
        for (_, row), fast in zip(pool.iterrows(), optimistic, strict=True):
            hopeful = row.copy()
            hopeful["latency_ms"] = fast
            if not any(dominates_at_shared_rung(member, hopeful) for member in members):
                chosen.add(int(row["number"]))
        return sorted(chosen)
    accuracy = pool[column].to_numpy(float)
    front_accuracy, front_latency = front["val_accuracy"].to_numpy(float), front["latency_ms"].to_numpy(float)
    for number, acc, fast in zip(pool["number"].astype(int), accuracy, optimistic, strict=True):
        if not np.any(dominates(front_accuracy, front_latency, acc, fast)):
            chosen.add(int(number))
    return sorted(chosen)
