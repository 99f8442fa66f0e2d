"""Full training of one architecture on the whole training set, with test accuracy at the end.

This is the only code that reads the test split. It checkpoints after every epoch and resumes from the
last checkpoint, and writes the weights as safetensors plus an ONNX file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mbsearch.architecture.arch import Arch, load_arch
from mbsearch.errors import BadInput
from mbsearch.files import check_output_folder, write_atomic
from mbsearch.nn.cost import count_params
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import write_onnx
from mbsearch.train.budget import Budget
from mbsearch.train.data import FolderReading, Split, check_test_split, load_whole_split
from mbsearch.train.device import CPU, TrainingDevice, resolve_device
from mbsearch.train.int8 import Int8Scorer
from mbsearch.train.loop import Diverged, Normalizer, OutOfMemory, TrainOptions, train

CHECKPOINT = "checkpoint.pt"  # written first, kept: marks the folder as train's own
OUTPUT_FILES = (CHECKPOINT, "model.safetensors", "model.onnx", "model.int8.onnx", "metrics.json", "arch.json")


@dataclass(frozen=True)
class FullTrainResult:
    test_accuracy: float
    epochs: float
    train_seconds: float
    params: int
    resumed_from_epoch: int
    out_dir: str
    int8_test_accuracy: float | None = None  # --precision int8: the int8 graph (model.int8.onnx) on the test set


@dataclass(frozen=True)
class FullTraining:
    """How `mbsearch train` trains: epochs on the whole training set of `dataset` (a folder dataset decoded
    into `cache_dir`, unreadable images skipped with `skip_bad`), the recipe's batch size, peak rate and
    seed, and with `precision` int8 the trained network also quantized and scored on the test set."""

    epochs: float = 10
    dataset: str | None = None  # None: the one the arch was searched on (train_arch_file), else Fashion-MNIST
    data_dir: Path | None = None
    batch_size: int = 128
    lr: float = 0.006
    seed: int = 0
    skip_bad: bool = False
    cache_dir: Path | None = None
    precision: str = "fp32"


def _data(arch: Arch, recipe: FullTraining) -> tuple[Split, Split]:
    channels = arch.input.channels
    dataset, data_dir = recipe.dataset, recipe.data_dir
    check_test_split(dataset, data_dir)  # before the training split is decoded into the image cache

    def split(name: str) -> tuple[Split, int]:
        size = arch.input.size
        return load_whole_split(
            dataset, data_dir, name, size, channels, FolderReading(recipe.skip_bad, recipe.cache_dir)
        )

    train_split, classes = split("train")
    if train_split.images.shape[1] != channels:
        raise BadInput(f"the arch takes {channels} channel(s) but {dataset} has {train_split.images.shape[1]}")
    if classes > arch.num_classes:
        raise BadInput(f"the arch has {arch.num_classes} classes but {dataset} has {classes}")
    return train_split, split("test")[0]


def train_full(
    arch: Arch,
    out_dir: Path,
    recipe: FullTraining,
    on_step: Callable[[int, int, float, float], None] | None = None,
    device: TrainingDevice = CPU,
) -> FullTrainResult:
    """Train `arch` as `recipe` says into `out_dir`; resume from out_dir/checkpoint.pt if present."""
    recipe = replace(recipe, dataset=recipe.dataset or "fashion-mnist")
    train_split, test_split = _data(arch, recipe)
    budget = Budget(
        epochs=recipe.epochs, train_size=len(train_split), batch_size=recipe.batch_size, lr=recipe.lr, augment=True
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {out_dir} is a file; give a folder for the weights, ONNX and metrics")
    identity = {"arch": arch.key(), "budget": asdict(budget), "dataset": recipe.dataset, "seed": recipe.seed}
    job = _Job(arch, out_dir, budget, identity, _resume_state(out_dir / CHECKPOINT, identity), recipe, device)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train_into(job, train_split, test_split, on_step)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing half-done: no empty --out folder after a failure before epoch 1
        raise


def _resume_state(checkpoint_path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The training state in this very training's checkpoint, None without one; a foreign file is refused."""
    if not checkpoint_path.is_file():
        return None
    # Our own file, and still loaded as data only: weights_only refuses anything but tensors and plain values.
    try:
        saved = torch.load(checkpoint_path, weights_only=True, map_location="cpu")  # wherever it trained
    except Exception:  # a foreign or damaged file: refused, whatever torch raises for it
        saved = None
    if not isinstance(saved, dict) or saved.get("identity") != json.dumps(identity, sort_keys=True):
        raise BadInput(f"{checkpoint_path} is not this architecture's checkpoint; use another --out")
    return saved["state"]


def train_arch_file(
    arch_file: Path,
    out_dir: Path | None,
    recipe: FullTraining,
    on_step: Callable[[int, int, float, float], None] | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> tuple[Arch, FullTrainResult]:
    """`mbsearch train`: the arch of a file on its own dataset (unless `recipe` names one), into `out_dir`
    (default: beside it), with every output checked first. The thread count is restored."""
    training_device = resolve_device(device)  # a device this machine lacks is refused before any work
    arch = load_arch(arch_file)
    if recipe.dataset is None:
        recipe = replace(recipe, dataset=(arch.provenance or {}).get("dataset", "fashion-mnist"))
    out_dir = out_dir or arch_file.with_name(arch_file.stem + "-trained")
    check_output_folder("--out", out_dir, OUTPUT_FILES, CHECKPOINT, {"the arch file": arch_file})
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        return arch, train_full(arch, out_dir, recipe, on_step, training_device)
    finally:
        torch.set_num_threads(previous_threads)


@dataclass(frozen=True)
class _Job:
    arch: Arch
    out_dir: Path
    budget: Budget
    identity: dict[str, Any]
    resume: dict[str, Any] | None
    recipe: FullTraining
    device: TrainingDevice


def _train_into(
    job: _Job, train_split: Split, test_split: Split, on_step: Callable[[int, int, float, float], None] | None
) -> FullTrainResult:
    arch, out_dir, budget, resume, seed = job.arch, job.out_dir, job.budget, job.resume, job.recipe.seed
    checkpoint_path = out_dir / CHECKPOINT
    batch_size = budget.batch_size
    steps_per_epoch = -(-len(train_split) // batch_size)
    resumed_from = int(resume["step"]) // steps_per_epoch if resume else 0

    def save_checkpoint(epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save({"identity": json.dumps(job.identity, sort_keys=True), "state": state()}, tmp)
        tmp.replace(checkpoint_path)

    torch.manual_seed(seed)
    model = build_model(arch)
    normalizer = Normalizer.fit(train_split.images[: budget.train_size])  # the one train() fits; int8 needs it
    try:
        # On the CPU the host lock is held per step: a search on this host times latency between two steps.
        options = TrainOptions(seed, normalizer, on_step, save_checkpoint, resume, job.device)
        result = train(model, train_split, test_split, budget, options)
    except Diverged as exc:
        raise BadInput(f"training diverged ({exc}); lower --lr") from None
    except OutOfMemory as exc:
        raise BadInput(f"{exc}; lower --batch-size or train on a larger GPU") from None
    model = model.to(memory_format=torch.contiguous_format)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, out_dir / "model.safetensors")
    write_onnx(arch, out_dir / "model.onnx", model)
    int8_accuracy = None
    if job.recipe.precision == "int8":  # calibrated on training images; the test set only scores the int8 graph
        int8_accuracy, graph = Int8Scorer(train_split.images, normalizer, test_split)(model.cpu(), arch)
        write_atomic(out_dir / "model.int8.onnx", graph)
    outcome = FullTrainResult(
        result.accuracy,
        result.epochs_run,
        round(result.seconds, 1),
        count_params(model),
        resumed_from,
        str(out_dir),
        int8_accuracy,
    )
    write_atomic(out_dir / "metrics.json", json.dumps(asdict(outcome) | {"arch": arch.name}, indent=2) + "\n")
    write_atomic(out_dir / "arch.json", arch.to_json())
    return outcome
