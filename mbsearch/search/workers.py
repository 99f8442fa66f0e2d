"""`--workers N`: N local worker processes on one study. Machines join the same way, with --storage.

Each worker runs the ordinary search loop on the shared storage; Optuna's RDB storage hands out the
trials, heartbeats fail the trial of a worker that dies, and the per-host lock keeps latency timing
apart from training. The parent only starts, waits and summarises.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

from rich.console import Console

from mbsearch.errors import BadInput, Interrupted, MbsearchError, RuntimeFailure
from mbsearch.search.loop import SearchResult, create_study, write_outputs
from mbsearch.search.prepared import prepare
from mbsearch.study.config import RunConfig
from mbsearch.study.storage import default_url
from mbsearch.train.device import gpu_count, worker_device


def _worker_main(config_json: str, worker_id: int) -> None:
    """Entry point of one worker process: one line per trial, one line for a failure."""
    import logging
    import warnings

    from mbsearch.search.loop import run_search
    from mbsearch.search.progress import ConsoleReporter

    logging.getLogger("optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    config = RunConfig.model_validate_json(config_json)
    try:
        run_search(config, ConsoleReporter(Console(width=150, markup=False), worker=f"w{worker_id}"), worker_id)
    except MbsearchError as exc:
        print(f"mbsearch: error: [w{worker_id}] {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # one line per worker, as from the CLI
        if os.environ.get("MBSEARCH_DEBUG"):
            raise
        print(
            f"mbsearch: error: [w{worker_id}] internal error: {type(exc).__name__}: {exc}".splitlines()[0],
            file=sys.stderr,
        )
        sys.exit(1)


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Stop the workers cleanly: each fails its running trial and keeps the rest.

    A Ctrl-C in a terminal reaches every worker already (one process group); a signal sent to the parent
    alone does not, so workers still running after a few seconds get their own SIGINT.
    """
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.terminate()


def worker_config(config: RunConfig, worker_id: int) -> RunConfig:
    """A worker's settings: its own GPU where the machine has several (train/device.py)."""
    return config.model_copy(update={"device": worker_device(config.device, worker_id)})


def check_gpu_sharing(workers: int, target: str, device: str, gpus: int) -> None:
    """Latency timed on a GPU while another worker trains on it measures the contention, not the network
    (training on a GPU takes no host lock): with --target cuda each worker needs a GPU of its own."""
    timed_on_gpu = target.strip().lower().startswith("cuda")
    trains_on_gpu = device.strip().lower() in ("auto", "cuda") or device.strip().lower().startswith("cuda")
    if timed_on_gpu and trains_on_gpu and gpus > 0 and workers > gpus:
        raise BadInput(
            f"--workers {workers} with --target {target} on a machine with {gpus} GPU(s): workers would time "
            f"latency on a GPU while others train on it; use --workers {gpus} or fewer, or --target cpu"
        )


def run_workers(config: RunConfig, console: Console) -> SearchResult:
    """Start `config.workers` worker processes on the study's storage and wait for them."""
    # Bad input (a missing or foreign supernet too) is reported once, here, before any process starts or
    # anything is written; each worker prepares its own search (its own GPU, its own target).
    search = prepare(config)
    check_gpu_sharing(config.workers, config.target, config.device, gpu_count())
    study = create_study(config, config.storage or default_url(config.study_dir), 0, search.training)
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    processes = [
        context.Process(target=_worker_main, args=(worker_config(config, worker_id).model_dump_json(), worker_id))
        for worker_id in range(1, config.workers + 1)
    ]
    console.print(f"starting {config.workers} workers on study {config.study_name}", highlight=False)
    for process in processes:
        process.start()
    # SIGINT and SIGTERM stop the workers. SIGINT is set explicitly: a shell starts background jobs with
    # SIGINT ignored, and Python then never installs its KeyboardInterrupt handler.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        _stop(processes)
        raise Interrupted("interrupted: complete trials are kept; rerun the same command to resume") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [process.exitcode for process in processes]
    frame, front, basis = write_outputs(study, config.study_dir)
    if all(code != 0 for code in codes):
        raise RuntimeFailure(f"every worker failed (exit codes {codes}); see the lines above")
    return SearchResult(study, frame, front, config.study_dir, timed_out=False, basis=basis)
