"""Training: one fixed recipe for every candidate. Knows nothing of Optuna.

Recipe: AdamW with a one-cycle cosine schedule (warm-up then decay) and label smoothing 0.1. Full training
adds light augmentation (random shifts of up to 2 pixels, horizontal flips); the brief proxy training of
the search does not, because in one short epoch augmentation only slows learning (measured here on two v3
candidates: 0.64 -> 0.77 and 0.72 -> 0.77 validation accuracy without it). Seeded, on a fixed thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mbsearch.train.budget import Budget
from mbsearch.train.data import Split
from mbsearch.train.device import CPU, TrainingDevice, release_gpu_memory


@dataclass(frozen=True)
class TrainResult:
    accuracy: float  # on the evaluation split handed in (validation during search)
    final_loss: float
    seconds: float
    epochs_run: float
    steps: int


class TrainingFailed(Exception):
    """One training could not finish, for a reason that is the candidate's, not the program's: an expected
    event in NAS, stored with its reason so that a rerun does not try again, never a crash."""


class Diverged(TrainingFailed):
    """Training produced a non-finite loss."""


class OutOfMemory(TrainingFailed):
    """The candidate does not fit the device's memory (CUDA's own error, or a cuDNN/cuBLAS allocation
    failure, which arrive as a plain RuntimeError)."""


# What cuDNN and cuBLAS say when they cannot allocate their workspace (a plain RuntimeError, not torch's OOM).
# The CPU allocator says "can't allocate memory" (a memory limit, a full machine): the same expected event.
_ALLOCATION_FAILURES = (
    "out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "can't allocate memory",
)


def is_allocation_failure(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in _ALLOCATION_FAILURES)
    )


@dataclass(frozen=True)
class Normalizer:
    """Per-channel mean/std from the training images, applied to uint8 batches."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, images: torch.Tensor, sample: int = 10000, chunk: int = 1000) -> Normalizer:
        """From the first `sample` images, a chunk at a time in float64: at 224x224 a float copy of the whole
        sample would take 6 GB."""
        count = min(sample, len(images))
        total = torch.zeros(images.shape[1], dtype=torch.float64)
        squares = torch.zeros(images.shape[1], dtype=torch.float64)
        for start in range(0, count, chunk):
            part = images[start : min(count, start + chunk)].to(torch.float64) / 255
            total += part.sum(dim=(0, 2, 3))
            squares += (part * part).sum(dim=(0, 2, 3))
        n = count * images.shape[2] * images.shape[3]
        mean = total / n
        std = ((squares - n * mean * mean) / max(1, n - 1)).clamp_min(0).sqrt().clamp_min(1e-3)
        return cls(mean.float()[:, None, None], std.float()[:, None, None])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)  # no-ops once on the batch's device
        return (batch.float() / 255 - mean) / std

    def to(self, device: torch.device) -> Normalizer:
        return Normalizer(self.mean.to(device), self.std.to(device))


RESIZED_CROP_FROM = 64  # from this input size on, full training uses Inception's random-resized crop
RESIZED_CROP_SCALE = (0.25, 1.0)  # share of the image area a crop covers (timm's default for small models)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Full training's augmentation, on whole batches on the batch's own device (random draws come from the
    seeded CPU generator, so a seed means the same on any device). At 64 pixels and more: random-resized
    crop and horizontal flip, per image (the standard ImageNet recipe). Below: a random shift of up to
    2 pixels (pad + crop, one offset per batch) and flips, as CIFAR-style MobileNets train."""
    if batch.shape[-1] >= RESIZED_CROP_FROM:
        return _random_resized_crop(batch, generator)
    size = batch.shape[-1]
    padded = F.pad(batch, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    batch = padded[..., dy : dy + size, dx : dx + size]
    mask = (torch.rand(batch.shape[0], generator=generator) < 0.5).to(batch.device)
    batch = torch.where(mask[:, None, None, None], batch.flip(-1), batch)
    return batch


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _random_resized_crop(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: a crop of random area and aspect ratio at a random place, resized back (bilinear) to the
    input size, flipped half the time; one affine sampling grid for the whole batch."""
    count = batch.shape[0]
    area = torch.empty(count).uniform_(*RESIZED_CROP_SCALE, generator=generator)
    log_ratio = torch.empty(count).uniform_(*[math.log(r) for r in RESIZED_CROP_RATIO], generator=generator)
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # as shares of the image side
    height = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(count, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(count, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(batch.device, batch.dtype), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


RECALIBRATION_BATCH = 256  # images per forward pass when BatchNorm statistics are recomputed
RECALIBRATION_IMAGES = 8 * RECALIBRATION_BATCH  # what train() recomputes them on: its first training images


def recalibrate_batchnorm(
    model: nn.Module,
    data: Split,
    normalize: Normalizer,
    batches: int = RECALIBRATION_IMAGES // RECALIBRATION_BATCH,
    batch_size: int = RECALIBRATION_BATCH,
) -> None:
    """Re-estimate BatchNorm statistics with the final weights.

    After a brief training run the running averages still reflect early weights, and eval-mode accuracy
    collapses to chance (measured here: 0.11 eval vs 0.65 train mode). NAS tools (SPOS, Once-for-All)
    recompute the statistics on a few training batches; so do we, with a cumulative average.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the batches below
    model.train()
    device = _device_of(model)
    with torch.no_grad():
        for start in range(0, min(len(data), batches * batch_size), batch_size):
            model(normalize(data.images[start : start + batch_size].to(device)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def score(
    model: nn.Module,
    split: Split,
    normalize: Normalizer,
    batch_size: int = 500,
    batch_lock: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> float:
    """Top-1 accuracy on a split. `batch_lock` is held per batch (see `train`)."""
    model.eval()
    device = _device_of(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: one read at the end
    split = split.to(device)  # on a GPU, copied once per process (Split.to)
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            with batch_lock():
                images = normalize(split.images[start : start + batch_size])
                labels = split.labels[start : start + batch_size]
                images = images.contiguous(memory_format=torch.channels_last)
                correct += (model(images).argmax(1) == labels).sum()
    return int(correct.item()) / max(1, len(split))


def train(
    model: nn.Module,
    train_split: Split,
    eval_split: Split,
    budget: Budget,
    seed: int = 0,
    normalize: Normalizer | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_epoch: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
    device: TrainingDevice = CPU,
) -> TrainResult:
    """Train on `train_split` (its first `budget.train_size` images) and evaluate on `eval_split`.

    `on_step(step, total, loss, batch_accuracy)` follows progress at each loss check (every step on the CPU,
    every `device.check_every` steps on a GPU; the accuracy is over the batches since the last call);
    `on_epoch(epoch, checkpoint)` is called
    after each whole epoch with a function that returns the full training state, which `resume` takes
    back to continue exactly where it stopped. Raises Diverged on a NaN or infinite loss and OutOfMemory
    when the candidate does not fit the device (both TrainingFailed).

    On the CPU every step (and the final scoring) holds the host's training lock, not the whole run: a
    latency timer waiting on it gets in within one step, however long the training. On a GPU nothing is
    held, the split is copied to GPU memory once as uint8, and steps run in mixed precision (device.py).
    The model is handed back on the CPU, wherever it trained.
    """
    try:
        with device.session():
            return _train_on(model, train_split, eval_split, budget, seed, normalize, on_step, on_epoch, resume, device)
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_allocation_failure(exc):
            raise
        reason = f"out of memory on {device.describe()}: {(str(exc).strip().splitlines() or ['?'])[0][:200]}"
    # Outside the handler, so that the frames holding the failed step's tensors are gone first.
    model.to("cpu")
    release_gpu_memory()
    raise OutOfMemory(reason)


def _train_on(
    model: nn.Module,
    train_split: Split,
    eval_split: Split,
    budget: Budget,
    seed: int,
    normalize: Normalizer | None,
    on_step: Callable[[int, int, float, float], None] | None,
    on_epoch: Callable[[int, Callable[[], dict[str, Any]]], None] | None,
    resume: dict[str, Any] | None,
    device: TrainingDevice,
) -> TrainResult:
    step_lock = device.step_lock()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    normalize = (normalize or Normalizer.fit(train_split.images[: budget.train_size])).to(device.device)
    # channels_last runs depthwise convs about 1.5x faster on CPU (measured here), and is the GPU's layout.
    model.to(device.device, memory_format=torch.channels_last)
    data = train_split.to(device.device, budget.train_size)  # copied to a GPU once per process, not per trial
    steps_per_epoch = math.ceil(len(data) / budget.batch_size)
    total_steps = max(1, round(budget.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=budget.lr, total_steps=total_steps, pct_start=0.15, anneal_strategy="cos"
    )
    scaler = device.grad_scaler()
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if device.is_cuda and resume.get("cuda_rng") is not None:  # dropout and other draws on the GPU
            torch.cuda.set_rng_state(resume["cuda_rng"], device.device)
        if resume.get("scaler"):  # fp16's loss scale, else the resumed steps start from the initial one
            scaler.load_state_dict(resume["scaler"])
        step = int(resume["step"])

    def checkpoint() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device.device) if device.is_cuda else None,
            "scaler": scaler.state_dict(),
            "step": step,
        }

    started = time.perf_counter()
    model.train()
    loss_value = float("nan")
    unchecked = torch.zeros((), device=device.device)  # losses since the last read, summed on the device
    correct = torch.zeros((), device=device.device)  # right answers since the last read (for on_step)
    seen = 0
    while step < total_steps:
        order = torch.randperm(len(data), generator=generator).to(device.device)
        for start in range(0, len(data), budget.batch_size):
            if step >= total_steps:
                break
            with step_lock():
                index = order[start : start + budget.batch_size]
                images = normalize(data.images[index])
                if budget.augment:
                    images = _augment(images, generator)
                images = images.contiguous(memory_format=torch.channels_last)
                with device.autocast():
                    logits = model(images)
                    loss = F.cross_entropy(logits, data.labels[index], label_smoothing=budget.label_smoothing)
                unchecked += loss.detach().float()
                if on_step:
                    correct += (logits.detach().argmax(1) == data.labels[index]).sum()
                    seen += len(index)
                # The host reads the device only at a check (every step on the CPU, every few on a GPU):
                # the progress bar follows the checks, and adds no read of its own.
                checking = (step + 1) % device.check_every == 0 or step + 1 == total_steps
                if checking:
                    loss_value = _checked(unchecked, loss, step, total_steps, device.check_every)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
            step += 1
            if on_step and checking:
                batch_accuracy = float(correct.item()) / max(1, seen)
                correct.zero_()
                seen = 0
                on_step(step, total_steps, loss_value, batch_accuracy)
        if on_epoch and step % steps_per_epoch == 0:
            on_epoch(step // steps_per_epoch, checkpoint)
    with step_lock():
        recalibrate_batchnorm(model, data, normalize)
    accuracy = score(model, eval_split, normalize, batch_lock=step_lock)
    model.to("cpu")
    return TrainResult(accuracy, loss_value, time.perf_counter() - started, step / steps_per_epoch, step)


def _checked(unchecked: torch.Tensor, loss: torch.Tensor, step: int, total_steps: int, every: int) -> float:
    """The last loss, after checking every loss since the previous check (one host read for all of them)."""
    total = float(unchecked.item())
    if not math.isfinite(total):
        value = float(loss.item())
        bad = value if not math.isfinite(value) else total
        where = f"at step {step + 1}" if every == 1 else f"within steps {max(1, step + 2 - every)}-{step + 1}"
        raise Diverged(f"loss became {bad} {where} of {total_steps}")
    unchecked.zero_()
    return total if every == 1 else float(loss.item())  # with a check every step the sum is that step's loss
