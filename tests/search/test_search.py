from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from mbsearch.cli.app import app
from mbsearch.errors import RuntimeFailure
from mbsearch.search.loop import run_search
from mbsearch.search.objective import mnas_reward
from mbsearch.study.config import RunConfig
from mbsearch.study.storage import open_storage

# On the CPU wherever the suite runs (a GPU machine's `auto` would train on its GPU, in other numbers).
TINY = ["--train-size", "256", "--val-size", "256", "--epochs", "0.5", "--batch-size", "64", "--device", "cpu"]
COMPLETE = optuna.trial.TrialState.COMPLETE


def _study(runs, name):
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{runs / name / 'study.db'}"))


def tiny_config(tmp_path, **changes) -> RunConfig:
    values = dict(
        train_size=256, val_size=256, epochs=0.5, batch_size=64, runs_dir=tmp_path, trials=2, study="t",
        train_threads=1, device="cpu",  # exact numbers are compared: the CPU's, wherever the suite runs
    )  # fmt: skip
    return RunConfig(**(values | changes))


def test_tiny_search_end_to_end_then_resume_adds_exactly_one(runner, tmp_path) -> None:
    args = [
        "run",
        "--space",
        "v3",
        "--target",
        "cpu",
        "--trials",
        "3",
        "--runs-dir",
        str(tmp_path),
        "--study",
        "e2e",
        *TINY,
        "--sampler",
        "random",  # a seeded random sampler replays its draws unless the resume offsets its seed
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.stdout
    study = _study(tmp_path, "e2e")
    complete = study.get_trials(states=(COMPLETE,))
    assert len(complete) == 3
    assert all(len(t.values) == 2 and 0 <= t.values[0] <= 1 and t.values[1] > 0 for t in complete)
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    for trial in complete:
        for key in ("arch", "params", "macs", "latency_ms", "latency_iqr_ms", "train_seconds", "epochs_run"):
            assert key in trial.user_attrs
        assert set(trial.params) >= {"s1_kernel", "s3_expand", "s6_depth", "s2_block", "s4_se", "s5_act"}
    trials_csv = pd.read_csv(tmp_path / "e2e" / "trials.csv")
    pareto_csv = pd.read_csv(tmp_path / "e2e" / "pareto.csv")
    assert len(trials_csv) == 3 and 1 <= len(pareto_csv) <= 3

    again = runner.invoke(app, [*args[:6], "4", *args[7:]])
    assert again.exit_code == 0, again.output
    assert "resuming" in again.stdout
    study = _study(tmp_path, "e2e")
    assert len(study.get_trials(states=(COMPLETE,))) == 4
    numbers = [t.number for t in study.get_trials(states=(COMPLETE,))]
    assert numbers == [0, 1, 2, 3]
    # The resumed sampler does not replay the first run's draws.
    archs = {str(t.user_attrs["blocks"]) for t in study.get_trials(states=(COMPLETE,))}
    assert len(archs) == 4


def test_resume_with_other_budget_is_refused(runner, tmp_path) -> None:
    args = ["run", "--trials", "1", "--runs-dir", str(tmp_path), "--study", "r", *TINY]
    assert runner.invoke(app, args).exit_code == 0
    changed = runner.invoke(app, [*args, "--epochs", "1"])  # the last --epochs wins
    assert changed.exit_code == 2
    assert "was run with epochs=0.5" in changed.stderr


def test_over_budget_candidate_is_measured_but_not_trained(tmp_path) -> None:
    result = run_search(tiny_config(tmp_path, max_latency=0.001, max_params=10))
    trials = result.study.get_trials(states=(COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert "train_seconds" not in trial.user_attrs and trial.user_attrs["epochs_run"] == 0.0
        assert "--max-latency" in trial.user_attrs["skipped"] and "--max-params" in trial.user_attrs["skipped"]
        assert trial.constraints["latency"] > 0 and trial.constraints["params"] > 0
        assert trial.user_attrs["timings"].get("train") is None
    assert result.front.empty  # infeasible trials never reach the front


def test_diverging_training_is_pruned_with_reason_and_the_search_stops_cleanly(tmp_path) -> None:
    with pytest.raises(RuntimeFailure, match="5 trials in a row failed, the last with: diverged"):
        run_search(tiny_config(tmp_path, lr=1e30, trials=10))
    study = _study(tmp_path, "t")
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 5
    assert all(t.user_attrs["fail_reason"].startswith("diverged: loss became") for t in pruned)


def test_mnas_objective_is_one_value(tmp_path) -> None:
    result = run_search(tiny_config(tmp_path, objective="mnas", latency_target=1.0, trials=1))
    (trial,) = result.study.get_trials(states=(COMPLETE,))
    expected = mnas_reward(trial.user_attrs["val_accuracy"], trial.user_attrs["latency_ms"], 1.0, -0.07)
    assert trial.values == [pytest.approx(expected)]
    assert mnas_reward(0.8, 2.0, 1.0, -0.07) < 0.8 < mnas_reward(0.8, 0.5, 1.0, -0.07)


@pytest.mark.parametrize("delay", [0.0, 0.5])  # the next trial's storage writes, then its training
def test_ctrl_c_keeps_completed_trials_and_says_how_to_resume(tmp_path, delay: float) -> None:
    command = [
        sys.executable,
        "-m",
        "mbsearch",
        "run",
        "--trials",
        "50",
        "--runs-dir",
        str(tmp_path),
        "--study",
        "int",
        *TINY,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"MBSEARCH_LOCK_DIR": str(tmp_path)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        db = tmp_path / "int" / "study.db"
        if db.exists():
            try:
                if len(_study(tmp_path, "int").get_trials(states=(COMPLETE,))) >= 1:
                    break
            except Exception:
                pass
        time.sleep(0.3)
    time.sleep(delay)  # into the next trial
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("mbsearch: error: interrupted:")
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    study = _study(tmp_path, "int")
    assert len(study.get_trials(states=(COMPLETE,))) >= 1
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_same_command_same_seed_same_machine_gives_the_same_archs_and_accuracies(tmp_path) -> None:
    """Reproducibility: two fresh studies from the same settings sample the same architectures, in the
    same order, and train them to the same proxy accuracies (fixed threads, seeded everything)."""
    first = run_search(tiny_config(tmp_path / "a", trials=2, sampler="tpe", seed=7))
    second = run_search(tiny_config(tmp_path / "b", trials=2, sampler="tpe", seed=7))
    other = run_search(tiny_config(tmp_path / "c", trials=2, sampler="tpe", seed=8))

    def outcome(result):
        trials = result.study.get_trials(states=(COMPLETE,))
        return [(t.params, t.user_attrs["blocks"], t.user_attrs["val_accuracy"]) for t in trials]

    assert outcome(first) == outcome(second)
    assert [o[1] for o in outcome(first)] != [o[1] for o in outcome(other)]  # the seed matters
    environment = next(v for k, v in first.study.user_attrs.items() if k.startswith("environment:"))
    assert environment["train_threads"] == 1 and environment["torch"] == __import__("torch").__version__


def test_latency_input_size_times_the_deployed_network_and_trains_the_same_blocks(tmp_path) -> None:
    from mbsearch.architecture.arch import Arch
    from mbsearch.architecture.sample import sample_arch
    from mbsearch.architecture.space import load_space
    from mbsearch.latency.cache import measure_on
    from mbsearch.latency.targets import LocalTarget
    from mbsearch.nn.model import build_model

    result = run_search(tiny_config(tmp_path, trials=1, sampler="random", latency_input_size=224))
    trial = result.study.get_trials(states=(COMPLETE,))[0]
    arch = Arch.from_dict(trial.user_attrs["arch"])
    assert arch.input.size == 224 and arch.stem.stride == 2  # 224's stride plan; 28's drops the stem stride
    replayed = sample_arch(optuna.trial.FixedTrial(trial.params), load_space("v3"), 224, 1, 10)
    assert replayed.blocks == arch.blocks
    assert sample_arch(optuna.trial.FixedTrial(trial.params), load_space("v3"), 28, 1, 10).stem.stride == 1
    assert trial.user_attrs["val_accuracy"] > 0  # trained on the 28x28 images, same blocks
    at_28 = arch.at_resolution(28)
    assert trial.user_attrs["latency_ms"] > 3 * measure_on(LocalTarget(), build_model(at_28), at_28).median_ms
