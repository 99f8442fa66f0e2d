"""Claims are atomic: however many worker processes race for the same evaluations, on SQLite and on a real
PostgreSQL, each evaluation is started exactly once, and a claim whose training outlives the grace period
stays with its worker (issue 17)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import optuna
import pytest

from mbsearch.study import claims, evaluations
from mbsearch.study.storage import open_storage
from mbsearch.train.evaluate import Recipe

EVALUATIONS = 12
RACERS = 4


def _racer(url: str, log: str, stale: bool, finished) -> None:
    """One worker: try every evaluation; log each one this process would start training. The read of the
    old claim is slowed, so that every racer reads before any writes (the window a race needs). A racer
    stays alive until all have tried (a worker still training): a claim of a process that has exited is
    rightly taken over, and would look like a duplicate here."""
    import optuna

    real_read, real_attrs = claims.read, optuna.Study.user_attrs.fget

    def slow_read(*args, **kwargs):
        found = real_read(*args, **kwargs)
        time.sleep(0.3)
        return found

    def slow_attrs(self):
        found = real_attrs(self)
        time.sleep(0.3)
        return found

    claims.read = slow_read
    optuna.Study.user_attrs = property(slow_attrs)  # the old claim read its record from here
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    for number in range(EVALUATIONS):
        if evaluations.claim(study, "race", number, grace_seconds=5):
            with open(log, "a") as handle:
                handle.write(f"{number}\n")
    finished.wait(timeout=240)


def _race(url: str, tmp_path: Path, stale: bool) -> list[int]:
    study = optuna.create_study(study_name="race", storage=open_storage(url), directions=["maximize", "minimize"])
    if stale:  # every claim held by a worker whose heartbeat stopped long ago: all race to take them over
        with claims._engine(study).begin() as connection:
            for number in range(EVALUATIONS):
                connection.execute(
                    claims.CLAIMS.insert().values(
                        study="race", tag="race", number=number, worker="gone:1", heartbeat=time.time() - 3600
                    )
                )
    log = tmp_path / "started.log"
    context = multiprocessing.get_context("spawn")
    finished = context.Barrier(RACERS)
    racers = [context.Process(target=_racer, args=(url, str(log), stale, finished)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=300)
        assert racer.exitcode == 0
    return sorted(int(line) for line in log.read_text().split())


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_workers_on_sqlite_start_each_evaluation_once(tmp_path, stale: bool) -> None:
    started = _race(f"sqlite:///{tmp_path / 'race.db'}", tmp_path, stale)
    assert started == list(range(EVALUATIONS))


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_workers_on_postgres_start_each_evaluation_once(postgres, tmp_path, stale: bool) -> None:
    started = _race(postgres.new_database(), tmp_path, stale)
    assert started == list(range(EVALUATIONS))


def test_a_training_that_outlives_the_grace_period_keeps_its_claim(tmp_path) -> None:
    study = optuna.create_study(study_name="long", storage=open_storage(f"sqlite:///{tmp_path / 'long.db'}"))
    assert evaluations.claim(study, "verify", 0, grace_seconds=1)
    with claims.heartbeat(study, "verify", 0, grace_seconds=1):
        for _ in range(6):  # 3 grace periods of training
            time.sleep(0.5)
            held = claims.read(study, "verify", 0)
            assert held is not None and claims.is_live(held, grace_seconds=1)
    assert evaluations.holder(study, "verify", 0, grace_seconds=1) is not None
    time.sleep(1.2)  # the worker stopped renewing: the claim expires
    assert evaluations.holder(study, "verify", 0, grace_seconds=1) is None


def test_a_worker_whose_claim_was_taken_over_stores_nothing(tmp_path, monkeypatch) -> None:
    """Issue 30: a worker that stalled past the grace period (its claim taken by another worker) kept
    training and stored its result over the new holder's. Now its result is dropped."""
    from mbsearch.architecture.zoo import reference_arch
    from mbsearch.train.budget import Budget
    from mbsearch.train.data import load_dataset
    from mbsearch.train.evaluate import Evaluation

    study = optuna.create_study(study_name="taken", storage=open_storage(f"sqlite:///{tmp_path / 'taken.db'}"))
    budget = Budget(epochs=0.1, train_size=64, batch_size=64)

    def trained_while_another_took_over(*args, **kwargs) -> Evaluation:
        with claims._engine(study).begin() as connection:  # the other worker's compare-and-swap takeover
            connection.execute(claims.CLAIMS.update().values(worker="elsewhere:7", heartbeat=time.time() + 3600))
        time.sleep(0.5)  # a heartbeat beats meanwhile and finds the claim gone
        return Evaluation(0.5, 1.0, 0.1, 1, budget, 1)

    monkeypatch.setattr(evaluations, "evaluate", trained_while_another_took_over)
    data = load_dataset("fashion-mnist", val_size=100)
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    assert (
        evaluations.evaluate_claimed(evaluations.Claimed(study, "verify", 0, 1), arch, data, Recipe(budget, 1)) is None
    )
    assert "eval:verify:0" not in study.user_attrs  # the new holder's evaluation is not overwritten
    assert claims.read(study, "verify", 0).worker == "elsewhere:7"  # and its claim is left alone
