"""Evaluations of a trial's architecture beyond its own proxy training, kept in the study's storage.

A trial is one architecture. Its proxy accuracy is the trial's value; later evaluations of the same
architecture at bigger budgets (a multi-fidelity rung, or `verify`) are stored as study user attributes
keyed by trial number and a tag, because Optuna freezes a finished trial. They live in the same storage
as the trials (SQLite or PostgreSQL), so they resume and are shared by every worker. A promoted or
verified trial keeps its number, and the count of trials never changes.

Claims keep two workers from doing the same evaluation (claims.py): taking one is atomic on SQLite and
PostgreSQL, it is renewed by a heartbeat while its training runs, and it is taken over only when its worker
has stopped (no heartbeat for the grace period, or a dead process on this host).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from mbsearch import interrupts
from mbsearch.architecture.arch import Arch
from mbsearch.nn.quantize import QuantizationFailed
from mbsearch.study import claims, records
from mbsearch.train.data import Dataset
from mbsearch.train.evaluate import Evaluation, Recipe, evaluate
from mbsearch.train.loop import Diverged, TrainingFailed


def _key(tag: str, number: int) -> str:
    return f"{records.EVALUATION_PREFIX}:{tag}:{number}"


def stored(study: optuna.Study, tag: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Finished evaluations as {tag: {trial number: record}} (one storage read)."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for key, value in study.user_attrs.items():
        parts = key.split(":")
        if (
            len(parts) != 3
            or parts[0] != records.EVALUATION_PREFIX
            or not isinstance(value, dict)
            or "accuracy" not in value
        ):
            continue
        if tag is None or parts[1] == tag:
            found.setdefault(parts[1], {})[int(parts[2])] = value
    return found


def holder(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> str | None:
    """Who holds the claim on an unfinished evaluation, and until when, or None when nobody live does."""
    current = claims.read(study, tag, number)
    if current is None or not claims.is_live(current, grace_seconds):
        return None
    until = time.strftime("%H:%M:%S", time.localtime(current.heartbeat + grace_seconds))
    return f"held by {current.worker} until {until} unless renewed"


def claim(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> bool:
    """Claim an evaluation for this process: False when it is done or another live worker holds it. Atomic
    (claims.take): however many workers race, one wins. A dead process's claim on this host is taken at once."""
    done = study.user_attrs.get(_key(tag, number))
    if isinstance(done, dict) and "accuracy" in done:
        return False
    return claims.take(study, tag, number, grace_seconds)


def release(study: optuna.Study, tag: str, number: int) -> None:
    """Give a claim back (after an interruption), so that a rerun does the evaluation at once."""
    claims.release(study, tag, number)


def store(study: optuna.Study, tag: str, number: int, evaluation: Evaluation) -> None:
    record = evaluation.to_dict() | {records.WORKER: claims.worker_id(), "finished_at": time.time()}
    study.set_user_attr(_key(tag, number), record)


def store_failure(study: optuna.Study, tag: str, number: int, reason: str) -> None:
    """A diverged evaluation: recorded (accuracy None) so that it is not retried forever."""
    study.set_user_attr(_key(tag, number), {"accuracy": None, "failed": reason, records.WORKER: claims.worker_id()})


@dataclass(frozen=True)
class Claimed:
    """One evaluation of a study: trial `number`'s architecture under `tag`, claimed for at most
    `grace_seconds` without a heartbeat."""

    study: optuna.Study
    tag: str
    number: int
    grace_seconds: float


def evaluate_claimed(
    which: Claimed, arch: Arch, data: Dataset, recipe: Recipe, on_start: Callable[[], None] | None = None
) -> Evaluation | str | None:
    """Claim, train and store one evaluation: its Evaluation, a failure reason (diverged or out of memory,
    stored so it is not retried forever), or None when it is done, held by another worker, or was taken
    over by another worker while this one trained (its result is then dropped). An interruption gives the
    claim back, so that a rerun takes it at once."""
    study, tag, number, grace_seconds = which.study, which.tag, which.number, which.grace_seconds
    if not claim(study, tag, number, grace_seconds):
        return None
    if on_start:
        on_start()
    try:
        with claims.heartbeat(study, tag, number, grace_seconds) as lease, interrupts.interruptible():
            result = evaluate(arch, data, recipe)
    except (TrainingFailed, QuantizationFailed) as exc:  # diverged, too large, not quantizable: stored
        reason = f"diverged: {exc}" if isinstance(exc, Diverged) else str(exc)
        store_failure(study, tag, number, reason)
        release(study, tag, number)
        return reason
    except BaseException:
        release(study, tag, number)
        raise
    # A worker whose claim was taken over (it stalled past the grace period, and another worker took the
    # evaluation) keeps nothing: the new holder's result is the one stored. The last renewal closes the gap
    # between the heartbeat's last beat and this write.
    if lease.lost or not claims.renew(study, tag, number):
        return None
    store(study, tag, number, result)
    release(study, tag, number)
    return result
