from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

from mbsearch.architecture.zoo import reference_arch
from mbsearch.device import hostlock
from mbsearch.errors import BadInput
from mbsearch.latency.cache import LatencyCache, measure, measure_cached
from mbsearch.latency.recipes import SEARCH_RECIPE
from mbsearch.latency.targets import LocalTarget, check_target, summarize_samples
from mbsearch.nn.model import build_model


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(tmp_path))


def test_summary_statistics_are_robust_to_outliers() -> None:
    samples = [1.0] * 50 + [1.1] * 40 + [50.0] * 10
    median, iqr, mean, minimum = summarize_samples(samples)
    assert median == pytest.approx(1.05)
    assert iqr == pytest.approx(0.1)
    assert mean > 5 and minimum == 1.0
    with pytest.raises(ValueError):
        summarize_samples([])


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_measure_times_a_real_model(runtime: str) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    stats = measure(build_model(arch), arch, "cpu", runtime, threads=1, runs=30)
    assert 0 < stats.median_ms < 100
    assert stats.min_ms <= stats.median_ms and stats.iqr_ms >= 0
    # the search's recipe: at least `rounds` gated turns (more where the device was disturbed), 30 runs each
    assert stats.attempts >= SEARCH_RECIPE["rounds"] and stats.runs == 30
    assert stats.runtime == runtime and stats.threads == 1


def test_bigger_model_is_slower() -> None:
    small = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    large = reference_arch("mobilenet_v3_large", 28, 1, 10)
    t_small = measure(build_model(small), small, runs=40).median_ms
    t_large = measure(build_model(large), large, runs=40).median_ms
    assert t_large > t_small * 1.5


def test_cache_returns_stored_stats_without_timing(tmp_path) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    cache = LatencyCache(tmp_path / "cache.sqlite")
    one_thread = LocalTarget("cpu", "onnxruntime", 1)
    first, hit1 = measure_cached(build_model(arch), arch, cache, one_thread)
    second, hit2 = measure_cached(build_model(arch), arch, cache, one_thread)
    assert (hit1, hit2) == (False, True) and first == second
    renamed = arch.with_info(name="other", metrics={"x": 1})  # same network, other label: same key
    assert LatencyCache.key(renamed, one_thread) == LatencyCache.key(arch, one_thread)
    assert LatencyCache.key(arch, LocalTarget("cpu", "onnxruntime", 2)) != LatencyCache.key(arch, one_thread)
    assert LatencyCache.key(arch, LocalTarget("cpu", "torch", 1)) != LatencyCache.key(arch, one_thread)


def test_bad_targets_are_refused_up_front() -> None:
    with pytest.raises(BadInput, match="unknown target 'tpu'"):
        check_target("tpu", "onnxruntime", 1)
    with pytest.raises(BadInput, match="unknown runtime"):
        check_target("cpu", "tensorrt", 1)
    with pytest.raises(BadInput, match="--threads must be at least 1"):
        check_target("cpu", "torch", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_target_without_gpu_is_one_clear_error() -> None:
    with pytest.raises(BadInput, match="no CUDA GPU"):
        check_target("cuda", "torch", 1)


def test_timing_waits_for_training_to_finish() -> None:
    events: list[str] = []
    training_started = threading.Event()

    def trainer() -> None:
        with hostlock.training():
            training_started.set()
            time.sleep(0.5)
            events.append("training done")

    thread = threading.Thread(target=trainer)
    thread.start()
    training_started.wait()
    with hostlock.timing():
        events.append("timing")
    thread.join()
    assert events == ["training done", "timing"]


def test_queued_timer_blocks_new_training() -> None:
    events: list[str] = []
    first_started, timer_queued = threading.Event(), threading.Event()

    def first_trainer() -> None:
        with hostlock.training():
            first_started.set()
            timer_queued.wait()
            time.sleep(0.3)
        events.append("first training done")

    def timer() -> None:
        timer_queued.set()
        with hostlock.timing():
            events.append("timing")
            time.sleep(0.2)

    def late_trainer() -> None:
        with hostlock.training():
            events.append("late training")

    threads = [threading.Thread(target=first_trainer)]
    threads[0].start()
    first_started.wait()
    threads.append(threading.Thread(target=timer))
    threads[1].start()
    timer_queued.wait()
    time.sleep(0.1)  # the timer is now waiting on the lock and holds the turnstile
    threads.append(threading.Thread(target=late_trainer))
    threads[2].start()
    for thread in threads:
        thread.join()
    assert events.index("timing") < events.index("late training")


_LONG_TRAINING = """
import sys, pathlib, torch
torch.set_num_threads(1)
from mbsearch.train.data import load_dataset
from mbsearch.train.device import CPU  # on the CPU every step holds the host's training lock
from mbsearch.nn.model import build_model
from mbsearch.train.budget import Budget
from mbsearch.train.loop import TrainOptions, train
from mbsearch.architecture.zoo import reference_arch
data = load_dataset("fashion-mnist", val_size=256)
progress = pathlib.Path(sys.argv[1])
def on_step(step, total, loss, accuracy):
    progress.write_text(str(step))
model = build_model(reference_arch("mobilenet_v3_small_050", 28, 1, 10))
budget = Budget(epochs=1, train_size=20000, batch_size=64)
train(model, data.train, data.val, budget, TrainOptions(on_step=on_step, device=CPU))
"""


def _steps(progress) -> int:
    for _ in range(100):  # the trainer rewrites the file each step; retry a read that caught it empty
        text = progress.read_text() if progress.exists() else "0"
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("the step counter stayed empty")


@pytest.mark.slow
def test_timer_gets_in_between_steps_of_a_long_training_in_another_process(tmp_path) -> None:
    """`train` holds the host lock per step: a timer waits about one step, not the whole training."""
    progress = tmp_path / "steps"
    env = {**os.environ, "MBSEARCH_LOCK_DIR": os.environ.get("MBSEARCH_LOCK_DIR", tempfile.gettempdir())}
    trainer = subprocess.Popen([sys.executable, "-c", _LONG_TRAINING, str(progress)], env=env)
    try:
        deadline = time.monotonic() + 120
        while _steps(progress) < 5:
            assert trainer.poll() is None, "the training process died"
            assert time.monotonic() < deadline, "the training never started"
            time.sleep(0.05)
        waited = time.monotonic()
        with hostlock.timing():
            waited = time.monotonic() - waited
            time.sleep(0.2)  # let the step that just ended report itself (on_step runs outside the lock)
            step_at_lock = _steps(progress)
            time.sleep(0.5)
            # Training is paused while the timer holds the lock: no step completes meanwhile.
            assert _steps(progress) == step_at_lock
        # 313 steps take tens of seconds; the timer got in within a few steps, mid-training.
        assert trainer.poll() is None, "the timer only got in after the training ended"
        assert waited < 5.0
        time.sleep(1.0)
        assert _steps(progress) > step_at_lock, "training did not resume after the timer"
    finally:
        trainer.kill()
        trainer.wait()


def test_gpu_timing_holds_its_own_gpus_lock_and_runs_on_that_gpu(tmp_path, monkeypatch) -> None:
    """Issue 30: `--target cuda` timed on GPU 0 whatever the worker's GPU, under no lock, so two workers
    timed on one GPU at once. A machine with two GPUs stands in (torch's CUDA queries answered here)."""
    import fcntl

    import torch

    from mbsearch.latency.targets import LocalTarget, Prepared

    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    target = LocalTarget("cuda", "torch", 1, gpu=1)
    seen = {}

    def timed(self, prepared):
        for index in (0, 1):
            with open(tmp_path / f"mbsearch-gpu{index}.lock", "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen[index] = "free"
                    fcntl.flock(handle, fcntl.LOCK_UN)
                except BlockingIOError:
                    seen[index] = "held"
        seen["gpu"] = self.gpu
        return "stats"

    monkeypatch.setattr(LocalTarget, "_time_torch", timed)
    assert target.time(Prepared(None, (1, 1, 8, 8), None)) == "stats"
    assert seen == {0: "free", 1: "held", "gpu": 1}
