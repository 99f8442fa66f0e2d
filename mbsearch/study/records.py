"""The one owner of what mbsearch stores in a study beside Optuna's own data: every study attribute key, and
typed readers for them. Modules that write or read a key import it from here (as Optuna's samplers keep
`_CONSTRAINTS_KEY` in one place), so a key is spelled once and a reader never trusts a stored value blindly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from mbsearch.architecture.arch import Arch
from mbsearch.study.config import check_stored_settings

# Study attributes (Optuna freezes finished trials, so what outlives a trial is kept on the study)
CONFIG = "mbsearch_config"  # RunConfig.identity(): the settings that decide what a trial's numbers mean
SPACE_NAME = "space_name"  # the space's own name (a --space path's file name is not it)
DATA_DIR = "data_dir"  # the dataset folder the search read, absolute
ENVIRONMENT_PREFIX = "environment:"  # + host name: versions and thread counts of every machine that ran it
DEVICE = "latency_device"  # the latency target and its fingerprint; a study never mixes two devices
SUPERNET = "supernet"  # --evaluator supernet: the supernet's folder, digest and steps; a study keeps one
PRECISION = "precision"  # fp32, or int8 with its quantization recipe (nn.quantize.int8_recipe)
TRAINING = "training_instrument"  # where candidates train and in what precision (cpu/fp32, cuda/bf16, ...)
VERIFY_BUDGET = "verify_budget"  # the verification's budget, training seed and training instrument
SEED_NOISE = "seed_noise"  # verify --seed-noise: verified accuracies per network over seeds, and their pooled sd
EVALUATION_PREFIX = "eval"  # eval:TAG:TRIAL: a later evaluation of a trial (a rung, or verify)
CONFIRMED_PREFIX = "confirmed:"  # + trial number: a re-timing on the real device

# Trial attributes (trials_frame turns each into a column of the same name)
ARCH = "arch"  # the trial's arch JSON (Arch.to_dict)
BLOCKS = "blocks"  # timm block strings, for reading at a glance
VAL_ACCURACY = "val_accuracy"  # the proxy's validation accuracy (rung 0)
LATENCY_MS = "latency_ms"  # median latency on the study's device
LATENCY_IQR_MS = "latency_iqr_ms"
LATENCY_CACHED = "latency_cached"
LATENCY_SOURCE = "latency_source"  # measured, or predicted:table|interpolated|extrapolated (a lookup table)
LATENCY_SD_MS = "latency_sd_ms"  # a predicted latency's uncertainty (one sd); 0 for a measured one
PARAMS = "params"
MACS = "macs"
EPOCHS_RUN = "epochs_run"  # below the budget when training stopped early
TRAIN_SECONDS = "train_seconds"
FLOAT_VAL_ACCURACY = "float_val_accuracy"  # --precision int8: the float network's, beside the int8 objective
FLOAT_LATENCY_MS = "float_latency_ms"  # --precision int8: the float graph's latency on the same target
EVALUATOR = "evaluator"  # what scored the trial's accuracy: brief (its own training) or supernet (inherited)
TIMINGS = "timings"  # seconds per stage of the candidate pipeline
SKIPPED = "skipped"  # the constraints a candidate broke (it was not trained)
FAIL_REASON = "fail_reason"
WORKER = "worker"  # host:pid that ran it


def settings(study: optuna.Study, source: str) -> dict[str, Any] | None:
    """The stored RunConfig identity, each field checked against RunConfig (None for a study not made by
    `mbsearch run`); a forged or damaged value is refused with one line naming `source`."""
    stored = study.user_attrs.get(CONFIG)
    return None if stored is None else check_stored_settings(stored, source)


def device(study: optuna.Study) -> dict[str, Any]:
    """The latency device the study was timed on ({} where none is recorded)."""
    stored = study.user_attrs.get(DEVICE)
    return stored if isinstance(stored, dict) else {}


def training(study: optuna.Study) -> str | None:
    value = study.user_attrs.get(TRAINING)
    return value if isinstance(value, str) else None


def data_dir(study: optuna.Study) -> Path | None:
    stored = study.user_attrs.get(DATA_DIR)
    return Path(stored) if isinstance(stored, str) and stored else None


def verify_budget(study: optuna.Study) -> dict[str, Any] | None:
    stored = study.user_attrs.get(VERIFY_BUDGET)
    return stored if isinstance(stored, dict) else None


def seed_noise(study: optuna.Study) -> dict[str, Any] | None:
    """The stored seed noise ({"accuracies": {network: [accuracy, ...]}, "sd_points": float}), or None."""
    stored = study.user_attrs.get(SEED_NOISE)
    if not isinstance(stored, dict) or not isinstance(stored.get("accuracies"), dict):
        return None
    if not isinstance(stored.get("sd_points"), int | float):
        return None
    return stored


def trial_arch(trial: optuna.trial.FrozenTrial) -> Arch:
    """A trial's architecture, validated like any arch file."""
    return Arch.from_dict(trial.user_attrs.get(ARCH), f"trial {trial.number}")
