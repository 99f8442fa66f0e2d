"""`mbsearch verify`: retrain the front at a longer budget, re-time it, and train and time the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mbsearch.cli.flags import PrecisionChoice, RunsDir, Storage, StudyName, TargetToken, TrainDevice
from mbsearch.cli.output import console
from mbsearch.errors import BadInput

VerifySeed = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=2**32 - 1,
        help="Seed the verification's training seed is derived from (default: the study's); never the proxy's own "
        "seed.",
    ),
]
RetimeTarget = Annotated[
    str | None, typer.Option(help="Also re-time the verified trials on this target (cpu, cuda, http://...).")
]
VerifyPrecision = Annotated[
    PrecisionChoice | None,
    typer.Option(help="fp32 or int8 (default: the study's; an int8 study scores the int8 graph)."),
]
Baselines = Annotated[
    bool,
    typer.Option(help="Also train and time the MobileNet baselines at both budgets (stored once per data and device)."),
]
SeedNoise = Annotated[
    int,
    typer.Option(min=0, max=10, help="Retrain the verified knee and two baselines with N more seeds: the seed noise."),
]
TrainSize = Annotated[int | None, typer.Option(min=64, help="Training images (default: the whole training split).")]
DataDir = Annotated[Path | None, typer.Option(help="Dataset folder, if the search used --data-dir.")]


def verify(
    study: StudyName,
    top: Annotated[int, typer.Option(min=1, max=1000, help="Verify the front, then whole next layers, up to K.")] = 8,
    epochs: Annotated[float, typer.Option(min=0.01, max=100, help="Epochs of the verification training.")] = 1.0,
    train_size: TrainSize = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Local processes sharing the work.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, max=256, help="Training threads per process.")] = None,
    seed: VerifySeed = None,
    runs_dir: RunsDir = Path("runs"),
    storage: Storage = None,
    data_dir: DataDir = None,
    target: RetimeTarget = None,
    target_token: TargetToken = None,
    device: TrainDevice = "auto",
    precision: VerifyPrecision = None,
    baselines: Baselines = True,
    seed_noise: SeedNoise = 0,
) -> None:
    """Retrain the front (and the next non-dominated layers, up to --top) at a longer budget, on the training
    split, scored on the search's validation split, then train and time the MobileNet baselines the report
    compares with. Stored in the study and in RUNS_DIR/baselines.json; rerun to resume."""
    from mbsearch.results.finished import open_finished, study_target
    from mbsearch.results.verify import VerifyRequest, plan_verify, verify_study

    finished = open_finished(study, runs_dir, storage)
    _check_precision(finished, precision)
    # opened first: an unknown or absent target, or another device than the study's, is refused before training
    retime_on = _open_study_target(finished, target, target_token) if target is not None else None
    timer = study_target(finished, target_token) if baselines or seed_noise else None
    plan = plan_verify(finished, data_dir, epochs, train_size, workers, threads, device)
    console.print(plan.describe(top, study, epochs), highlight=False)

    def say(event: str, number: int, accuracy: float | None) -> None:
        if event == "done":
            console.print(f"trial {number}: verified accuracy {accuracy:.4f}", highlight=False)

    request = VerifyRequest(study, runs_dir, storage, data_dir, epochs, train_size, top, seed)
    result = verify_study(finished, plan, request, on_event=say)
    if retime_on is not None:
        _retime(finished, result.chosen, retime_on, target)
    _print_verified(result)
    if timer is not None:
        _verify_baselines(open_finished(study, runs_dir, storage), runs_dir, data_dir, timer, seed_noise)


def _check_precision(finished, precision: PrecisionChoice | None) -> None:
    searched = finished.settings.get("precision", "fp32")
    if precision is not None and precision.value != searched:
        raise BadInput(
            f"study {finished.study.study_name!r} searched in {searched}: its verification is in {searched} too; drop "
            f"--precision or give --precision {searched}"
        )


def _verify_baselines(finished, runs_dir: Path, data_dir: Path | None, timer, seed_noise: int) -> None:
    """The baselines at the proxy budget (on the study's training instrument, where this machine has it) and
    at the verification budget (on verify's), trained and timed where missing; then the seed noise."""
    from mbsearch.results.baselines import study_baselines
    from mbsearch.results.finished import study_training

    try:
        training = study_training(finished, None)
    except BadInput as exc:  # searched on a GPU, verified on a CPU: the proxy baselines are made there
        console.print(f"baselines at the proxy budget skipped: {exc}", highlight=False)
        training = None
    verify_training = study_training(finished, None, verified=True)

    def progress(name: str, _: bool) -> None:
        console.print(f"baseline {name}: training and timing (stored for later studies)", highlight=False)

    _, verified_frame = study_baselines(finished, runs_dir, data_dir, timer, progress, training, verify_training)
    if seed_noise and verified_frame is not None:
        from mbsearch.results.seed_noise import measure_seed_noise

        console.print(f"seed noise: the verified knee and two baselines with {seed_noise} more seed(s)")
        noise = measure_seed_noise(finished, verified_frame, runs_dir, seed_noise, data_dir, timer, verify_training)
        if noise is not None:
            console.print(f"seed noise of one verified accuracy: {noise.sd_points:.2f} points (sd)", highlight=False)


def _open_study_target(finished, target: str, token: str | None):
    from mbsearch.latency.factory import open_target
    from mbsearch.latency.targets import check_target_precision

    device = open_target(target, finished.settings["runtime"], finished.settings["threads"], token)
    check_target_precision(device, finished.settings.get("precision", "fp32"))
    return device


def _retime(finished, numbers: list[int], device, target: str) -> None:
    from mbsearch.results.retime import retime

    def timed(number: int, searched: float, measured: float) -> None:
        console.print(f"trial {number}: latency {searched:.3f} ms in the search, {measured:.3f} ms on {target}")

    retime(finished.study, numbers, device, on_done=timed, precision=finished.settings.get("precision", "fp32"))


def _print_verified(result) -> None:
    missing = [n for n in result.chosen if n not in result.verified]
    tau = "n/a (fewer than 3 verified)" if result.tau is None else f"{result.tau:.3f}"
    console.print(
        f"{len(result.verified)} trial(s) verified; Kendall tau proxy vs verified: {tau}"
        + (f"; not verified yet: {missing}" if missing else ""),
        highlight=False,
    )
    for number in missing:
        console.print(f"trial {number}: {result.why_not.get(number, 'not started')}", highlight=False)
