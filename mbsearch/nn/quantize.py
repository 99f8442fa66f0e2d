"""ONNX -> int8 ONNX: ONNX Runtime static quantization, and the accuracy of a graph as ONNX Runtime runs it.

The recipe (INT8_RECIPE) is what the field found works for MobileNets on CPUs: QDQ format, per-channel
weights (per-tensor collapses MobileNetV3's accuracy: about 54% against 69% on ImageNet, ONNX Runtime
issue 11415), unsigned 8-bit activations and signed weights (U8S8, the VNNI instructions' operands), MinMax
calibration on training images, never validation or test ones. The graph is pre-processed first (shape
inference and ONNX Runtime's fusions, `quant_pre_process`), as ONNX Runtime's documentation asks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mbsearch.errors import RuntimeFailure

CALIBRATION_IMAGES = 256  # training images the activation ranges are calibrated on


def int8_recipe() -> dict[str, Any]:
    """The quantization settings, recorded with every study, cache key and table that uses them."""
    import onnxruntime

    return {
        "format": "QDQ",
        "per_channel": True,
        "activations": "QUInt8",
        "weights": "QInt8",
        "reduce_range": False,
        "calibration": "MinMax",
        "calibration_images": CALIBRATION_IMAGES,
        "onnxruntime": onnxruntime.__version__,
    }


def noise_calibration(shape: tuple[int, ...], count: int = 32) -> np.ndarray:
    """Seeded noise images of a batch-1 input shape: calibration for a graph that is timed, not scored.
    Calibration sets the scales, not the kernels that run, so the latency is the deployed graph's."""
    return np.random.default_rng(0).standard_normal((count, *shape[1:])).astype(np.float32)


class QuantizationFailed(RuntimeFailure):
    """A graph ONNX Runtime could not quantize (an operator without int8 kernels, a failed calibration)."""


class _Images:
    """ONNX Runtime's CalibrationDataReader over a batch-1 graph: one image per call."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        self.name, self.images, self.index = name, images, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            return None
        image = self.images[self.index : self.index + 1]
        self.index += 1
        return {self.name: image}

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """The int8 graph of a float ONNX graph (batch 1), its activation ranges calibrated on `calibration`
    (float32, N x C x H x W, normalised as the model's inputs are). Fails with one line naming the cause."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise QuantizationFailed("int8 calibration needs training images; none were given")
    name = onnx.load_from_string(model).graph.input[0].name
    with tempfile.TemporaryDirectory() as folder:
        source, prepared, quantized = (Path(folder) / f for f in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(quantized),
                _Images(name, np.ascontiguousarray(calibration, dtype=np.float32)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # ONNX Runtime raises many kinds for a graph it cannot quantize
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise QuantizationFailed(f"int8 quantization failed: {reason}") from None
        return quantized.read_bytes()


def onnx_accuracy(model: bytes, images: np.ndarray, labels: np.ndarray, threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX graph (batch 1) as ONNX Runtime runs it on the CPU, one image at a time:
    the very numbers a deployment gets, int8 kernels included."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise QuantizationFailed(f"ONNX Runtime cannot run the graph: {reason}") from None
    name = session.get_inputs()[0].name
    correct = 0
    for index in range(len(images)):
        logits = session.run(None, {name: images[index : index + 1]})[0]
        correct += int(np.argmax(logits[0]) == labels[index])
    return correct / max(1, len(images))
