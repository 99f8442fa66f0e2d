"""Re-time chosen trials on a real target: the step after a search on predicted latency (or on another
device). `run --confirm-on TARGET` and `verify --target TARGET` store, per trial, the latency measured
there as a study user attribute `confirmed:<trial>`; the report sets it beside the search's own latency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import optuna

from mbsearch.latency.profiler import latency_of
from mbsearch.latency.targets import Target
from mbsearch.study import records


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
) -> dict[int, dict]:
    """Time each trial's arch on `target` (skipping those already timed on this device); returns them all."""
    device = target.device()
    done = retimings(study)
    for number in numbers:
        if done.get(number, {}).get("fingerprint") == device["fingerprint"]:
            continue  # a rerun resumes: what was timed on this device stays
        trial = study.trials[number]
        arch = records.trial_arch(trial)
        stats = latency_of(arch, target)
        record = {
            "latency_ms": stats.median_ms,
            "iqr_ms": stats.iqr_ms,
            "target": target.name,
            "fingerprint": device["fingerprint"],
            "cpu": device.get("cpu"),
        }
        study.set_user_attr(f"{records.CONFIRMED_PREFIX}{number}", record)
        done[number] = record
        if on_done:
            on_done(number, trial.user_attrs.get(records.LATENCY_MS, float("nan")), stats.median_ms)
    return done
