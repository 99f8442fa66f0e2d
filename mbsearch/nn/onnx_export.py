"""torch.nn.Module -> ONNX bytes, as the deployed model would run."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.files import write_atomic
from mbsearch.nn.model import build_model

OPSET = 18
_NAMES = {"input_names": ["input"], "output_names": ["logits"]}
_fallback_warned = False


@dataclass(frozen=True)
class Exported:
    data: bytes
    exporter: str  # "torchscript" (fast) or "dynamo"


def _torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in torch 2.x
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET, **_NAMES)
    return buffer.getvalue()


def _dynamo(model: nn.Module, example: torch.Tensor) -> bytes:
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # scoped to this call: the exporter logs every pass it runs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, verbose=False, **_NAMES)
    finally:
        logger.setLevel(level)
    return program.model_proto.SerializeToString()


def export_onnx(model: nn.Module, arch: Arch, fast: bool = True) -> Exported:
    """Export the network of `arch` at batch 1 (see export_module)."""
    return export_module(model, (1, arch.input.channels, arch.input.size, arch.input.size), fast)


def export_module(model: nn.Module, shape: tuple[int, ...], fast: bool = True) -> Exported:
    """Export at batch 1 in eval mode, saying which exporter ran.

    `fast` uses the TorchScript exporter: 0.4 s per candidate here against 2-6 s for the dynamo exporter
    (benchmarks/README.md), which matters when every trial exports. Where it fails (an operator it
    cannot export, or a torch without it) the dynamo exporter takes over, with a warning the first time.
    """
    global _fallback_warned
    was_training = model.training
    model.eval()
    example = torch.zeros(shape)
    try:
        if fast:
            try:
                return Exported(_torchscript(model, example), "torchscript")
            except (torch.onnx.errors.OnnxExporterError, RuntimeError, TypeError, AttributeError) as exc:
                # OnnxExporterError: an unsupported operator; RuntimeError: a tracing failure;
                # TypeError/AttributeError: a torch whose export() no longer takes dynamo=False.
                if not _fallback_warned:
                    _fallback_warned = True
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    print(
                        f"warning: the fast ONNX exporter failed ({reason}); using the dynamo exporter, "
                        "2-6 s per candidate",
                        file=sys.stderr,
                    )
        return Exported(_dynamo(model, example), "dynamo")
    finally:
        model.train(was_training)


def to_onnx(model: nn.Module, arch: Arch, fast: bool = True) -> bytes:
    """ONNX bytes (see export_onnx)."""
    return export_onnx(model, arch, fast).data


def exporter_identity(exporter: str) -> dict[str, str | int]:
    """What a timed graph depends on besides the network: the exporter, its torch and the opset. Lookup
    tables record it, and refuse to predict for another (the graphs, and so the timings, differ)."""
    return {"exporter": exporter, "torch": torch.__version__.split("+")[0], "opset": OPSET}


def write_onnx(arch: Arch, path: Path, model: nn.Module | None = None) -> None:
    """Write a checked ONNX file: the very graph a search times (export_onnx, same exporter and opset), so
    the latency a study reports is the latency of the file a user deploys (issue 20)."""
    model = model or build_model(arch)
    data = to_onnx(model, arch)
    onnx.checker.check_model(onnx.load_from_string(data))
    write_atomic(path, data)
