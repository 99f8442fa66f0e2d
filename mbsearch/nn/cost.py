"""Parameter and MAC counts. MACs come from fvcore, counting conv and linear layers as the papers do."""

from __future__ import annotations

import logging
import warnings

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from mbsearch.architecture.arch import Arch

# fvcore counts one multiply-add as one "flop", i.e. MACs (the papers' MAdds). Like the papers we count
# conv and linear layers only, not BatchNorm, pooling or the SE gate's multiply.
_COUNTED_OPS = ("conv", "linear", "matmul", "addmm", "einsum", "bmm")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, arch: Arch) -> tuple[int, dict[str, int]]:
    """Total MACs of conv and linear layers at batch 1, and MACs per module name."""
    example = torch.zeros(1, arch.input.channels, arch.input.size, arch.input.size)
    was_training = model.training
    model.eval()
    # fvcore logs every op it does not count (hardswish, mul, add); those are not MACs by design.
    # Quieted for this call only: the caller's logging and warning settings are left as they were.
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, example)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_module = {
                name: sum(count for op, count in ops.items() if op in _COUNTED_OPS)
                for name, ops in analysis.by_module_and_operator().items()
            }
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return by_module[""], by_module
