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


@dataclass(frozen=True)
class StepOutput:
    """One step's loss (summed over what it trained, detached, on the device) and the logits the progress
    report counts right answers of."""

    loss: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Trainee:
    """What the one training loop trains: its parameters, one step's forwards and backwards (`step(images,
    labels, scaler)`, through the scaler), and the state a checkpoint keeps beside the loop's own."""

    parameters: list[nn.Parameter]
    step: Callable[[torch.Tensor, torch.Tensor, torch.amp.GradScaler], StepOutput]
    state: Callable[[], dict[str, Any]]
    load_state: Callable[[dict[str, Any]], None]
    grad_clip: float | None = None  # the supernet's sandwich sums four networks' gradients and clips them
    hint: str = ""  # appended to a divergence's message ("; lower --lr")


@dataclass(frozen=True)
class LoopOptions:
    """How one run of the loop goes, besides the budget.

    `on_step(step, total, loss, batch_accuracy)` follows each loss check (every step on the CPU, every
    `device.check_every` steps on a GPU; the loss and accuracy are means since the previous check).
    `on_checkpoint(step, state)` is called at each epoch's end, and every `checkpoint_every_s` seconds when
    set, with a function that returns the whole training state, which `resume` takes back to go on exactly
    where it stopped (the same batches, draws and schedule)."""

    seed: int = 0
    device: TrainingDevice = CPU
    on_step: Callable[[int, int, float, float], None] | None = None
    on_checkpoint: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None
    checkpoint_every_s: float | None = None
    resume: dict[str, Any] | None = None


@dataclass(frozen=True)
class LoopResult:
    steps: int
    steps_per_epoch: int
    total_steps: int
    loss: float  # the mean loss since the last check before the end
    seconds: float  # training time, resumed runs' time included


def run_loop(trainee: Trainee, data: Split, normalize: Normalizer, budget: Budget, options: LoopOptions) -> LoopResult:
    """The one training loop (brief proxy, full training, verify, baselines, NetAdapt, the supernet): AdamW
    with a one-cycle cosine schedule over `data` (already on the device) in seeded order, each step under
    the device's step lock, the loss checked for divergence, checkpoints and progress as `options` ask."""
    device = options.device
    optimizer = torch.optim.AdamW(trainee.parameters, lr=budget.lr, weight_decay=budget.weight_decay)
    per_epoch = math.ceil(len(data) / budget.batch_size)
    total = max(1, round(budget.epochs * per_epoch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=budget.lr, total_steps=total, pct_start=0.15, anneal_strategy="cos"
    )
    generator = torch.Generator().manual_seed(options.seed)
    loop = _LoopState(trainee, device, optimizer, schedule, device.grad_scaler(), generator)
    if options.resume is not None:
        loop.load(options.resume)
    step_lock = device.step_lock()
    started = time.perf_counter() - loop.seconds
    last_checkpoint = time.perf_counter()
    check = _LossCheck(device.device, total, device.check_every, trainee.hint, options.on_step is not None)
    while loop.step < total:
        if loop.order is None or loop.step % per_epoch == 0:
            loop.order = torch.randperm(len(data), generator=loop.generator).to(device.device)
        start = (loop.step % per_epoch) * budget.batch_size
        with step_lock():
            index = loop.order[start : start + budget.batch_size]
            images = normalize(data.images[index])
            if budget.augment:
                images = _augment(images, loop.generator)
            images = images.contiguous(memory_format=torch.channels_last)
            output = loop.take_step(images, data.labels[index])
            check.add(output, data.labels[index], loop.step)
        loop.step += 1
        loop.seconds = time.perf_counter() - started
        if options.on_step and check.checked:
            options.on_step(loop.step, total, check.loss, check.batch_accuracy)
        timed = (
            options.checkpoint_every_s is not None
            and time.perf_counter() - last_checkpoint >= options.checkpoint_every_s
        )
        if options.on_checkpoint and (loop.step % per_epoch == 0 or (timed and loop.step < total)):
            options.on_checkpoint(loop.step, loop.state)
            last_checkpoint = time.perf_counter()
    return LoopResult(loop.step, per_epoch, total, check.loss, loop.seconds)


@dataclass
class _LoopState:
    """The loop's own state, and the checkpoint of it (with the trainee's): CPU and CUDA random streams,
    the epoch's batch order, the optimizer, schedule and gradient scaler."""

    trainee: Trainee
    device: TrainingDevice
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    order: torch.Tensor | None = None
    step: int = 0
    seconds: float = 0.0

    def take_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=True)
        output = self.trainee.step(images, labels, self.scaler)
        if self.trainee.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainee.parameters, self.trainee.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return output

    def state(self) -> dict[str, Any]:
        cuda = self.device.is_cuda
        return self.trainee.state() | {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            # dropout and other draws on the GPU: a resume on CUDA goes on with the same stream
            "cuda_rng": torch.cuda.get_rng_state(self.device.device) if cuda else None,
            # a checkpoint inside an epoch keeps that epoch's order, so a resume takes the very same batches
            "order": self.order.cpu() if self.order is not None else None,
            "step": self.step,
            "seconds": self.seconds,
        }

    def load(self, saved: dict[str, Any]) -> None:
        device = self.device
        self.trainee.load_state(saved)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        if saved.get("scaler"):  # fp16's loss scale, else the resumed steps start from the initial one
            self.scaler.load_state_dict(saved["scaler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        cuda_rng = saved.get("cuda_rng")
        if device.is_cuda and cuda_rng is not None and len(cuda_rng):
            torch.cuda.set_rng_state(cuda_rng, device.device)
        order = saved.get("order")
        self.order = order.to(device.device) if order is not None and len(order) else None
        self.step, self.seconds = int(saved["step"]), float(saved.get("seconds", 0.0))


class _LossCheck:
    """Losses stay on the device and are read at each check (every step on the CPU, every few on a GPU: a
    read waits for the queue); the mean since the last check is what is checked and reported. Right answers
    are counted only for a progress report (`track_accuracy`): no argmax per step otherwise."""

    def __init__(self, device: torch.device, total: int, every: int, hint: str, track_accuracy: bool = True) -> None:
        self.total, self.every, self.hint, self.track_accuracy = total, every, hint, track_accuracy
        self.pending = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.unread = self.seen = 0
        self.loss = self.batch_accuracy = float("nan")
        self.checked = False

    def add(self, output: StepOutput, labels: torch.Tensor, step: int) -> None:
        self.pending += output.loss.float()
        if self.track_accuracy:
            self.correct += (output.logits.detach().argmax(1) == labels).sum()
        self.unread, self.seen = self.unread + 1, self.seen + len(labels)
        self.checked = (step + 1) % self.every == 0 or step + 1 == self.total
        if not self.checked:
            return
        value = float(self.pending.item()) / self.unread
        if not math.isfinite(value):
            where = f"at step {step + 1}" if self.unread == 1 else f"within steps {step + 2 - self.unread}-{step + 1}"
            raise Diverged(f"loss became {value} {where} of {self.total}{self.hint}")
        self.loss = value
        if self.track_accuracy:
            self.batch_accuracy = float(self.correct.item()) / max(1, self.seen)
        self.pending.zero_()
        self.correct.zero_()
        self.unread = self.seen = 0


@dataclass(frozen=True)
class TrainOptions:
    """`train`'s options besides the data and budget: the seed, the normalizer (fitted on the training
    images when None), progress and checkpoints (`on_epoch(epoch, state)` at each epoch's end), a resume
    state, and the device."""

    seed: int = 0
    normalize: Normalizer | None = None
    on_step: Callable[[int, int, float, float], None] | None = None
    on_epoch: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None
    resume: dict[str, Any] | None = None
    device: TrainingDevice = CPU


def train(
    model: nn.Module, train_split: Split, eval_split: Split, budget: Budget, options: TrainOptions = TrainOptions()
) -> TrainResult:
    """Train `model` on `train_split` (its first `budget.train_size` images) with the one loop, recompute its
    BatchNorm statistics and score it on `eval_split`. Raises Diverged on a NaN or infinite loss and
    OutOfMemory when the candidate does not fit the device (both TrainingFailed).

    On the CPU every step (and the final scoring) holds the host's training lock, not the whole run: a
    latency timer waiting on it gets in within one step, however long the training. On a GPU nothing is
    held, the split is copied to GPU memory once as uint8, and steps run in mixed precision (device.py).
    The model is handed back on the CPU, wherever it trained.
    """
    device = options.device
    try:
        with device.session():
            return _train_on(model, train_split, eval_split, budget, options)
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_allocation_failure(exc):
            raise
        reason = f"out of memory on {device.describe()}: {(str(exc).strip().splitlines() or ['?'])[0][:200]}"
    # Outside the handler, so that the frames holding the failed step's tensors are gone first.
    model.to("cpu")
    release_gpu_memory()
    raise OutOfMemory(reason)


def _train_on(
    model: nn.Module, train_split: Split, eval_split: Split, budget: Budget, options: TrainOptions
) -> TrainResult:
    device = options.device
    torch.manual_seed(options.seed)
    normalize = (options.normalize or Normalizer.fit(train_split.images[: budget.train_size])).to(device.device)
    # channels_last runs depthwise convs about 1.5x faster on CPU (measured here), and is the GPU's layout.
    model.to(device.device, memory_format=torch.channels_last)
    data = train_split.to(device.device, budget.train_size)  # copied to a GPU once per process, not per trial
    model.train()
    on_epoch = options.on_epoch
    per_epoch = math.ceil(len(data) / budget.batch_size)

    def on_checkpoint(step: int, state: Callable[[], dict[str, Any]]) -> None:
        if on_epoch is not None:
            on_epoch(step // per_epoch, state)

    loop = LoopOptions(options.seed, device, options.on_step, on_checkpoint if on_epoch else None, None, options.resume)
    result = run_loop(_model_trainee(model, budget, device), data, normalize, budget, loop)
    with device.step_lock()():
        recalibrate_batchnorm(model, data, normalize)
    accuracy = score(model, eval_split, normalize, batch_lock=device.step_lock())
    model.to("cpu")
    return TrainResult(accuracy, result.loss, result.seconds, result.steps / per_epoch, result.steps)


def _model_trainee(model: nn.Module, budget: Budget, device: TrainingDevice) -> Trainee:
    """One network on the labels (cross-entropy with label smoothing): every training but the supernet's."""

    def step(images: torch.Tensor, labels: torch.Tensor, scaler: torch.amp.GradScaler) -> StepOutput:
        with device.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=budget.label_smoothing)
        scaler.scale(loss).backward()
        return StepOutput(loss.detach(), logits.detach())

    return Trainee(
        list(model.parameters()),
        step,
        lambda: {"model": model.state_dict()},
        lambda saved: model.load_state_dict(saved["model"]),
    )
