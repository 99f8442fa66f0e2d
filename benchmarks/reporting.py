"""Reporting overhead of a long search: the console reporter's cost per finished trial.

Builds a 2,000-trial study in a SQLite file (trials added with Optuna's create_trial, the shape the
search stores), then times (a) the reporter's incremental update for every trial, and (b) what the
reporter did before: rebuilding the trials frame and the Pareto front after each trial, sampled at
a few study sizes.

    python benchmarks/reporting.py [--trials 2000]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

import optuna
from rich.console import Console

from mbsearch.results.pareto import pareto_front, trials_frame
from mbsearch.search.prepared import prepare
from mbsearch.search.progress import ConsoleReporter
from mbsearch.study.config import RunConfig


def build_study(path: Path, trials: int) -> optuna.Study:
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{path}", directions=["maximize", "minimize"])
    rng = random.Random(0)
    distribution = optuna.distributions.CategoricalDistribution([3, 5, 7])
    for number in range(trials):
        accuracy, latency = rng.uniform(0.5, 0.9), rng.uniform(0.1, 1.0)
        study.add_trial(
            optuna.trial.create_trial(
                params={"s1_kernel": rng.choice([3, 5, 7])},
                distributions={"s1_kernel": distribution},
                values=[accuracy, latency],
                user_attrs={"val_accuracy": accuracy, "latency_ms": latency, "params": 100_000 + number},
            )
        )
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        study = build_study(Path(folder) / "study.db", args.trials)
        trials = study.get_trials(deepcopy=False)
        reporter = ConsoleReporter(Console(file=io.StringIO(), force_terminal=False))
        reporter.start(study, prepare(RunConfig(trials=args.trials, runs_dir=Path(folder))), 0)
        started = time.perf_counter()
        for trial in trials:
            reporter.trial_done(study, trial)
        incremental = time.perf_counter() - started
        reporter.finish()
        print(
            f"incremental reporter: {incremental:.2f} s for {len(trials)} trials "
            f"({incremental / len(trials) * 1e3:.2f} ms per trial)"
        )
        print(f"front: {len(reporter.front)} points, best accuracy {reporter.front.best_accuracy:.4f}")
        assert len(reporter.front) == len(pareto_front(trials_frame(study)))
        print("rebuild after each trial (the previous reporter), per trial at study size n:")
        total_estimate = 0.0
        for size in (250, 500, 1000, 2000):
            if size > len(trials):
                break
            partial = optuna.create_study(directions=["maximize", "minimize"])
            partial.add_trials(trials[:size])
            started = time.perf_counter()
            pareto_front(trials_frame(partial))
            cost = time.perf_counter() - started
            print(f"  n={size}: {cost * 1e3:.1f} ms per trial")
            total_estimate = cost
        started = time.perf_counter()
        pareto_front(trials_frame(study))
        stored = time.perf_counter() - started
        print(f"  n={len(trials)} read from the SQLite storage, as the search did: {stored * 1e3:.1f} ms per trial")
        # Cost grows about linearly with n, so the whole study costs about n/2 times the last figure.
        print(
            f"previous reporter over the whole study: about {total_estimate * len(trials) / 2:.0f} s in memory, "
            f"{stored * len(trials) / 2:.0f} s from SQLite (estimated)"
        )


if __name__ == "__main__":
    main()
