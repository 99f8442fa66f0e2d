"""Reference MobileNets measured exactly like the candidates: same data, proxy budget, target and runtime.

Results are stored in <runs-dir>/baselines.json, one entry per (device fingerprint, dataset and its folder,
input, budget and seed rule, target, runtime, threads, training instrument, model), so each baseline is
trained and timed once, by `verify`, and reused by every later study on the same data and device; changing
any of these trains it again. `report` only reads them (stored_study_baselines): it never trains or times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mbsearch.architecture.zoo import reference_arch, reference_names
from mbsearch.files import write_atomic
from mbsearch.latency.cache import LatencyCache
from mbsearch.latency.factory import open_target
from mbsearch.latency.profiler import profile_candidate
from mbsearch.latency.recipes import time_network
from mbsearch.latency.targets import Prepared, Target, input_shape
from mbsearch.nn.quantize import QuantizationFailed, int8_recipe
from mbsearch.results.finished import FinishedStudy
from mbsearch.results.pareto import dominates
from mbsearch.study import records
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset, load_study_data
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.evaluate import Recipe, evaluate
from mbsearch.train.image_cache import default_cache_dir
from mbsearch.train.int8 import Int8Scorer
from mbsearch.train.loop import Normalizer, TrainingFailed

# With --precision int8, val_accuracy and latency_ms are the int8 graph's (as for the trials), the float
# network's beside them; NaN for a float study.
COLUMNS = ["name", "val_accuracy", "latency_ms", "latency_iqr_ms", "params", "macs", "float_val_accuracy",
           "float_latency_ms"]  # fmt: skip


def _cache_key(settings: dict[str, Any], name: str, device: str, data_dir: Path | None, instrument: str) -> str:
    fields = [
        "dataset",
        "input_size",
        "channels",
        "val_size",
        "epochs",
        "train_size",
        "batch_size",
        "lr",
        "target",
        "runtime",
        "threads",
        "seed",
        "latency_input_size",
    ]
    described = ",".join(f"{key}={settings.get(key)}" for key in fields)
    if settings.get("train_seed") is not None:  # a verification's seed (keys of proxy baselines unchanged)
        described += f",train_seed={settings['train_seed']}"
    if settings.get("precision", "fp32") != "fp32":  # int8 baselines apart (keys of float ones unchanged)
        described += f",precision={settings['precision']},recipe={_int8_recipe_digest()}"
    # The data the baselines trained on (two folder datasets of one size are different data) and the
    # training instrument (cpu/fp32 and cuda/bf16 give different accuracies).
    folder = str(Path(data_dir).resolve()) if data_dir is not None else "default"
    described += f",data_dir={folder},training={instrument}"
    # The network itself, as the zoo defines it (at 224x224x3, 1000 classes): a row stored before a
    # reference's definition changed (2026-12-07: four V3 references became the papers' networks) is
    # another network's, and is trained again, never reused.
    network = hashlib.sha256(reference_arch(name).key().encode()).hexdigest()[:12]
    return f"{device}|{described}|{name}|{network}"


def _int8_recipe_digest() -> str:
    return hashlib.sha256(repr(sorted(int8_recipe().items())).encode()).hexdigest()[:12]


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cache, or an empty one where the file is missing or damaged (it is rebuilt, never trusted)."""
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return cache if isinstance(cache, dict) and all(isinstance(v, dict) for v in cache.values()) else {}


def baseline_frame(
    settings: dict[str, Any],
    runs_dir: Path,
    data_dir: Path | None = None,
    names: list[str] | None = None,
    on_progress: Callable[[str, bool], None] | None = None,
    target: Target | None = None,
    training: TrainingDevice = CPU,
) -> pd.DataFrame:
    """One row per reference model, timed on `target` (default: the study's own local target); computed
    once per device, then read from the cache."""
    names = names or reference_names()
    target = target or open_target(settings["target"], settings["runtime"], settings["threads"])
    device = target.device()["fingerprint"]
    cache_path = runs_dir / "baselines.json"
    cache = _read_cache(cache_path)
    missing = [name for name in names if _cache_key(settings, name, device, data_dir, training.instrument) not in cache]
    if missing:
        data = load_study_data(settings, data_dir, default_cache_dir(runs_dir))  # the search's decoded images
        budget = Budget(
            epochs=settings["epochs"],
            train_size=settings["train_size"],
            batch_size=settings["batch_size"],
            lr=settings["lr"],
        )
        latency_cache = LatencyCache(runs_dir / "latency-cache.sqlite")
        normalizer = Normalizer.fit(data.train.images[: budget.train_size])  # the one train() would fit
        int8 = Int8Scorer(data.train.images, normalizer, data.val) if settings.get("precision") == "int8" else None
        # The trials' seed rule: the proxy seed, or a verification's own (`train_seed`); the study's seed
        # still fixes the validation split (load_study_data).
        recipe = Recipe(budget, settings.get("train_seed", settings.get("seed", 0)), normalizer, training)
        measure = _BaselineMeasure(data, recipe, target, latency_cache, int8, settings.get("latency_input_size"))
        try:
            for name in missing:
                if on_progress:
                    on_progress(name, False)
                cache[_cache_key(settings, name, device, data_dir, training.instrument)] = measure(name)
                write_atomic(cache_path, json.dumps(cache, indent=1))  # keep what is done if interrupted
        finally:
            latency_cache.close()
    rows = [cache[_cache_key(settings, name, device, data_dir, training.instrument)] for name in names]
    return pd.DataFrame(rows, columns=COLUMNS)  # a float study's rows lack the float_ columns: NaN


@dataclass(frozen=True)
class _BaselineMeasure:
    """One reference network measured as a candidate is: timed at the deployment resolution, trained at the
    dataset's by `recipe`, and for an int8 study quantized, scored and timed as its int8 graph."""

    data: Dataset
    recipe: Recipe
    target: Target
    latency_cache: LatencyCache
    int8: Int8Scorer | None
    latency_input_size: int | None

    def __call__(self, name: str) -> dict[str, Any]:
        data = self.data
        arch = reference_arch(name, self.latency_input_size or data.size, data.channels, data.num_classes)
        profile = profile_candidate(arch, self.target, self.recipe.seed, self.latency_cache)
        stats, _ = profile.latency.result()
        row = {"name": name, "latency_ms": stats.median_ms, "latency_iqr_ms": stats.iqr_ms,
               "params": profile.params, "macs": profile.macs}  # fmt: skip
        try:
            trained = arch.at_resolution(data.size)
            row["val_accuracy"] = evaluate(trained, data, self.recipe, profile.model).accuracy
            if self.int8 is not None:  # quantized and timed as a trial is: the int8 graph's numbers
                row["float_val_accuracy"], row["float_latency_ms"] = row["val_accuracy"], stats.median_ms
                row["val_accuracy"], graph = self.int8(profile.model.cpu(), trained)
                timed = time_network(self.target, Prepared(graph, input_shape(trained), trained))
                row["latency_ms"], row["latency_iqr_ms"] = timed.median_ms, timed.iqr_ms
        except (TrainingFailed, QuantizationFailed):  # no accuracy (diverged, too large, not quantizable)
            row["val_accuracy"] = float("nan")
        return row


def dominance(front: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """For each baseline: is it dominated by a front point, and by how much.

    accuracy_gain: the best accuracy gain (points) among front points at most as slow as the baseline.
    speedup: baseline latency / the fastest front point at least as accurate as the baseline.
    """
    rows = []
    for base in baselines.itertuples():
        no_slower = front[front["latency_ms"] <= base.latency_ms]
        no_worse = front[front["val_accuracy"] >= base.val_accuracy]
        dominated = any(
            dominates(point.val_accuracy, point.latency_ms, base.val_accuracy, base.latency_ms)
            for point in front.itertuples()
        )
        rows.append(
            {
                "name": base.name,
                "dominated": dominated,
                # signed: a negative gain says by how much the best no-slower front point falls short
                "accuracy_gain": float((no_slower["val_accuracy"].max() - base.val_accuracy) * 100)
                if not no_slower.empty
                else None,
                "speedup": float(base.latency_ms / no_worse["latency_ms"].min()) if not no_worse.empty else None,
            }
        )
    return pd.DataFrame(rows, columns=["name", "dominated", "accuracy_gain", "speedup"])


def _verified_settings(finished: FinishedStudy) -> dict[str, Any] | None:
    """The study's settings at its verification budget and seed rule; None before any trial is verified."""
    verify_budget = records.verify_budget(finished.study)
    if not verify_budget or not finished.frame["verified_accuracy"].notna().any():
        return None
    keys = ("epochs", "train_size", "batch_size", "lr")
    return finished.settings | {key: verify_budget[key] for key in keys} | {"train_seed": verify_budget.get("seed")}


def _compared_at_proxy(finished: FinishedStudy) -> bool:
    """A supernet study's trials are scored by inherited weights; a baseline has none, so it is compared only
    at the verification budget (at the proxy budget it would be plotted beside numbers of another kind)."""
    return finished.settings.get("evaluator") != "supernet"


@dataclass(frozen=True)
class StoredBaselines:
    """What `report` draws: the stored baselines of a study at each budget (None where none is stored or
    compared), and a line per budget with missing references, naming the command that fills them."""

    proxy: pd.DataFrame | None
    verified: pd.DataFrame | None
    missing: tuple[str, ...]


def _stored(settings: dict[str, Any], runs_dir: Path, data_dir: Path | None, device: str, instrument: str):
    cache = _read_cache(runs_dir / "baselines.json")
    rows = {name: cache.get(_cache_key(settings, name, device, data_dir, instrument)) for name in reference_names()}
    found = [row for row in rows.values() if row is not None]
    frame = pd.DataFrame(found, columns=COLUMNS) if found else None
    return frame, [name for name, row in rows.items() if row is None]


def stored_study_baselines(finished: FinishedStudy, runs_dir: Path, data_dir: Path | None = None) -> StoredBaselines:
    """The baselines stored for this study's data, budgets, device fingerprint and training instruments
    (the study's records, not this machine's): nothing is trained or timed, and results made on another
    device or instrument are never drawn beside the study's."""
    study, folder = finished.study, data_dir or records.data_dir(finished.study)
    device = str(records.device(study).get("fingerprint"))
    instrument = records.training(study) or CPU.instrument
    proxy, missing_proxy = (None, []) if not _compared_at_proxy(finished) else _stored(
        finished.settings, runs_dir, folder, device, instrument
    )  # fmt: skip
    verified, missing_verified = None, []
    if (settings := _verified_settings(finished)) is not None:
        verify_instrument = (records.verify_budget(study) or {}).get("training") or instrument
        verified, missing_verified = _stored(settings, runs_dir, folder, device, verify_instrument)
    name = study.study_name
    missing = tuple(
        f"{len(names)} of {len(reference_names())} baselines at the {budget} budget are not stored for this "
        f"study's data and device ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): run "
        f"'mbsearch verify {name}' on the study's device to train and time them"
        for budget, names in (("proxy", missing_proxy), ("verify", missing_verified))
        if names
    )
    return StoredBaselines(proxy, verified, missing)


def study_baselines(
    finished: FinishedStudy,
    runs_dir: Path,
    data_dir: Path | None = None,
    target: Target | None = None,
    on_progress: Callable[[str, bool], None] | None = None,
    training: TrainingDevice | None = CPU,
    verify_training: TrainingDevice | None = None,
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Train and time what is not stored yet: the baselines with the search's proxy recipe on `training`
    (none for a supernet study, or where `training` is None), and, where trials were verified, again with
    the verification's budget and seed rule on `verify_training` (default: `training`), so that each front
    is judged against baselines on equal terms."""
    folder = data_dir or records.data_dir(finished.study)
    proxy = None
    if training is not None and _compared_at_proxy(finished):
        proxy = baseline_frame(
            finished.settings, runs_dir, folder, on_progress=on_progress, target=target, training=training
        )
    settings = _verified_settings(finished)
    if settings is None:
        return proxy, None
    verify_training = verify_training or training or CPU
    return proxy, baseline_frame(
        settings, runs_dir, folder, on_progress=on_progress, target=target, training=verify_training
    )
