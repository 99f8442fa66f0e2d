"""run_search(config): storage, sampler, resume, the trial loop and the outputs (trials.csv, pareto.csv).

A rerun of the same command resumes the same study and continues until `trials` trials are complete in
total. Several workers (processes or machines) may run the same loop on one storage: a trial is started
only while the complete and running ones fall short of the target, so the count ends exact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
import socket
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import optuna
import pandas as pd
import torch

from mbsearch import interrupts
from mbsearch.errors import BadInput, Interrupted, RuntimeFailure
from mbsearch.files import write_atomic
from mbsearch.latency.cache import LatencyCache
from mbsearch.latency.factory import open_target
from mbsearch.latency.recipes import KNOWN_RECIPES, POOLED_RECIPE, timing_identity
from mbsearch.latency.targets import Target
from mbsearch.results.pareto import decision_front, trials_frame
from mbsearch.results.retime import retime, to_confirm
from mbsearch.search.objective import Objective, complete_and_running
from mbsearch.search.prepared import PreparedSearch, prepare
from mbsearch.search.rungs import Promoter
from mbsearch.study import records
from mbsearch.study.config import IDENTITY_KEYS, RunConfig, stored_identity
from mbsearch.study.storage import default_url, open_storage, redact
from mbsearch.train.device import TrainingDevice
from mbsearch.train.supernet import TrainedSupernet

MAX_CONSECUTIVE_FAILURES = 5
LATENCY_CACHE = "latency-cache.sqlite"  # in the runs folder, shared by its studies


class Reporter(Protocol):
    def start(self, study: optuna.Study, search: PreparedSearch, complete: int) -> None: ...
    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...
    def finish(self) -> None: ...


@dataclass
class SearchResult:
    study: optuna.Study
    frame: pd.DataFrame
    front: pd.DataFrame
    study_dir: Path
    timed_out: bool
    basis: str = "proxy"  # what the front rests on: proxy, "multi-fidelity" or verified


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers, as they are."""
    if name == "tpe":
        # constant_liar keeps parallel workers from sampling the same point while trials run.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True, n_startup_trials=min(10, max(3, trials // 3))
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise BadInput(f"unknown sampler {name!r}: use tpe, nsga2 or random")


def create_study(config: RunConfig, url: str, worker_id: int, training: TrainingDevice) -> optuna.Study:
    """Create the study, or load it and check that it was run with the same settings."""
    created = not config.study_dir.exists()
    try:
        config.study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {config.study_dir}: {exc.strerror}; pick another --runs-dir") from None
    try:
        return _open_study(config, url, worker_id, training)
    except BaseException:
        if created:
            shutil.rmtree(config.study_dir, ignore_errors=True)  # no half-created run folder
        raise


def _open_study(config: RunConfig, url: str, worker_id: int, training: TrainingDevice) -> optuna.Study:
    storage = open_storage(url, config.heartbeat, config.grace_period, config.max_retry)
    multi = config.objective == "pareto"
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        directions=["maximize", "minimize"] if multi else ["maximize"],
        load_if_exists=True,
    )
    # A resumed run or another worker must not replay the same random draws: offset the seed by the
    # trials already stored and by the worker number (still reproducible for a given history).
    offset = len(study.get_trials(deepcopy=False)) + 1000 * worker_id
    if config.storage is not None:
        # A shared storage has workers on other hosts (a SLURM array, a Kubernetes Job), each worker 0 of its
        # own command, that may start at one moment on the same history: the process tells them apart.
        offset += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    base = config.seed if config.sampler_seed is None else config.sampler_seed
    study.sampler = make_sampler(config.sampler, (base + offset) % 2**32, config.trials)
    stored = study.user_attrs.get(records.CONFIG)
    if stored is None:
        study.set_metric_names(["val_accuracy", "latency_ms"] if multi else ["mnas_reward"])
        study.set_user_attr(records.CONFIG, config.identity())
        study.set_user_attr(records.SPACE_NAME, config.space_name)
        if config.data_dir is not None:
            study.set_user_attr(records.DATA_DIR, str(config.data_dir.resolve()))
    if worker_id == 0 or stored is None:
        # What accuracies depend on beyond the settings: thread counts and library versions. The same
        # command on the same machine repeats its numbers; another machine may differ (README).
        study.set_user_attr(f"{records.ENVIRONMENT_PREFIX}{socket.gethostname()}", environment(config, training))
    if stored is not None and any(stored_identity(stored, k) != config.identity().get(k) for k in IDENTITY_KEYS):
        # Compared key by key: a study made before a key existed stored no value for it (LEGACY_DEFAULTS).
        changed = sorted(key for key in IDENTITY_KEYS if stored_identity(stored, key) != config.identity().get(key))
        detail = ", ".join(f"{key}={stored_identity(stored, key)!r}" for key in changed)
        raise BadInput(
            f"study {config.study_name!r} was run with {detail}; rerun with those settings or use a new --study"
        )
    return study


def check_device(study: optuna.Study, target: Target) -> None:
    """A study's latencies come from one device and one recipe: record them once, refuse another device
    later. A study started with an earlier recipe this version knows (KNOWN_RECIPES) goes on with it, so
    its front never mixes two kinds of latency."""
    stored = study.user_attrs.get(records.DEVICE)
    if stored is not None and target.runtime != "lut":
        started_with = stored.get("timing", {}).get("recipe", POOLED_RECIPE)  # none recorded before 2026-12-02
        if started_with in KNOWN_RECIPES:
            target.timing_recipe = started_with  # type: ignore[attr-defined]
    device = target.device() | {"target": target.name, "timing": timing_identity(target)}
    if stored is None:
        study.set_user_attr(records.DEVICE, device)
    elif "timing" in stored and stored["timing"] != device["timing"]:
        raise BadInput(
            f"study {study.study_name!r} was timed with {stored['timing']}; this version times with "
            f"{device['timing']}: the latencies would not compare; use a new --study"
        )
    elif stored.get("fingerprint") != device["fingerprint"]:
        raise BadInput(
            f"study {study.study_name!r} was timed on device {stored.get('fingerprint')} ({stored.get('cpu')}, "
            f"{stored.get('cores')} core(s), {stored.get('threads')} thread(s)); {target.name} is device "
            f"{device['fingerprint']} ({device['cpu']}, {device['cores']} core(s), {device['threads']} thread(s)); "
            "use that device or a new --study"
        )


def check_training(study: optuna.Study, training: TrainingDevice) -> None:
    """A study's accuracies come from one training instrument (device kind and precision): record it once,
    refuse another later, as for latency (a study begun on the CPU in fp32 and resumed on a GPU in bf16
    would rank candidates by two instruments at once)."""
    stored = records.training(study)
    if stored is None:
        study.set_user_attr(records.TRAINING, training.instrument)
    elif stored != training.instrument:
        kind = stored.split("/")[0]
        raise BadInput(
            f"study {study.study_name!r} trained its candidates on {stored}; this run would train on "
            f"{training.instrument}: the accuracies would not compare; pass --device {kind} or use a new --study"
        )


def check_precision(study: optuna.Study, precision: str) -> None:
    """A study's numbers come from one precision and, for int8, one quantization recipe (ONNX Runtime's
    version included: its kernels and calibration decide the int8 numbers): recorded once, another refused."""
    from mbsearch.nn.quantize import int8_recipe

    record = {"precision": precision} | ({"recipe": int8_recipe()} if precision == "int8" else {})
    stored = study.user_attrs.get(records.PRECISION)
    if stored is None:
        study.set_user_attr(records.PRECISION, record)
    elif stored != record:
        raise BadInput(
            f"study {study.study_name!r} was searched in {stored.get('precision')} with {stored.get('recipe')}; "
            f"this run quantizes with {record.get('recipe')}: the numbers would not compare; use a new --study"
        )


def check_supernet(study: optuna.Study, supernet: TrainedSupernet) -> None:
    """A study scored by inherited weights keeps one supernet: its folder and digest are recorded once,
    and a resume with another (retrained, or trained for longer) is refused, as its scores would differ."""
    record = {"folder": str(supernet.folder.resolve()), "digest": supernet.digest, "steps": supernet.manifest["steps"]}
    stored = study.user_attrs.get(records.SUPERNET)
    if stored is None:
        study.set_user_attr(records.SUPERNET, record)
    elif stored.get("digest") != record["digest"]:
        raise BadInput(
            f"study {study.study_name!r} was scored with the supernet {stored.get('digest')} ({stored.get('steps')} "
            f"steps, {stored.get('folder')}); {supernet.folder} holds {record['digest']}: use that supernet "
            "(--supernet DIR) or a new --study"
        )


def environment(config: RunConfig, training: TrainingDevice) -> dict:
    import numpy
    import onnxruntime

    return {
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "train_threads": config.train_threads or max(1, (os.cpu_count() or 1) // config.workers),
        "latency_threads": config.threads,
        "train_device": training.describe(),
        "cuda": torch.version.cuda,
    }


def write_outputs(study: optuna.Study, study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """trials.csv and pareto.csv in the study folder. The front is the one at the highest fidelity
    reached (verified, else the top multi-fidelity rung, else the proxy); the basis says which."""
    frame = trials_frame(study)
    front, basis = decision_front(frame)
    write_atomic(study_dir / "trials.csv", frame.to_csv(index=False))
    write_atomic(study_dir / "pareto.csv", front.assign(accuracy_basis=basis).to_csv(index=False))
    return frame, front, basis


def _went_wrong(trial: optuna.trial.FrozenTrial) -> bool:
    """A failed trial, or one pruned because training diverged (not a surplus trial)."""
    if trial.state == optuna.trial.TrialState.FAIL:
        return True
    return trial.state == optuna.trial.TrialState.PRUNED and _reason(trial).startswith("diverged")


def _reason(trial: optuna.trial.FrozenTrial) -> str:
    reason = trial.user_attrs.get(records.FAIL_REASON) or trial.system_attrs.get(records.FAIL_REASON) or "unknown"
    return str(reason).splitlines()[0]


def run_search(config: RunConfig, reporter: Reporter | None = None, worker_id: int = 0) -> SearchResult:
    """Run (or resume) the search described by `config`. A disk or storage that fails before the first trial
    is complete leaves nothing this command made (the study folder, its artifacts, the latency cache)."""
    search = prepare(config)  # every input checked, the supernet found, before the study exists
    made = _MadeHere.before(config)
    try:
        return _search(config, search, reporter, worker_id)
    except BaseException as exc:
        if _is_disk_fault(exc):
            made.remove_if_no_trial(config)
        raise


@dataclass(frozen=True)
class _MadeHere:
    """What a new search is about to make on disk: its study folder (holding its SQLite storage) and the runs
    folder's latency cache, where they did not exist yet."""

    study_dir: bool
    latency_cache: bool

    @classmethod
    def before(cls, config: RunConfig) -> _MadeHere:
        own_storage = config.storage is None  # a shared storage (PostgreSQL, another file) is never removed
        return cls(own_storage and not config.study_dir.exists(), not (config.runs_dir / LATENCY_CACHE).exists())

    def remove_if_no_trial(self, config: RunConfig) -> None:
        if self.study_dir and not _any_complete(config.study_dir / "study.db"):
            shutil.rmtree(config.study_dir, ignore_errors=True)
        if self.latency_cache:
            for path in config.runs_dir.glob(f"{LATENCY_CACHE}*"):  # with SQLite's -journal / -wal files
                path.unlink(missing_ok=True)


def _any_complete(database: Path) -> bool:
    """Whether a study file holds a complete trial; one that cannot be read is kept (True)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT 1 FROM trials WHERE state = 'COMPLETE' LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return True


def _is_disk_fault(exc: BaseException) -> bool:
    """A disk that is full, over quota or read-only, as the OS or the study's storage reports it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS):
        return True
    return isinstance(exc, optuna.exceptions.StorageInternalError)


def _search(config: RunConfig, search: PreparedSearch, reporter: Reporter | None, worker_id: int) -> SearchResult:
    study_dir = config.study_dir
    url = config.storage or default_url(study_dir)
    study = create_study(config, url, worker_id, search.training)
    check_device(study, search.target)
    check_training(study, search.training)
    if search.supernet is not None:
        check_supernet(study, search.supernet)
    check_precision(study, config.precision)
    previous_threads = torch.get_num_threads()  # restored below: a library leaves process state as it found it
    torch.set_num_threads(config.train_threads or max(1, (os.cpu_count() or 1) // config.workers))
    cache = LatencyCache(config.runs_dir / LATENCY_CACHE)
    objective = Objective(search, cache)
    promoter = Promoter(config, search.data, search.training) if config.rungs else None
    if reporter:
        reporter.start(study, search, complete_and_running(study)[0])
    confirm = _confirmer(config) if config.confirm_on is not None and worker_id == 0 else None
    try:
        with interrupts.deferred_signals():
            timed_out = _trial_loop(study, objective, config, reporter, promoter, confirm)
    except KeyboardInterrupt:
        write_outputs(study, study_dir)
        complete, _ = complete_and_running(study)
        raise Interrupted(
            f"interrupted: {complete} complete trial(s) kept in {redact(url)}; rerun the same command to resume"
        ) from None
    finally:
        cache.close()
        torch.set_num_threads(previous_threads)
        if reporter:
            reporter.finish()
    frame, front, basis = write_outputs(study, study_dir)
    if confirm is not None:
        confirm(study, strict=True)  # what the last trials changed; a lost device now fails the command
    return SearchResult(study, frame, front, study_dir, timed_out, basis)


def _confirmer(config: RunConfig) -> Callable[..., None]:
    """After each trial, time on `--confirm-on` the front and the candidates whose predicted latency is
    uncertain enough to change their place on it (results.retime.to_confirm): during the search, so the
    user sees predicted against measured as it runs; each trial is timed once per device."""
    device = open_target(config.confirm_on, config.runtime, config.threads, config.target_token)

    def confirm(study: optuna.Study, strict: bool = False) -> None:
        def said(number: int, predicted: float, measured: float) -> None:
            sd = study.trials[number].user_attrs.get(records.LATENCY_SD_MS) or 0.0
            print(
                f"confirmed on {config.confirm_on}: trial {number} predicted {predicted:.3f} ± {sd:.3f} ms, "
                f"measured {measured:.3f} ms ({measured / predicted - 1:+.0%})",
                flush=True,
            )

        try:
            retime(study, to_confirm(trials_frame(study)), device, said, config.precision)
        except RuntimeFailure as exc:
            if strict:
                raise
            # A device lost mid-search: the search goes on; the next trial, or the end, tries again.
            print(f"warning: --confirm-on {config.confirm_on}: {exc}; retrying after the next trial", file=sys.stderr)

    return confirm


def _trial_loop(
    study: optuna.Study,
    objective: Objective,
    config: RunConfig,
    reporter: Reporter | None,
    promoter: Promoter | None = None,
    confirm: Callable[[optuna.Study], None] | None = None,
) -> bool:
    """Run trials until `config.trials` are complete (and, with --rungs, no promotion is due); True when
    --timeout stopped it first. Promotions go first: ASHA promotes as soon as a candidate qualifies."""
    deadline = time.monotonic() + config.timeout if config.timeout else None
    failures = 0
    finished: list[optuna.trial.FrozenTrial] = []
    callbacks = [lambda s, t: finished.append(t)]
    if reporter:
        callbacks.append(reporter.trial_done)
    if confirm is not None:
        callbacks.append(lambda s, t: confirm(s))
    while True:
        interrupts.check()
        if deadline is not None and time.monotonic() >= deadline:
            return True
        if promoter is not None:
            promoted = promoter.run_next(study)
            if promoted is not None:
                if reporter and hasattr(reporter, "promotion_done"):
                    reporter.promotion_done(promoted)
                continue
        complete, running = complete_and_running(study)
        if complete >= config.trials:
            return False
        if complete + running >= config.trials:
            # Others hold the remaining trials. If one of them died, its heartbeat stops, and this
            # marks its trial failed and re-queues it (RetryHeartbeatStaleTrialCallback).
            optuna.storages.fail_stale_trials(study)
            with interrupts.interruptible():
                time.sleep(1.0)
            continue
        # A candidate that breaks the runtime (an export or a kernel error) fails alone; the search goes on.
        study.optimize(objective, n_trials=1, catch=(RuntimeFailure, RuntimeError), callbacks=callbacks)
        failures = failures + 1 if finished and _went_wrong(finished[-1]) else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeFailure(f"{failures} trials in a row failed, the last with: {_reason(finished[-1])}")
