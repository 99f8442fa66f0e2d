"""A trained network as the int8 graph a user deploys, scored as ONNX Runtime runs it: the one int8 scoring
path for the search's trials, `verify`, the report's baselines and `mbsearch train --precision int8`."""

from __future__ import annotations

import numpy as np
import torch

from mbsearch.architecture.arch import Arch
from mbsearch.device import hostlock
from mbsearch.nn.onnx_export import export_onnx
from mbsearch.nn.quantize import CALIBRATION_IMAGES, onnx_accuracy, quantize_int8
from mbsearch.train.data import Split
from mbsearch.train.loop import Normalizer


class Int8Scorer:
    """Quantize trained networks (activation ranges calibrated on the first training images, never
    validation or test ones) and score the int8 graph on `eval_split`. Holds the normalised images, made
    once: every network scored reuses them."""

    def __init__(self, train_images: torch.Tensor, normalizer: Normalizer, eval_split: Split) -> None:
        with torch.no_grad():
            self.calibration = normalizer(train_images[:CALIBRATION_IMAGES]).numpy()
            self.images = normalizer(eval_split.images).numpy()
        self.labels = eval_split.labels.numpy().astype(np.int64)

    # Calibration and scoring run ONNX Runtime on this host's CPU: they hold the host's training lock, as a
    # training step does, so that no latency is timed on this host meanwhile.
    def quantize(self, model: torch.nn.Module, arch: Arch) -> bytes:
        with hostlock.training():
            return quantize_int8(export_onnx(model, arch).data, self.calibration)

    def score(self, graph: bytes) -> float:
        """The int8 graph's accuracy on the evaluation split."""
        with hostlock.training():
            return onnx_accuracy(graph, self.images, self.labels)

    def __call__(self, model: torch.nn.Module, arch: Arch) -> tuple[float, bytes]:
        """The int8 graph's accuracy on the evaluation split, and the graph."""
        graph = self.quantize(model, arch)
        return self.score(graph), graph
