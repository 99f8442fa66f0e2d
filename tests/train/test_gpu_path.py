"""The GPU path, tested on the CPU where it can be (issue 30): precision chosen for the worker's own GPU from
its hardware, the split copied to a device once and never pinned, progress read at the loss checks only,
checkpoints that hold what a GPU resume needs, and out-of-memory as an expected, stored end of one training.
What only a GPU can show (real bf16/fp16 numbers, cuDNN's allocation failures) stays unverified until one
is lent."""

from __future__ import annotations

import optuna
import pytest
import torch

from mbsearch.architecture.zoo import reference_arch
from mbsearch.nn.model import build_model
from mbsearch.study import evaluations
from mbsearch.study.storage import open_storage
from mbsearch.train import loop
from mbsearch.train.budget import Budget
from mbsearch.train.data import Split, load_dataset
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.evaluate import Recipe
from mbsearch.train.loop import OutOfMemory, TrainOptions, train


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", val_size=300, seed=0)


def test_bf16_only_where_the_workers_own_gpu_has_it_in_hardware(monkeypatch) -> None:
    """A machine with an A100 as GPU 0 and a T4 as GPU 1: torch.cuda.is_bf16_supported() says yes for the
    current GPU (0) and counts the T4's emulated bf16 too; the T4's worker must take fp16 with a scaler."""
    capability = {0: (8, 0), 1: (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability[index or 0])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainingDevice(torch.device("cuda:0")).amp_dtype == torch.bfloat16
    t4 = TrainingDevice(torch.device("cuda:1"))
    assert t4.amp_dtype == torch.float16 and t4.instrument == "cuda/fp16"
    assert CPU.amp_dtype is None and CPU.instrument == "cpu/fp32"


def test_a_split_goes_to_a_device_once_and_is_never_pinned(monkeypatch) -> None:
    """The meta device stands in for a GPU: the copy is made once per process and reused by later trials, and
    no pinned host copy of the split is made (in a worker it would also open a CUDA context on GPU 0)."""
    split = Split(torch.zeros(64, 1, 8, 8, dtype=torch.uint8), torch.zeros(64, dtype=torch.int64))

    def no_pinning(self, *args, **kwargs):
        raise AssertionError("pin_memory called")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    meta = torch.device("meta")
    first = split.to(meta, 32)
    assert first.images.device.type == "meta" and len(first) == 32
    assert split.to(meta, 32) is first  # the second trial reuses the copy
    assert split.to(torch.device("cpu"), 64) is split  # the CPU split is the split itself


def test_progress_is_read_at_the_loss_checks_only_and_checkpoints_hold_the_scaler(fashion) -> None:
    """With a check every 4 steps (a GPU's rule, here on the CPU) the progress callback runs at steps 4, 8 and
    the last: no host read of its own per step. A checkpoint carries the gradient scaler's state and the
    device RNG slot, which a GPU resume needs."""
    device = TrainingDevice(torch.device("cpu"), check_every_steps=4)
    calls: list[tuple[int, float]] = []
    states: list[dict] = []
    model = build_model(reference_arch("mobilenet_v3_small_050", 28, 1, 10))
    budget = Budget(epochs=1, train_size=640, batch_size=64)  # 10 steps
    train(
        model,
        fashion.train,
        fashion.val,
        budget,
        TrainOptions(
            on_step=lambda step, total, loss, accuracy: calls.append((step, accuracy)),
            on_epoch=lambda epoch, checkpoint: states.append(checkpoint()),
            device=device,
        ),
    )
    assert [step for step, _ in calls] == [4, 8, 10]
    assert all(0.0 <= accuracy <= 1.0 for _, accuracy in calls)
    assert "scaler" in states[0] and "cuda_rng" in states[0]


def test_out_of_memory_anywhere_in_training_is_an_expected_failure(fashion, monkeypatch) -> None:
    """cuDNN's and cuBLAS's allocation failures arrive as plain RuntimeErrors; torch's own as OutOfMemoryError.
    Both become OutOfMemory (a TrainingFailed), whoever trains: the proxy, a rung, verify or a baseline."""
    model = build_model(reference_arch("mobilenet_v3_small_050", 28, 1, 10))
    budget = Budget(epochs=0.1, train_size=64, batch_size=64)
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")):  # fmt: skip

        def fails(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(loop, "_train_on", fails)
        with pytest.raises(OutOfMemory, match="out of memory on cpu"):
            train(model, fashion.train, fashion.val, budget)
    monkeypatch.setattr(loop, "_train_on", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a real bug stays a bug
        train(model, fashion.train, fashion.val, budget)


def test_an_evaluation_that_runs_out_of_memory_is_stored_and_not_retried(fashion, tmp_path, monkeypatch) -> None:
    """Before, only the proxy trial caught an OOM: one in a promotion or verify killed the worker, and the
    rerun hit it again."""
    study = optuna.create_study(study_name="oom", storage=open_storage(f"sqlite:///{tmp_path / 'oom.db'}"))
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)

    def fails(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "_train_on", fails)
    budget = Budget(epochs=0.1, train_size=64, batch_size=64)
    reason = evaluations.evaluate_claimed(evaluations.Claimed(study, "verify", 0, 5), arch, fashion, Recipe(budget, 1))
    assert isinstance(reason, str) and reason.startswith("out of memory")
    record = study.user_attrs["eval:verify:0"]
    assert record["accuracy"] is None and record["failed"] == reason
    assert (
        evaluations.evaluate_claimed(evaluations.Claimed(study, "verify", 0, 5), arch, fashion, Recipe(budget, 1))
        is None
    )
