"""--device: the CPU path end to end through the device-aware code, refusals of devices this machine lacks,
and a 2-trial search on a GPU where one is visible (skipped, saying why, where none is)."""

from __future__ import annotations

import optuna
import pytest
import torch

from mbsearch.cli.app import app
from mbsearch.errors import BadInput
from mbsearch.study import records
from mbsearch.study.storage import open_storage
from mbsearch.train import device as training_device
from mbsearch.train.device import CPU, resolve_device, worker_device
from mbsearch.train.loop import Diverged, StepOutput, _LossCheck

TINY = ["--train-size", "256", "--val-size", "256", "--epochs", "0.5", "--batch-size", "64", "--train-threads", "1"]
NO_GPU = f"no CUDA GPU is visible on this machine (torch {torch.__version__}); the GPU search runs where one is"


def _environments(runs, name: str) -> list[dict]:
    study = optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{runs / name / 'study.db'}"))
    return [v for k, v in study.user_attrs.items() if k.startswith(records.ENVIRONMENT_PREFIX)]


def test_cpu_search_runs_through_the_device_aware_path_and_records_the_device(runner, tmp_path) -> None:
    command = ["run", "--trials", "1", "--study", "dev", "--runs-dir", str(tmp_path), "--device", "cpu", *TINY]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "training on cpu" in result.output  # the start line says where candidates train
    (environment,) = _environments(tmp_path, "dev")
    assert environment["train_device"] == "cpu"


def test_auto_takes_the_cpu_where_no_gpu_is_visible() -> None:
    if torch.cuda.is_available():
        assert resolve_device("auto").device.type == "cuda"
    else:
        assert resolve_device("auto") == CPU


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("cuda", "no CUDA GPU is visible"),
        ("cuda:7", "cuda:7"),
        ("mps", "--device mps"),
        ("tpu", "choose auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "choose auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_exit_2_and_nothing_written(runner, tmp_path, flag, message) -> None:
    if flag == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is rightly taken")
    if flag == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPU the test asks for")
    if flag == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--trials", "1", "--runs-dir", str(runs), "--device", flag, *TINY])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not runs.exists()  # refused before anything is written


def test_one_worker_per_gpu_in_turn_where_there_are_several(monkeypatch) -> None:
    monkeypatch.setattr(training_device, "gpu_count", lambda: 3)
    assert [worker_device("auto", w) for w in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert [worker_device("cuda:1", w) for w in (1, 2)] == ["cuda:1", "cuda:1"]  # an explicit GPU is kept
    assert worker_device("cpu", 2) == "cpu"
    monkeypatch.setattr(training_device, "gpu_count", lambda: 1)
    assert worker_device("auto", 2) == "auto"


def test_a_deferred_divergence_check_names_the_steps_it_covers() -> None:
    """On a GPU the loss is read every few steps (no per-step synchronisation): a NaN in between is still
    caught, and a clean stretch reports the mean loss of its steps."""
    logits, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    check = _LossCheck(torch.device("cpu"), total=100, every=25, hint="; lower --lr")
    for step in range(25):
        check.add(StepOutput(torch.tensor(float(step % 2)), logits), labels, step)
    assert check.checked and check.loss == pytest.approx(12 / 25) and check.batch_accuracy == 1.0
    with pytest.raises(Diverged, match=r"within steps 26-50 of 100; lower --lr"):
        for step in range(25, 50):
            check.add(StepOutput(torch.tensor(float("nan") if step == 30 else 0.5), logits), labels, step)


def test_unknown_device_names_are_refused_by_the_library_too() -> None:
    with pytest.raises(BadInput, match="choose auto"):
        resolve_device("gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_two_trial_search_on_the_gpu(runner, tmp_path) -> None:
    command = ["run", "--trials", "2", "--study", "gpu", "--runs-dir", str(tmp_path), "--device", "cuda", *TINY]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "training on cuda:0" in result.output
    (environment,) = _environments(tmp_path, "gpu")
    assert environment["train_device"].startswith("cuda:0") and environment["cuda"]
    assert torch.backends.cudnn.benchmark is False  # the autotuner was restored after each training


def test_a_study_refuses_to_resume_on_another_training_instrument() -> None:
    """Issue 30: the training device was not part of a study's identity; a study begun on the CPU and resumed
    on a GPU ranked its candidates by two instruments."""
    from mbsearch.search.loop import check_training
    from mbsearch.train.device import TrainingDevice

    study = optuna.create_study(study_name="where")
    check_training(study, CPU)
    check_training(study, CPU)  # the same instrument resumes
    with pytest.raises(BadInput, match=r"trained its candidates on cpu/fp32; this run would train on mps/fp32"):
        check_training(study, TrainingDevice(torch.device("mps")))
