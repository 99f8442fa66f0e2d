"""Multi-fidelity search: train many candidates at a low budget, promote the best by Pareto rank.

Asynchronous successive halving (ASHA) for two objectives, as multi-objective ASHA does (Schmucker et
al., 2021): rung 0 is a trial's own proxy training; a candidate at rung r is promoted to rung r+1 when it
is among the top 1/eta of the trials evaluated at rung r, ranked by non-dominated sorting on (accuracy at
rung r, latency), then crowding distance. A promotion trains the same architecture again with a bigger
budget (rung multiplier x the base budget) and is stored with the trial (evaluations.py): the trial keeps
its number, and the count of complete trials is untouched. Optuna's samplers see rung-0 values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import optuna
import pandas as pd

from mbsearch.results.pareto import candidates, pareto_ranking, rung_tag, trials_frame
from mbsearch.study import evaluations, records
from mbsearch.study.config import RunConfig, parse_rungs
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.evaluate import Recipe, derived_seed


def rung_budget(base: Budget, multiplier: float, available: int) -> Budget:
    """The base budget scaled by `multiplier`: more images first, then more epochs once all are used."""
    images = base.train_size * multiplier
    if images <= available:
        return replace(base, train_size=round(images))
    return replace(base, train_size=available, epochs=base.epochs * images / available)


def promotable(frame: pd.DataFrame, rung_count: int, eta: float) -> list[tuple[int, int]]:
    """(trial number, target rung) pairs that ASHA would promote now, highest rungs first.

    `frame` is trials_frame(study): the accuracy at rung r is the trial's value (r = 0) or its stored
    rung evaluation. Trials already evaluated at the target rung are left out; claims are the caller's.
    """
    pool = candidates(frame)
    jobs: list[tuple[int, int]] = []
    for rung in reversed(range(rung_count - 1)):
        at_rung = pool[pool["rung"] >= rung].copy()
        if rung > 0:
            # Ranked on the rung's own accuracy, not the highest one reached.
            at_rung["val_accuracy"] = [values.get(rung) for values in at_rung["rung_accuracies"]]
            at_rung = at_rung[at_rung["val_accuracy"].notna()]
        quota = int(len(at_rung) // eta)
        if quota == 0:
            continue
        best = pareto_ranking(at_rung)[:quota]
        reached = set(pool.loc[pool["rung"] >= rung + 1, "number"])
        jobs += [(number, rung + 1) for number in best if number not in reached]
    return jobs


@dataclass(frozen=True)
class Promotion:
    number: int
    rung: int
    accuracy: float | None  # None: training diverged at this rung
    seconds: float
    budget: Budget


class Promoter:
    """Runs the next due promotion of a study, if any: claim it, train at the rung budget, store it."""

    def __init__(self, config: RunConfig, data: Dataset, training: TrainingDevice = CPU) -> None:
        self.config = config
        self.data = data
        self.training = training
        self.multipliers = parse_rungs(config.rungs or "1")
        self.eta = config.eta

    def budget(self, rung: int) -> Budget:
        return rung_budget(self.config.budget, self.multipliers[rung], len(self.data.train))

    def run_next(self, study: optuna.Study) -> Promotion | None:
        if len(self.multipliers) < 2:
            return None
        frame = trials_frame(study)
        for number, rung in promotable(frame, len(self.multipliers), self.eta):
            arch = records.trial_arch(study.trials[number])
            budget = self.budget(rung)
            seed = derived_seed(self.config.seed, rung_tag(rung))
            which = evaluations.Claimed(study, rung_tag(rung), number, self.config.grace_period * 20)
            recipe = Recipe(budget, seed, device=self.training, precision=self.config.precision)
            result = evaluations.evaluate_claimed(which, arch, self.data, recipe)
            if result is None:
                continue  # done already, or another worker holds it
            if isinstance(result, str):  # diverged at this rung
                return Promotion(number, rung, None, 0.0, budget)
            return Promotion(number, rung, result.accuracy, result.seconds, budget)
        return None
