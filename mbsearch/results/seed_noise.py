"""Seed-to-seed noise of the verification: how much a verified accuracy moves when only the training seed
changes, so that a reader can tell which margins against the baselines are real.

The verified front's knee and the two baselines nearest it in latency are trained again at the
verification budget with `extra` more seeds, each derived apart from every other seed of the study. The
knee's runs are study evaluations (`eval:verify-seedK:TRIAL`, claimed and resumable like verify's own); the
baselines' are cached in baselines.json under their training seed. The pooled standard deviation over the
three networks is the seed noise of one verified accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mbsearch.latency.targets import Target
from mbsearch.results.baselines import baseline_frame
from mbsearch.results.finished import FinishedStudy
from mbsearch.results.pareto import knee, pareto_front
from mbsearch.study import evaluations, records
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_study_data
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.evaluate import Evaluation, Recipe, derived_seed
from mbsearch.train.image_cache import default_cache_dir

NOISE_TAG = "verify-seed"  # + K: the knee trained with the K-th extra seed
GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class SeedNoise:
    """Verified accuracies by network over the seeds, and their pooled standard deviation (points)."""

    accuracies: dict[str, list[float]]  # "trial N" or a baseline's name -> one accuracy per seed
    sd_points: float

    def margin_band(self, sampling_points: float | None) -> float:
        """The 95% band of a margin between two verified networks: each carries the seed noise, and the
        sampling noise of the validation images (already a difference's band) adds in quadrature."""
        seed_band = 1.96 * math.sqrt(2) * self.sd_points
        return math.sqrt(seed_band**2 + (sampling_points or 0.0) ** 2)


def pooled_sd(groups: list[list[float]]) -> float:
    """The pooled sample standard deviation of several groups, each of one network over seeds."""
    usable = [g for g in groups if len(g) > 1]
    if not usable:
        return float("nan")
    squares = sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in usable)
    return math.sqrt(squares / sum(len(g) - 1 for g in usable))


def measure_seed_noise(
    finished: FinishedStudy,
    verified_baselines: pd.DataFrame,
    runs_dir: Path,
    extra: int,
    data_dir: Path | None = None,
    target: Target | None = None,
    training: TrainingDevice = CPU,
) -> SeedNoise | None:
    """Train the knee and the two nearest baselines with `extra` more seeds (what is stored is reused); None
    where nothing was verified."""
    stored = records.verify_budget(finished.study)
    frame = finished.frame
    points = frame[frame["verified_accuracy"].notna()]
    if stored is None or points.empty or extra < 1:
        return None
    front = pareto_front(points.assign(val_accuracy=points["verified_accuracy"]))
    knee_row = front.iloc[knee(front)]
    number = int(knee_row["number"])
    nearest = (verified_baselines["latency_ms"] - float(knee_row["latency_ms"])).abs().sort_values().index[:2]
    names = [str(verified_baselines.loc[i, "name"]) for i in nearest]
    budget = Budget(stored["epochs"], stored["train_size"], stored["batch_size"], stored["lr"])
    seeds = [derived_seed(int(stored["seed"]), f"{NOISE_TAG}{k}") for k in range(1, extra + 1)]
    accuracies: dict[str, list[float]] = {f"trial {number}": [float(knee_row["val_accuracy"])]}
    accuracies |= {name: [float(verified_baselines.set_index("name").loc[name, "val_accuracy"])] for name in names}
    data = None
    done = evaluations.stored(finished.study)
    for k, seed in enumerate(seeds, start=1):
        tag = f"{NOISE_TAG}{k}"
        record = done.get(tag, {}).get(number)
        if record is None:
            data = data or load_study_data(finished.settings, data_dir, default_cache_dir(runs_dir))
            which = evaluations.Claimed(finished.study, tag, number, GRACE_SECONDS)
            recipe = Recipe(budget, seed, device=training, precision=finished.settings.get("precision", "fp32"))
            result = evaluations.evaluate_claimed(which, finished.arch(number), data, recipe)
            record = {"accuracy": result.accuracy} if isinstance(result, Evaluation) else {"accuracy": None}
        if record.get("accuracy") is not None:
            accuracies[f"trial {number}"].append(float(record["accuracy"]))
        keys = ("epochs", "train_size", "batch_size", "lr")
        settings = finished.settings | {key: stored[key] for key in keys} | {"train_seed": seed}
        again = baseline_frame(settings, runs_dir, data_dir, names=names, target=target, training=training)
        for row in again.itertuples():
            if row.val_accuracy == row.val_accuracy:  # NaN: that training failed
                accuracies[str(row.name)].append(float(row.val_accuracy))
    noise = SeedNoise(accuracies, 100 * pooled_sd(list(accuracies.values())))
    finished.study.set_user_attr(records.SEED_NOISE, {"accuracies": accuracies, "sd_points": noise.sd_points})
    return noise


def stored_seed_noise(finished: FinishedStudy) -> SeedNoise | None:
    """The seed noise `verify --seed-noise` measured, as stored in the study (report draws it)."""
    stored = records.seed_noise(finished.study)
    return None if stored is None else SeedNoise(stored["accuracies"], float(stored["sd_points"]))
