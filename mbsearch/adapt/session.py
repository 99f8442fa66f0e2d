"""`mbsearch adapt` as one library call: the settings as a typed model (the command's options are made from
it), then load, train if needed, iterate and finish, resumable from the saved state."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mbsearch.adapt.config import AdaptConfig
from mbsearch.adapt.netadapt import OUTPUT_FILES, STATE, Adapter, Settings, Step, adapt, begin, finish
from mbsearch.adapt.widths import trimmable
from mbsearch.architecture.arch import Arch, load_arch
from mbsearch.errors import BadInput
from mbsearch.files import check_output_folder, check_regular_file
from mbsearch.latency.factory import open_target
from mbsearch.latency.targets import check_target_precision
from mbsearch.nn.model import build_model
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_dataset
from mbsearch.train.device import resolve_device
from mbsearch.train.loop import TrainOptions, train


@dataclass(frozen=True)
class AdaptOutcome:
    adapted: Arch
    trajectory: list[Step]
    goal_ms: float
    out_dir: Path

    def summary(self) -> str:
        metrics = self.adapted.metrics or {}
        first, last = self.trajectory[0], self.trajectory[-1]
        met = "met" if metrics["latency_ms"] <= self.goal_ms else "NOT met"
        return (
            f"{first.latency_ms:.3f} ms -> {metrics['latency_ms']:.3f} ms (goal {self.goal_ms:.3f} ms, {met}) in "
            f"{last.iteration} iteration(s); validation accuracy {first.accuracy:.4f} -> "
            f"{metrics['val_accuracy']:.4f}; {first.params:,} -> {metrics['params']:,} params; "
            f"adapted.json, model.safetensors, model.onnx, trajectory.csv/html in {self.out_dir}"
        )


def run_adapt(config: AdaptConfig, on_event: Callable[[str], None]) -> AdaptOutcome:
    """NetAdapt on the arch `config` names, from its weights or a first training; resumes a saved state.
    Every input and output is checked before any training. The thread count is restored."""
    spec = load_arch(config.arch)
    if config.weights is not None:
        check_regular_file(config.weights, "--weights")  # a FIFO would block the read forever
    out = config.out_dir
    inputs = {"the --weights file": config.weights, "the arch file": config.arch}
    check_output_folder("--out", out, OUTPUT_FILES, STATE, inputs)
    if not trimmable(spec):
        raise BadInput(f"{config.arch}: every width is at its floor of 8 channels; nothing to trim")
    training = resolve_device(config.device)  # refused before the target is contacted or data loaded
    device = open_target(config.target, "onnxruntime", config.threads, config.target_token)
    check_target_precision(device, "fp32")  # NetAdapt times float networks: not an agent kept for int8
    dataset = config.dataset or (spec.provenance or {}).get("dataset", "fashion-mnist")
    data = load_dataset(dataset, config.data_dir, None, spec.input.channels, config.val_size, config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        model = _start_model(config, spec)
        finetune = Budget(epochs=1.0, train_size=min(config.finetune_images, len(data.train)), batch_size=64, lr=0.001)
        settings = Settings(
            finetune,
            config.first_reduction,
            config.decay,
            config.max_iterations,
            config.seed,
            config.timing_sessions,
            training,
        )
        adapter = Adapter(device, data, settings, out, on_event=on_event)
        if config.weights is None and not (out / STATE).is_file():
            on_event(f"training {spec.name or config.arch} first ({config.train_size} images, 1 epoch)")
            first = Budget(train_size=min(config.train_size, len(data.train)))
            train(model, data.train, data.val, first, TrainOptions(config.seed, adapter.normalizer, device=training))
        source = _source(config, spec, device.device()["fingerprint"])
        current, model, trajectory, goal = begin(adapter, spec, model, source, config.goal_for)
        current, model, trajectory = adapt(adapter, current, model, trajectory, goal, source)
        final = Budget(epochs=config.final_epochs, train_size=len(data.train), batch_size=128, lr=0.002)
        provenance = {
            "adapted_from": str(config.arch),
            "source_name": spec.name,
            "source_provenance": spec.provenance,
            "latency_target_ms": goal,
            "target": device.name,
            "device": device.device()["fingerprint"],
            "dataset": dataset,
        }
        adapted = finish(adapter, current, model, trajectory, final, provenance)
    finally:
        torch.set_num_threads(previous_threads)
    return AdaptOutcome(adapted, trajectory, goal, out)


def _start_model(config: AdaptConfig, spec: Arch) -> torch.nn.Module:
    model = build_model(spec)
    if config.weights is not None:
        try:
            model.load_state_dict(load_file(config.weights))
        except (SafetensorError, RuntimeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0][:200]
            raise BadInput(
                f"{config.weights}: not the weights of {config.arch} ({reason}); "
                "use the model.safetensors 'train' wrote"
            ) from None
    return model


def _source(config: AdaptConfig, spec: Arch, fingerprint: str) -> dict[str, Any]:
    """What the saved state was made from: a resume with other inputs is refused, not mixed."""
    return {
        "arch": hashlib.sha256(spec.key().encode()).hexdigest()[:16],
        "weights": str(config.weights) if config.weights else None,
        "latency_target": config.latency_target,
        "latency_reduction": config.latency_reduction,
        "device": fingerprint,
    }
