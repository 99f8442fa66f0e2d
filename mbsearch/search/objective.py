"""The trial function: sample -> build -> cost -> latency -> (constraints) -> train -> values.

It only glues the steps; each step lives in its own module. Latency is measured before training so that
a candidate over a budget is never trained: an infeasible region costs seconds, not minutes.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from mbsearch import interrupts
from mbsearch.architecture.arch import Arch
from mbsearch.architecture.blockstrings import block_strings
from mbsearch.architecture.sample import sample_arch
from mbsearch.architecture.space import SearchSpace
from mbsearch.errors import RuntimeFailure
from mbsearch.latency.cache import LatencyCache
from mbsearch.latency.profiler import CandidateProfile, profile_candidate
from mbsearch.latency.targets import LatencyStats, Target
from mbsearch.search.int8 import Int8Step
from mbsearch.search.prepared import PreparedSearch
from mbsearch.study import records
from mbsearch.study.config import RunConfig
from mbsearch.study.dashboard import artifact_store
from mbsearch.train.data import Dataset
from mbsearch.train.device import TrainingDevice
from mbsearch.train.evaluate import Evaluation, Recipe, evaluate
from mbsearch.train.loop import Diverged, Normalizer, OutOfMemory
from mbsearch.train.supernet import InheritedScoring, TrainedSupernet, finetune_budget, score_inherited

# Trials beyond the target, started by a worker that raced another: pruned before any work is done.
SURPLUS = "surplus: other workers already reached the trial target"


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float, w: float) -> float:
    """MnasNet's soft-constrained reward ACC * (LAT / T) ** w."""
    return accuracy * (latency_ms / target_ms) ** w


def complete_and_running(study: optuna.Study, below: int | None = None) -> tuple[int, int]:
    """(complete, running) trials, optionally only those numbered below `below`."""
    trials = study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    )
    if below is not None:
        trials = [t for t in trials if t.number < below]
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


@dataclass(frozen=True)
class _Candidate:
    """One trial's network: at the deployment resolution (timed) and the dataset's (trained), its profile
    (model, params, MACs, latency pending) and the trial's timings so far."""

    trial: optuna.Trial
    arch: Arch
    trained_arch: Arch
    profile: CandidateProfile
    timings: dict[str, float]

    @property
    def model(self) -> torch.nn.Module:
        return self.profile.model

    @property
    def params(self) -> int:
        return self.profile.params

    @property
    def macs(self) -> int:
        return self.profile.macs


@dataclass
class Objective:
    """Callable for `study.optimize`. Returns (val_accuracy, latency_ms), or the MnasNet reward."""

    search: PreparedSearch
    cache: LatencyCache | None
    config: RunConfig = field(init=False)
    space: SearchSpace = field(init=False)
    data: Dataset = field(init=False)
    target: Target = field(init=False)
    training: TrainingDevice = field(init=False)  # where candidates train
    supernet: TrainedSupernet | None = field(init=False)  # --evaluator supernet: scores by inherited weights
    normalizer: Normalizer = field(init=False)
    artifacts: optuna.artifacts.FileSystemArtifactStore = field(init=False)

    int8: Int8Step | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        search = self.search
        self.config, self.space, self.data, self.target = search.config, search.space, search.data, search.target
        self.training, self.supernet = search.training, search.supernet
        self.normalizer = Normalizer.fit(self.data.train.images[: self.config.train_size])
        if self.supernet is not None:  # inherited weights expect the inputs the supernet trained on
            self.normalizer = self.supernet.normalizer
        self.artifacts = artifact_store(self.config.study_dir)
        if self.config.precision == "int8":
            self.int8 = Int8Step(self.data, self.normalizer, self.target, self.cache, self.config.scoring_val_size)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._run(trial)
        except OutOfMemory as exc:
            out_of_memory = str(exc)
        except (RuntimeFailure, RuntimeError) as exc:
            # Optuna records a failed trial without its reason: keep it, for the log, the report and resume.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            trial.set_user_attr(records.FAIL_REASON, reason[:500])
            raise
        # Too large for the GPU: the trial fails with the reason and the search goes on at the next candidate
        # (train() gave the memory back).
        trial.set_user_attr(records.FAIL_REASON, out_of_memory)
        raise RuntimeFailure(out_of_memory)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        config = self.config
        complete, running = complete_and_running(trial.study, below=trial.number)
        if complete + running >= config.trials:
            trial.set_user_attr(records.FAIL_REASON, SURPLUS)
            raise optuna.TrialPruned(SURPLUS)
        trial.set_user_attr(records.WORKER, f"{socket.gethostname()}:{os.getpid()}")  # who ran it, for the logs
        # Where timing happens on another device, it runs while this machine trains. A latency constraint
        # needs the latency first (an over-budget candidate is never trained), so then it waits.
        overlap = config.max_latency is None and self.target.overlaps_training
        candidate = self._sample_and_profile(trial, overlap)
        if not overlap:
            stats = self._latency(candidate)
            # int8: the constraints apply to the int8 latency, known only once the trained network is quantized
            violations = self._set_constraints(trial, stats.median_ms, candidate.params) if self.int8 is None else []
            if violations:
                return self._skipped(candidate, violations, stats.median_ms)
        result, trained = self._train(trial, candidate.trained_arch, candidate.model, candidate.timings)
        if overlap:
            waited = time.perf_counter()
            stats = self._latency(candidate)  # a latency that never comes fails the trial: none is invented
            candidate.timings["latency_wait"] = round(time.perf_counter() - waited, 4)  # idle, waiting for it
            if self.int8 is None:  # int8: set on the int8 latency below
                self._set_constraints(trial, stats.median_ms, candidate.params)
        trial.set_user_attr(records.TRAIN_SECONDS, round(result.seconds, 3))
        trial.set_user_attr(records.EPOCHS_RUN, round(result.epochs_run, 4))
        accuracy, latency_ms = result.accuracy, stats.median_ms
        if self.int8 is not None:  # the int8 graph's numbers become the objectives, the float ones kept beside
            accuracy, latency_ms = self._quantized(candidate, trained, result.accuracy, stats)
        trial.set_user_attr(records.VAL_ACCURACY, accuracy)
        trial.set_user_attr(records.TIMINGS, candidate.timings)
        return self._values(accuracy, latency_ms)

    def _sample_and_profile(self, trial: optuna.Trial, background: bool) -> _Candidate:
        """The trial's architecture, built, counted and its latency started (in the background with `background`)."""
        config = self.config
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # With --latency-input-size the stride plan is the deployment resolution's: the network trained at the
        # dataset's resolution and the one timed at the deployment resolution are the same blocks.
        deploy_size = config.latency_input_size or self.data.size
        arch = sample_arch(trial, self.space, deploy_size, self.data.channels, self.data.num_classes)
        arch = arch.with_info(name=f"{config.study_name}-trial-{trial.number}")
        timings["sample"] = round(time.perf_counter() - started, 4)
        # Building, timing and training may be interrupted at once by Ctrl-C; storage writes never are.
        with interrupts.interruptible():
            profile = profile_candidate(arch, self.target, config.seed, self.cache, timings, background=background)
        return _Candidate(trial, arch, arch.at_resolution(self.data.size), profile, timings)

    def _latency(self, candidate: _Candidate) -> LatencyStats:
        """The candidate's float latency, waited for and stored with its costs."""
        with interrupts.interruptible():
            stats, cached = candidate.profile.latency.result()
        self._store_measures(candidate.trial, candidate.arch, candidate.params, candidate.macs, stats, cached)
        return stats

    def _skipped(self, candidate: _Candidate, violations: list[str], latency_ms: float) -> float | tuple[float, float]:
        """Over budget: not trained. Accuracy 0 keeps it off the front; the constraint tells the sampler."""
        trial = candidate.trial
        trial.set_user_attr(records.SKIPPED, "; ".join(violations))
        trial.set_user_attr(records.VAL_ACCURACY, 0.0)
        trial.set_user_attr(records.EPOCHS_RUN, 0.0)
        trial.set_user_attr(records.TIMINGS, candidate.timings)
        return self._values(0.0, latency_ms)

    def _quantized(
        self, candidate: _Candidate, model: torch.nn.Module, float_accuracy: float, float_stats: LatencyStats
    ) -> tuple[float, float]:
        """--precision int8: the trained network quantized, scored by ONNX Runtime and timed; the int8 numbers
        replace the float ones as the trial's objectives, the float ones are kept beside them."""
        assert self.int8 is not None
        trial, arch = candidate.trial, candidate.arch
        with interrupts.interruptible():
            quantized = self.int8(model, arch, candidate.timings)
        trial.set_user_attr(records.FLOAT_VAL_ACCURACY, float_accuracy)
        trial.set_user_attr(records.FLOAT_LATENCY_MS, float_stats.median_ms)
        self._store_measures(trial, arch, candidate.params, candidate.macs, quantized.latency, quantized.cached,
                             upload=False)  # fmt: skip
        self._upload(trial, f"trial-{trial.number}.int8.onnx", quantized.graph, "application/octet-stream")
        self._set_constraints(trial, quantized.latency.median_ms, candidate.params)
        return quantized.accuracy, quantized.latency.median_ms

    def _train(self, trial: optuna.Trial, arch: Arch, model: torch.nn.Module, timings: dict[str, float]):
        """The proxy training, or with --evaluator supernet the inherited weights' score (after
        --finetune-steps of training); a diverged training prunes the trial. Each trial records which of the
        two scored it."""
        started = time.perf_counter()
        evaluator = "supernet" if self.supernet is not None else "brief"
        trial.set_user_attr(records.EVALUATOR, evaluator)
        try:
            with interrupts.interruptible():
                result, model = self._inherited(arch) if self.supernet is not None else self._brief(arch, model)
        except Diverged as exc:
            trial.set_user_attr(records.FAIL_REASON, f"diverged: {exc}")
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        timings["score" if evaluator == "supernet" else "train"] = round(time.perf_counter() - started, 4)
        return result, model

    def _brief(self, arch: Arch, model: torch.nn.Module) -> tuple[Evaluation, torch.nn.Module]:
        config = self.config
        recipe = Recipe(config.budget, config.seed, self.normalizer, self.training)
        return evaluate(arch, self.data, recipe, model), model

    def _inherited(self, arch: Arch) -> tuple[Evaluation, torch.nn.Module | None]:
        assert self.supernet is not None
        steps = self.config.finetune_steps
        scoring = InheritedScoring(val_images=self.config.scoring_val_size, finetune_steps=steps, seed=self.config.seed)
        inherited = score_inherited(self.supernet, arch, self.data, scoring, self.training)
        budget = finetune_budget(steps) if steps else self.config.budget
        ran = inherited.finetune_steps  # the steps that ran (the training split may hold fewer batches)
        evaluation = Evaluation(inherited.accuracy, inherited.seconds, float(ran > 0), ran, budget, self.config.seed)
        return evaluation, inherited.model

    def _store_measures(
        self, trial: optuna.Trial, arch: Arch, params: int, macs: int, stats, cached: bool, upload: bool = True
    ) -> None:
        trial.set_user_attr(records.ARCH, arch.to_dict())
        if upload:
            self._upload(trial, f"trial-{trial.number}.arch.json", arch.to_json().encode(), "application/json")
        trial.set_user_attr(records.BLOCKS, " ".join(block_strings(arch)))
        for key, value in {
            records.PARAMS: params,
            records.MACS: macs,
            records.LATENCY_MS: stats.median_ms,
            records.LATENCY_IQR_MS: stats.iqr_ms,
            records.LATENCY_CACHED: cached,
            records.LATENCY_SOURCE: stats.source,
            records.LATENCY_SD_MS: stats.sd_ms,
        }.items():
            trial.set_user_attr(key, value)

    def _upload(self, trial: optuna.Trial, name: str, content: bytes, mimetype: str) -> None:
        """A file artifact of the trial (its arch JSON, its int8 graph), downloadable from optuna-dashboard."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(content)
            optuna.artifacts.upload_artifact(
                artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial, mimetype=mimetype
            )

    def _set_constraints(self, trial: optuna.Trial, latency_ms: float, params: int) -> list[str]:
        """Optuna 5 constraints: feasible when every value is <= 0."""
        config = self.config
        violations = []
        if config.max_latency is not None:
            trial.set_constraint("latency", latency_ms - config.max_latency)
            if latency_ms > config.max_latency:
                violations.append(f"latency {latency_ms:.3f} ms > --max-latency {config.max_latency}")
        if config.max_params is not None:
            trial.set_constraint("params", float(params - config.max_params))
            if params > config.max_params:
                violations.append(f"params {params:,} > --max-params {config.max_params:,}")
        return violations

    def _values(self, accuracy: float, latency_ms: float) -> float | tuple[float, float]:
        if self.config.objective == "mnas":
            assert self.config.latency_target is not None  # checked by RunConfig
            return mnas_reward(accuracy, latency_ms, self.config.latency_target, self.config.mnas_w)
        return accuracy, latency_ms
