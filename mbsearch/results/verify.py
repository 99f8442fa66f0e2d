"""`mbsearch verify`: retrain the front (and the next non-dominated layers) at a longer budget.

The proxy ranks architectures only roughly (benchmarks/README.md, fidelity), so the front and the
claims built on it are checked at a longer budget on the training split, scored on the same validation
split the search used (never the test set). Results go into the study's storage (evaluations.py):
an interrupted verify resumes, and several processes or machines share the work through claims.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import torch

from mbsearch import interrupts
from mbsearch.errors import BadInput, Interrupted
from mbsearch.ranking import kendall_tau
from mbsearch.results.finished import FinishedStudy
from mbsearch.results.pareto import VERIFY_TAG, nondominated_layers
from mbsearch.study import evaluations, records
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset, load_study_data
from mbsearch.train.device import CPU, TrainingDevice, gpu_count, resolve_device, worker_device
from mbsearch.train.evaluate import Evaluation, Recipe, derived_seed
from mbsearch.train.image_cache import default_cache_dir

# The fidelity benchmark's reference recipe: batch 128 and lr 0.004 over the whole training split.
VERIFY_BATCH, VERIFY_LR = 128, 0.004
GRACE_SECONDS = 600  # a verification claim without a heartbeat this long is taken over


@dataclass(frozen=True)
class VerifyRequest:
    """What `verify` was asked, as a spawned worker needs it to open the study again: the study (name, runs
    folder, storage), the data folder, the budget (epochs, training images), how many trials, the seed."""

    study: str
    runs_dir: Path
    storage: str | None
    data_dir: Path | None
    epochs: float
    train_size: int | None
    top: int
    seed: int | None


@dataclass(frozen=True)
class VerifyResult:
    chosen: list[int]
    verified: dict[int, float]  # trial number -> verified accuracy (this run's and earlier runs')
    tau: float | None  # proxy vs verified, over the verified trials
    budget: Budget
    why_not: dict[int, str] = field(default_factory=dict)  # unverified trial -> why: failed, or held by whom


def choose(frame, top: int) -> list[int]:
    """The front, then the next non-dominated layers, until at least `top` trials (whole layers)."""
    chosen: list[int] = []
    for layer in nondominated_layers(frame, multi_fidelity=True):  # the decision front first, as export
        if chosen and len(chosen) >= top:
            break
        chosen += [int(n) for n in layer["number"]]
    return chosen


def verify_budget(data: Dataset, epochs: float, train_size: int | None) -> Budget:
    size = min(train_size or len(data.train), len(data.train))
    return Budget(epochs=epochs, train_size=size, batch_size=VERIFY_BATCH, lr=VERIFY_LR)


def study_data(finished: FinishedStudy, data_dir) -> Dataset:
    """The dataset and validation split the search used (its stored settings and seed), a folder dataset read
    from the image cache of the study's runs folder, where the search decoded it."""
    return load_study_data(finished.settings, data_dir, default_cache_dir(finished.study_dir.parent))


def verification_seed(finished: FinishedStudy, seed: int | None = None) -> int:
    """The seed verification trains with: derived from `seed`, or from the study's seed, apart from it."""
    return derived_seed(int(finished.settings.get("seed", 0)) if seed is None else seed, VERIFY_TAG)


@dataclass(frozen=True)
class VerifyPlan:
    """What a verification will do, said before it starts."""

    data: Dataset
    budget: Budget
    workers: int
    threads: int  # training threads per process
    device: str  # as asked (auto, cpu, cuda, cuda:N, mps): each spawned worker resolves its own
    training: TrainingDevice  # resolved once: where this process (or the first worker) trains

    def describe(self, top: int, study: str, epochs: float) -> str:
        return (
            f"verifying up to {top} trial(s) of {study} at {epochs:g} epoch(s) x {self.budget.train_size} images "
            f"(batch {self.budget.batch_size}, lr {self.budget.lr}), {self.workers} process(es) x "
            f"{self.threads} thread(s), training on {self.training.describe()}"
            + (" (one GPU per worker in turn)" if self.workers > 1 and gpu_count() > 1 else "")
        )


def plan_verify(
    finished: FinishedStudy,
    data_dir: Path | None,
    epochs: float,
    train_size: int | None,
    workers: int,
    threads: int | None,
    device: str = "auto",
) -> VerifyPlan:
    """Load the search's data and fix the budget and threads (a process each; cores shared among them)."""
    data = study_data(finished, data_dir or records.data_dir(finished.study))
    per_process = threads or max(1, (os.cpu_count() or 1) // workers)
    training = resolve_device(worker_device(device, 1))  # a device this machine lacks is refused first
    return VerifyPlan(data, verify_budget(data, epochs, train_size), workers, per_process, device, training)


def verify_study(
    finished: FinishedStudy,
    plan: VerifyPlan,
    request: VerifyRequest,
    on_event: Callable[[str, int, float | None], None] | None = None,
) -> VerifyResult:
    """Verify in this process, or in `plan.workers` spawned processes sharing the work through claims (as
    `run --workers` does). Ctrl-C keeps what finished and says how to resume. The thread count is restored."""
    previous_threads = torch.get_num_threads()
    try:
        if plan.workers == 1:
            torch.set_num_threads(plan.threads)
            return run_verify(finished, plan.data, plan.budget, request.top, request.seed, on_event, plan.training)
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=verify_worker, args=(request, plan.device, plan.threads, index))
            for index in range(1, plan.workers + 1)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        study = finished.study
        return summarize(study, finished.frame, choose(finished.frame, request.top), plan.budget)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted: finished verifications are kept in the study; rerun the same command to resume"
        ) from None
    finally:
        torch.set_num_threads(previous_threads)


def run_verify(
    finished: FinishedStudy,
    data: Dataset,
    budget: Budget,
    top: int,
    seed: int | None = None,
    on_event: Callable[[str, int, float | None], None] | None = None,
    device: TrainingDevice = CPU,
) -> VerifyResult:
    """Verify the chosen trials not verified yet at this budget; return every verified accuracy. The
    training seed is derived from `seed` (default: the study's), never the proxy's own seed."""
    study = finished.study
    seed = verification_seed(finished, seed)
    _check_stored_recipe(study, budget, seed, device)
    chosen = choose(finished.frame, top)
    done = evaluations.stored(study, VERIFY_TAG).get(VERIFY_TAG, {})
    with interrupts.deferred_signals():  # Ctrl-C and SIGTERM never land inside a storage write
        for number in chosen:
            if number in done:
                continue
            start = (lambda n=number: on_event("start", n, None)) if on_event else None
            which = evaluations.Claimed(study, VERIFY_TAG, number, GRACE_SECONDS)
            recipe = Recipe(budget, seed, device=device, precision=finished.settings.get("precision", "fp32"))
            result = evaluations.evaluate_claimed(which, finished.arch(number), data, recipe, start)
            if isinstance(result, Evaluation) and on_event:
                on_event("done", number, result.accuracy)
    result = summarize(study, finished.frame, chosen, budget)
    result.why_not.update(_why_not(study, [number for number in chosen if number not in result.verified]))
    return result


def _why_not(study: optuna.Study, unverified: list[int]) -> dict[int, str]:
    """Why each trial is not verified: its training failed, or another worker holds it (until when)."""
    finished_runs = evaluations.stored(study, VERIFY_TAG).get(VERIFY_TAG, {})
    reasons = {}
    for number in unverified:
        failed = finished_runs.get(number, {}).get("failed")
        reason = f"failed ({failed})" if failed else evaluations.holder(study, VERIFY_TAG, number, GRACE_SECONDS)
        if reason is not None:
            reasons[number] = reason
    return reasons


def _check_stored_recipe(study: optuna.Study, budget: Budget, seed: int, device: TrainingDevice) -> None:
    """Record this verification's budget, seed and training instrument, or refuse one that differs from the
    recorded one: results of two budgets, seeds or instruments are never mixed."""
    # The training instrument is recorded, so that the report trains the verified baselines on the same kind
    recipe = asdict(budget) | {"seed": seed, "training": device.instrument}
    stored = records.verify_budget(study)
    if stored is None:
        study.set_user_attr(records.VERIFY_BUDGET, recipe)
    elif {k: v for k, v in stored.items() if k not in ("seed", "training")} != asdict(budget):
        raise BadInput(
            f"study {study.study_name!r} was verified with {stored}; rerun with the same --epochs/--train-size"
        )
    elif stored.get("training", device.instrument) != device.instrument:
        raise BadInput(
            f"study {study.study_name!r} was verified on {stored['training']}; this run would train on "
            f"{device.instrument} (results of two instruments are never mixed): pass --device "
            f"{stored['training'].split('/')[0]}"
        )
    elif stored.get("seed", seed) != seed:
        raise BadInput(
            f"study {study.study_name!r} was verified with training seed {stored['seed']}; rerun with the --seed "
            "it was verified with (results of two seeds are never mixed)"
        )


def summarize(study: optuna.Study, frame, chosen: list[int], budget: Budget) -> VerifyResult:
    finished_runs = evaluations.stored(study, VERIFY_TAG).get(VERIFY_TAG, {})
    verified = {n: float(r["accuracy"]) for n, r in finished_runs.items() if r.get("accuracy") is not None}
    proxy = frame.set_index("number")["val_accuracy"]
    common = [n for n in verified if n in proxy.index]
    tau = kendall_tau([float(proxy[n]) for n in common], [verified[n] for n in common]) if len(common) > 2 else None
    return VerifyResult(chosen, verified, tau, budget)


def verify_worker(request: VerifyRequest, device: str, threads: int, worker: int) -> None:
    """One process of `verify --workers N` (spawned): the same loop, sharing the work through claims."""
    import sys

    from mbsearch.results.finished import open_finished

    torch.set_num_threads(threads)
    training = resolve_device(worker_device(device, worker))
    finished = open_finished(request.study, request.runs_dir, request.storage)
    data = study_data(finished, request.data_dir)

    def say(event: str, number: int, accuracy: float | None) -> None:
        if event == "done":
            print(f"[w{worker}] trial {number}: verified accuracy {accuracy:.4f}", flush=True)

    try:
        budget = verify_budget(data, request.epochs, request.train_size)
        run_verify(finished, data, budget, request.top, request.seed, say, training)
    except KeyboardInterrupt:
        sys.exit(130)
