"""Throughput of a search at the default budget: candidates per hour and where the wall time goes.

Usage: python benchmarks/throughput.py [--trials N] [--space v3]
It runs a fresh study in a temporary folder and prints a table; copy the figures into
benchmarks/README.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from mbsearch.search.loop import run_search
from mbsearch.study.config import RunConfig

PHASES = ("sample", "build", "cost", "export", "latency", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--space", default="v3")
    args = parser.parse_args()
    logging.getLogger("optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as runs:
        os.environ["MBSEARCH_LOCK_DIR"] = runs
        config = RunConfig(space=args.space, trials=args.trials, runs_dir=Path(runs), study="bench")
        started = time.perf_counter()
        result = run_search(config)
        wall = time.perf_counter() - started
        trials = result.study.get_trials(deepcopy=False)

    totals = dict.fromkeys(PHASES, 0.0)
    for trial in trials:
        for phase, seconds in trial.user_attrs.get("timings", {}).items():
            phase = "export" if phase.startswith("export") else phase  # export_torchscript / export_dynamo
            totals[phase] = totals.get(phase, 0.0) + seconds
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    storage_and_other = wall - sum(totals.values())
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"space {args.space}, default budget: {config.epochs:g} epoch x {config.train_size} images, "
        f"batch {config.batch_size}, val {config.val_size}"
    )
    print(f"trials complete: {complete}/{len(trials)}, wall {wall:.1f} s (includes loading the data once)")
    print(f"candidates per hour: {complete / wall * 3600:.0f}")
    print(f"{'phase':<16}{'seconds':>10}{'share':>9}")
    for phase in PHASES:
        print(f"{phase:<16}{totals[phase]:>10.1f}{totals[phase] / wall:>9.1%}")
    print(f"{'storage+other':<16}{storage_and_other:>10.1f}{storage_and_other / wall:>9.1%}")
    outside = 1 - totals["train"] / wall
    print(f"outside training: {outside:.1%}")
    front = result.front
    print(
        f"front: {len(front)} points, val accuracy {front['val_accuracy'].min():.3f}-"
        f"{front['val_accuracy'].max():.3f}, latency {front['latency_ms'].min():.3f}-"
        f"{front['latency_ms'].max():.3f} ms"
    )


if __name__ == "__main__":
    main()
