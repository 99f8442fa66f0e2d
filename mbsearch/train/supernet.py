"""Training a weight-sharing supernet once, and scoring sub-networks with inherited weights in seconds.

Training follows BigNAS's single stage: each step trains the largest sub-network on the labels, then the
smallest and `random_per_step` random ones on the largest's soft predictions (the sandwich rule with
in-place distillation), all on one batch, and takes one optimizer step for their summed gradients. The
recipe is the search's own (AdamW, one-cycle cosine, label smoothing) so that a budget means the same.

Scoring: the sub-network's weights are copied out of the supernet, its BatchNorm statistics are recomputed
on a fixed set of training images (OFA's 2,000: their running averages in the supernet mix every
sub-network), and it is scored on the validation split. No test image is ever read.

A supernet lives in a folder: `supernet.safetensors` (the shared tensors), `manifest.json` (what it was
trained on and how: space, dataset and split, input, budget, seed), and while training `checkpoint.pt`
(everything a resume needs, written atomically every few steps). One supernet serves every target.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.decisions import every_layout, random_decisions
from mbsearch.architecture.space import SearchSpace
from mbsearch.errors import BadInput
from mbsearch.files import write_atomic
from mbsearch.nn.supernet import Supernet, largest, smallest, state_summary
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.loop import (
    RECALIBRATION_BATCH,
    RECALIBRATION_IMAGES,
    LoopOptions,
    Normalizer,
    OutOfMemory,
    StepOutput,
    Trainee,
    TrainOptions,
    is_allocation_failure,
    recalibrate_batchnorm,
    run_loop,
    score,
    train,
)

FORMAT = "mbsearch.supernet/1"
WEIGHTS_FILE = "supernet.safetensors"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"
RANDOM_PER_STEP = 2  # the sandwich rule: largest, smallest and two random sub-networks per step
CALIBRATION_IMAGES = 2048  # training images BatchNorm statistics are recomputed on, per scored sub-network
# --finetune-steps: a short training from the inherited weights before scoring, on batches of this size at
# this peak rate (one-cycle, as every training here). Lower than a brief training's 0.003: it starts from
# trained weights (2026-12-06, 20-member panel: benchmarks/README.md, supernet section).
FINETUNE_BATCH = 64
FINETUNE_LR = 0.001
CHECKPOINT_EVERY_S = 60.0  # seconds of training between checkpoints (and at every epoch's end)
GRAD_CLIP = 5.0  # BigNAS clips: one step sums four sub-networks' gradients


def space_digest(space: SearchSpace) -> str:
    """The space's content (not its file name): a supernet is for exactly these choices."""
    text = json.dumps(space.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_dir(runs_dir: Path, space: SearchSpace, dataset: str, input_size: int) -> Path:
    """Where `supernet train` writes and `run --evaluator supernet` looks, unless told otherwise."""
    return runs_dir / "supernets" / f"{space.name}-{dataset}-{input_size}"


@dataclass(frozen=True)
class SupernetIdentity:
    """What decides a supernet's weights: a supernet is reused only where all of it matches."""

    format: str
    space: str
    space_digest: str
    dataset: str
    data_dir: str | None
    input_size: int
    plan_size: int
    channels: int
    num_classes: int
    val_size: int
    split_seed: int
    budget: dict[str, Any]
    random_per_step: int
    seed: int

    @classmethod
    def of(
        cls,
        space: SearchSpace,
        data: Dataset,
        data_dir: Path | None,
        val_size: int,
        budget: Budget,
        seed: int,
        plan_size: int | None = None,
    ) -> SupernetIdentity:
        """`seed` fixes both the validation split (as the search's seed does) and the training's draws."""
        return cls(
            FORMAT,
            space.name,
            space_digest(space),
            data.name,
            str(Path(data_dir).resolve()) if data_dir else None,
            data.size,
            plan_size or data.size,
            data.channels,
            data.num_classes,
            val_size,
            seed,
            asdict(budget),
            RANDOM_PER_STEP,
            seed,
        )

    def data_key(self) -> dict[str, Any]:
        """What a search must share with it to use it: space, data, split and input (not the budget)."""
        keys = ("format", "space_digest", "dataset", "data_dir", "input_size", "plan_size", "channels",
                "num_classes", "val_size", "split_seed")  # fmt: skip
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class TrainedSupernet:
    supernet: Supernet
    identity: SupernetIdentity
    normalizer: Normalizer
    manifest: dict[str, Any]
    folder: Path

    @property
    def digest(self) -> str:
        """Names this very supernet (its identity and how long it trained) in a study's settings."""
        text = json.dumps({"identity": asdict(self.identity), "steps": self.manifest.get("steps")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SupernetTrainResult:
    folder: Path
    steps: int
    seconds: float
    resumed_from_step: int
    already_trained: bool
    params: int
    sub_networks: int


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
        return manifest
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"{path}: not a supernet manifest of this version ({exc}); use another --out or delete the folder"
        ) from None


def _write_manifest(folder: Path, identity: SupernetIdentity, normalizer: Normalizer, **state: Any) -> dict:
    manifest = {
        "format": FORMAT,
        "identity": asdict(identity),
        "normalizer": {"mean": normalizer.mean.flatten().tolist(), "std": normalizer.std.flatten().tolist()},
        "torch": torch.__version__,
        **state,
    }
    write_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


@dataclass(frozen=True)
class SupernetTraining:
    """`train_supernet`'s options: the seed (initial weights, batch order, sub-network draws), the device,
    progress (`on_step(step, total, loss, teacher_accuracy)`), and seconds between checkpoints."""

    seed: int = 0
    device: TrainingDevice = CPU
    on_step: Callable[[int, int, float, float], None] | None = None
    checkpoint_every_s: float = CHECKPOINT_EVERY_S


def train_supernet(
    space: SearchSpace,
    data: Dataset,
    folder: Path,
    identity: SupernetIdentity,
    budget: Budget,
    options: SupernetTraining = SupernetTraining(),
) -> SupernetTrainResult:
    """Train (or resume, or find already trained) the supernet of `space` on `data` into `folder`."""
    manifest = _read_manifest(folder)
    if manifest is not None and manifest.get("identity") != asdict(identity):
        differs = _difference(manifest.get("identity"), identity)
        raise BadInput(
            f"{folder} holds a supernet trained with other settings ({differs}); use another --out, or the same "
            "settings to resume it"
        )
    seed, device = options.seed, options.device
    torch.manual_seed(seed)  # the shared weights' initial values (a resume replaces them from its checkpoint)
    supernet = Supernet(space, identity.input_size, identity.channels, identity.num_classes, identity.plan_size)
    summary = state_summary(supernet) | {"sub_networks": every_layout(space)}
    if manifest is not None and manifest.get("complete"):
        _load_weights(supernet, folder)  # a damaged file is named here, not later in a search
        return SupernetTrainResult(folder, int(manifest["steps"]), float(manifest.get("seconds", 0)), 0, True,
                                   summary["params"], summary["sub_networks"])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    normalizer = Normalizer.fit(data.train.images[: budget.train_size])
    _write_manifest(folder, identity, normalizer, complete=False, steps=0, **summary)
    try:
        with device.session():
            run = _SupernetRun(identity, normalizer, budget, options)
            steps, seconds, resumed = _train(supernet, space, data, folder, run)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; the last checkpoint is kept for a resume
        if not is_allocation_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or ["?"])[0][:200]
        raise OutOfMemory(
            f"out of memory on {device.describe()} training the supernet ({first}); lower --batch-size"
        ) from None
    supernet.to("cpu")
    write_atomic(folder / WEIGHTS_FILE, _safetensors_bytes(supernet))
    _write_manifest(folder, identity, normalizer, complete=True, steps=steps, seconds=round(seconds, 1), **summary)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # the weights file and manifest hold what is kept
    return SupernetTrainResult(folder, steps, seconds, resumed, False, summary["params"], summary["sub_networks"])


def _difference(stored: Any, identity: SupernetIdentity) -> str:
    if not isinstance(stored, dict):
        return "no identity recorded"
    mine = asdict(identity)
    changed = [key for key in mine if stored.get(key) != mine[key]]
    return ", ".join(f"{key} {stored.get(key)!r} there, {mine[key]!r} here" for key in changed[:3]) or "?"


def _safetensors_bytes(supernet: Supernet) -> bytes:
    from safetensors.torch import save

    return save({name: tensor.contiguous() for name, tensor in supernet.tensors().items()}, metadata={"format": FORMAT})


def _load_weights(supernet: Supernet, folder: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError, ValueError) as exc:
        raise BadInput(
            f"{path}: damaged or missing supernet weights ({str(exc).splitlines()[0][:120]}); "
            "train it again with 'mbsearch supernet train'"
        ) from None
    supernet.load_tensors(tensors, str(path))


def _train(
    supernet: Supernet, space: SearchSpace, data: Dataset, folder: Path, run: _SupernetRun
) -> tuple[int, float, int]:
    """The sandwich rule's steps in the one training loop; the state is checkpointed to `folder` at each
    epoch's end and every `run.checkpoint_every_s` seconds (atomically: a kill loses at most that much)."""
    device, budget, seed = run.options.device, run.budget, run.options.seed
    supernet.to(device.device)
    train_split = data.train.to(device.device, budget.train_size)
    checkpoint_path = folder / CHECKPOINT_FILE
    saved = _read_checkpoint(checkpoint_path, run.identity) if checkpoint_path.is_file() else None
    draws = random.Random(seed)
    trainee = _sandwich(supernet, space, budget, device, draws, str(checkpoint_path))

    def save(step: int, state: Callable[[], dict[str, Any]]) -> None:
        if step < total:  # the finished supernet is written as its weights file, not as a checkpoint
            buffer = io.BytesIO()
            torch.save(state() | {"identity": json.dumps(asdict(run.identity), sort_keys=True)}, buffer)
            write_atomic(checkpoint_path, buffer.getvalue())

    total = max(1, round(budget.epochs * math.ceil(len(train_split) / budget.batch_size)))
    options = LoopOptions(seed, device, run.options.on_step, save, run.options.checkpoint_every_s, saved)
    supernet.train()
    result = run_loop(trainee, train_split, run.normalizer.to(device.device), budget, options)
    return result.steps, result.seconds, int(saved["step"]) if saved else 0


@dataclass(frozen=True)
class _SupernetRun:
    identity: SupernetIdentity
    normalizer: Normalizer
    budget: Budget
    options: SupernetTraining


def _sandwich(
    supernet: Supernet, space: SearchSpace, budget: Budget, device: TrainingDevice, draws: random.Random, source: str
) -> Trainee:
    """One step of the sandwich rule: the largest on the labels, the smallest and RANDOM_PER_STEP random
    sub-networks on the largest's soft predictions (in-place distillation); the loop takes one optimizer
    step for all, their summed gradients clipped."""
    big, small = largest(space), smallest(space)

    def step(images: torch.Tensor, labels: torch.Tensor, scaler: torch.amp.GradScaler) -> StepOutput:
        with device.autocast():
            teacher = supernet(images, *big)
            loss = F.cross_entropy(teacher, labels, label_smoothing=budget.label_smoothing)
        scaler.scale(loss).backward()
        soft = teacher.detach().float().softmax(1)
        total = loss.detach().float()
        for width, decisions in [small] + [random_decisions(space, draws) for _ in range(RANDOM_PER_STEP)]:
            with device.autocast():
                logits = supernet(images, width, decisions)
                distill = -(soft * F.log_softmax(logits.float(), 1)).sum(1).mean()
            scaler.scale(distill).backward()
            total = total + distill.detach()
        return StepOutput(total, teacher.detach())

    def state() -> dict[str, Any]:
        return {"weights": {name: tensor.cpu() for name, tensor in supernet.tensors().items()},
                "draws": _json_state(draws.getstate())}  # fmt: skip

    def load_state(saved: dict[str, Any]) -> None:
        supernet.load_tensors(saved["weights"], source)
        draws.setstate(_python_state(saved["draws"]))

    return Trainee(list(supernet.weights.values()), step, state, load_state, GRAD_CLIP, "; lower --lr")


def _json_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state(saved: list) -> tuple:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def _read_checkpoint(path: Path, identity: SupernetIdentity) -> dict[str, Any]:
    """A checkpoint of this very training, or one line naming it: a damaged or foreign file is never used."""
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # any damage, whatever torch raises for it
        raise BadInput(
            f"{path}: damaged supernet checkpoint ({type(exc).__name__}); delete it to train from the start"
        ) from None
    if not isinstance(saved, dict) or saved.get("identity") != json.dumps(asdict(identity), sort_keys=True):
        raise BadInput(f"{path}: a checkpoint of another supernet training; delete it or use another --out")
    return saved


def open_supernet(space: SearchSpace, folder: Path, expected: dict[str, Any] | None = None) -> TrainedSupernet:
    """The trained supernet in `folder`, loaded for `space`; refused with one line where it is missing,
    unfinished, damaged, or made for another space, dataset, split or input size (`expected`: the search's
    SupernetIdentity.data_key())."""
    manifest = _read_manifest(folder)
    if manifest is None:
        raise BadInput(
            f"no supernet in {folder}; train one with 'mbsearch supernet train' (same --space, --dataset and "
            "--input-size as the search) or pass --supernet DIR"
        )
    if not manifest.get("complete"):
        raise BadInput(
            f"the supernet in {folder} is not finished ({manifest.get('steps', 0)} steps saved); rerun "
            "'mbsearch supernet train' with the same options to resume it"
        )
    try:
        identity = SupernetIdentity(**manifest["identity"])
        normalizer = Normalizer(
            torch.tensor(manifest["normalizer"]["mean"])[:, None, None],
            torch.tensor(manifest["normalizer"]["std"])[:, None, None],
        )
    except (KeyError, TypeError) as exc:
        raise BadInput(f"{folder / MANIFEST_FILE}: incomplete manifest ({exc}); train the supernet again") from None
    if identity.space_digest != space_digest(space):
        raise BadInput(
            f"the supernet in {folder} was trained for another space ({identity.space}, {identity.space_digest}); "
            f"train one for space {space.name} with 'mbsearch supernet train --space ...'"
        )
    if expected is not None and identity.data_key() != expected:
        mine = identity.data_key()
        changed = [
            f"{key} {mine[key]!r} (the search: {expected.get(key)!r})" for key in mine if mine[key] != expected.get(key)
        ]
        raise BadInput(
            f"the supernet in {folder} was trained for {', '.join(changed[:3])}; train one for this search with "
            "'mbsearch supernet train'"
        )
    supernet = Supernet(space, identity.input_size, identity.channels, identity.num_classes, identity.plan_size)
    _load_weights(supernet, folder)
    supernet.eval()
    return TrainedSupernet(supernet, identity, normalizer, manifest, folder)


@dataclass(frozen=True)
class InheritedScore:
    """A sub-network's validation accuracy with weights inherited from the supernet."""

    accuracy: float
    seconds: float
    calibration_images: int
    model: torch.nn.Module | None = field(default=None, compare=False, repr=False)  # the scored network, on the CPU
    finetune_steps: int = 0


def finetune_budget(steps: int) -> Budget:
    """The short training of --finetune-steps: `steps` batches of FINETUNE_BATCH, each image seen once."""
    return Budget(epochs=1, train_size=steps * FINETUNE_BATCH, batch_size=FINETUNE_BATCH, lr=FINETUNE_LR)


@dataclass(frozen=True)
class InheritedScoring:
    """How a sub-network is scored with inherited weights: BatchNorm statistics recomputed on the first
    `calibration_images` training images, scored on the first `val_images` validation images (all: None),
    after `finetune_steps` of training seeded by `seed` (none: 0)."""

    calibration_images: int = CALIBRATION_IMAGES
    val_images: int | None = None
    finetune_steps: int = 0
    seed: int = 0


def score_inherited(
    trained: TrainedSupernet,
    arch: Arch,
    data: Dataset,
    scoring: InheritedScoring = InheritedScoring(),
    device: TrainingDevice = CPU,
) -> InheritedScore:
    """Copy `arch`'s weights out of the supernet, recompute its BatchNorm statistics on the first
    `calibration_images` training images, and score it on the validation split (its first `val_images`).

    With `finetune_steps`, the inherited network first trains that many steps (seeded by `seed`) on the first
    training images, and its statistics are recomputed on those: inherited weights of a sub-network that
    the supernet's training rarely drew are a poor start, and a few steps repair much of it (measured)."""
    started = time.perf_counter()
    model = trained.supernet.extract(arch)
    val = data.val if scoring.val_images is None else data.val.head(scoring.val_images)
    if scoring.finetune_steps:
        budget = finetune_budget(scoring.finetune_steps)
        result = train(model, data.train, val, budget, TrainOptions(scoring.seed, trained.normalizer, device=device))
        calibrated = min(len(data.train), budget.train_size, RECALIBRATION_IMAGES)  # train()'s, its first images
        # the steps that ran: fewer than asked where the training split is shorter than steps x batch
        return InheritedScore(result.accuracy, time.perf_counter() - started, calibrated, model, result.steps)
    normalize = trained.normalizer.to(device.device)
    lock = device.step_lock()
    with device.session():
        model.to(device.device, memory_format=torch.channels_last)
        calibration = data.train.to(device.device, scoring.calibration_images)
        batches = math.ceil(len(calibration) / RECALIBRATION_BATCH)
        with lock():
            recalibrate_batchnorm(model, calibration, normalize, batches=batches)
        accuracy = score(model, val, normalize, batch_lock=lock)
    model.to("cpu")
    return InheritedScore(accuracy, time.perf_counter() - started, len(calibration), model)
