"""evaluate(arch, data, Recipe(budget, seed)) -> Evaluation: the one training path for every consumer.

The search's trials, the baselines, `verify` and the fidelity benchmark all train an architecture
through this function, so a given (arch, budget, seed) means the same thing everywhere. It knows
nothing of Optuna.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from mbsearch.architecture.arch import Arch
from mbsearch.nn.model import build_model
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.int8 import Int8Scorer
from mbsearch.train.loop import Normalizer, TrainOptions, train


@dataclass(frozen=True)
class Evaluation:
    """Validation accuracy of one architecture after training it with one budget and seed."""

    accuracy: float
    seconds: float
    epochs_run: float
    steps: int
    budget: Budget
    seed: int
    float_accuracy: float | None = None  # int8 evaluations: `accuracy` is the int8 graph's, this the float one's

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["float_accuracy"] is None:
            del values["float_accuracy"]  # a float evaluation is stored as it always was
        return values


def derived_seed(seed: int, tag: str) -> int:
    """The seed of an evaluation tagged `tag` ("rung1", "verify", "reference") of a study seeded `seed`.

    The proxy training uses `seed` itself; every other evaluation of the same architecture gets a seed of its
    own, derived here, so that two evaluations that are compared never start from the same initial weights
    or see the same first batches by accident (that inflates every rank correlation between them)."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{tag}".encode()).digest()[:4], "big") & 0x7FFFFFFF
    return value if value != seed else value ^ 1


@dataclass(frozen=True)
class Recipe:
    """How one evaluation trains and scores: the budget, the seed (initial weights and batch order), the
    normalizer (fitted on the training images when None), the device, and the precision it is scored in."""

    budget: Budget
    seed: int = 0
    normalizer: Normalizer | None = None
    device: TrainingDevice = CPU
    precision: str = "fp32"


def evaluate(arch: Arch, data: Dataset, recipe: Recipe, model: torch.nn.Module | None = None) -> Evaluation:
    """Build (seeded initial weights) and train `arch` on the train split, score on the validation split.

    On the CPU every training step holds the host lock shared, so latency timing on this host never
    overlaps it and waits at most one step; on a GPU (`device`) nothing is held. Raises
    train.Diverged on a non-finite loss. `model` reuses a network already built from `arch` with the
    same seed (the search builds it first to count and time it). With `precision` int8 the trained network
    is quantized and its int8 graph scored by ONNX Runtime: that is `accuracy`, the float one kept beside it.
    """
    budget, seed, normalizer = recipe.budget, recipe.seed, recipe.normalizer
    if model is None:
        torch.manual_seed(seed)  # the same initial weights for the same architecture and seed
        model = build_model(arch)
    if recipe.precision == "int8":
        normalizer = normalizer or Normalizer.fit(data.train.images[: budget.train_size])  # what train() fits
    result = train(model, data.train, data.val, budget, TrainOptions(seed, normalizer, device=recipe.device))
    evaluation = Evaluation(result.accuracy, result.seconds, result.epochs_run, result.steps, budget, seed)
    if recipe.precision != "int8":
        return evaluation
    int8_accuracy, _ = Int8Scorer(data.train.images, normalizer, data.val)(model.cpu(), arch)
    return replace(evaluation, accuracy=int8_accuracy, float_accuracy=result.accuracy)
