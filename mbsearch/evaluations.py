"""Evaluations of a trial's architecture beyond its own proxy training, kept in the study's storage.

A trial is one architecture. Its proxy accuracy is the trial's value; later evaluations of the same
architecture at bigger budgets (a multi-fidelity rung, or `verify`) are stored as study user attributes
keyed by trial number and a tag, because Optuna freezes a finished trial. They live in the same storage
as the trials (SQLite or PostgreSQL), so they resume and are shared by every worker. A promoted or
verified trial keeps its number, and the count of trials never changes.

Claims keep two workers from doing the same evaluation: a worker writes a claim before it trains, and a
claim older than its grace period (a worker that died) may be taken over. Writes are last-writer-wins,
so two workers racing for one claim may both train it once; neither result is wrong.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna

from mbsearch import interrupts
from mbsearch.arch import Arch
from mbsearch.data import Dataset
from mbsearch.evaluate import Evaluation, evaluate
from mbsearch.train import Budget, Diverged

_PREFIX = "eval"


def _key(tag: str, number: int) -> str:
    return f"{_PREFIX}:{tag}:{number}"


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stored(study: optuna.Study, tag: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Finished evaluations as {tag: {trial number: record}} (one storage read)."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for key, value in study.user_attrs.items():
        parts = key.split(":")
        if len(parts) != 3 or parts[0] != _PREFIX or not isinstance(value, dict) or "accuracy" not in value:
            continue
        if tag is None or parts[1] == tag:
            found.setdefault(parts[1], {})[int(parts[2])] = value
    return found


def _dead_here(worker: Any) -> bool:
    """Whether `worker` (host:pid) was a process of this host that no longer runs."""
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def holder(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> str | None:
    """Who holds the claim on an unfinished evaluation, and until when, or None when nobody live does."""
    current = study.user_attrs.get(_key(tag, number))
    if not isinstance(current, dict) or "accuracy" in current or current.get("released"):
        return None
    until = float(current.get("claimed_at", 0)) + grace_seconds
    if until <= time.time() or _dead_here(current.get("worker")):
        return None
    return f"held by {current.get('worker')} until {time.strftime('%H:%M:%S', time.localtime(until))}"


def claim(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> bool:
    """Claim an evaluation for this process; False when it is done or another live worker holds it. A
    claim of a process of this host that has died is taken at once, not after the grace period."""
    current = study.user_attrs.get(_key(tag, number))
    if isinstance(current, dict):
        if "accuracy" in current:
            return False
        if current.get("worker") != _worker() and holder(study, tag, number, grace_seconds) is not None:
            return False
    study.set_user_attr(_key(tag, number), {"worker": _worker(), "claimed_at": time.time()})
    return True


def release(study: optuna.Study, tag: str, number: int) -> None:
    """Give a claim back (after an interruption), so that a rerun does the evaluation at once."""
    current = study.user_attrs.get(_key(tag, number))
    if isinstance(current, dict) and "accuracy" not in current:
        study.set_user_attr(_key(tag, number), {"released": True, "claimed_at": 0})


def store(study: optuna.Study, tag: str, number: int, evaluation: Evaluation) -> None:
    record = evaluation.to_dict() | {"worker": _worker(), "finished_at": time.time()}
    study.set_user_attr(_key(tag, number), record)


def store_failure(study: optuna.Study, tag: str, number: int, reason: str) -> None:
    """A diverged evaluation: recorded (accuracy None) so that it is not retried forever."""
    study.set_user_attr(_key(tag, number), {"accuracy": None, "failed": reason, "worker": _worker()})


def evaluate_claimed(
    study: optuna.Study,
    tag: str,
    number: int,
    arch: Arch,
    data: Dataset,
    budget: Budget,
    seed: int,
    grace_seconds: float,
    on_start: Callable[[], None] | None = None,
) -> Evaluation | str | None:
    """Claim, train and store one evaluation: its Evaluation, a failure reason (diverged, stored so it is
    not retried forever), or None when it is done or held by another worker. An interruption gives the
    claim back, so that a rerun takes it at once."""
    if not claim(study, tag, number, grace_seconds):
        return None
    if on_start:
        on_start()
    try:
        with interrupts.interruptible():
            result = evaluate(arch, data, budget, seed)
    except Diverged as exc:
        store_failure(study, tag, number, f"diverged: {exc}")
        return f"diverged: {exc}"
    except BaseException:
        release(study, tag, number)
        raise
    store(study, tag, number, result)
    return result
