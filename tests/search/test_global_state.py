"""Library calls leave the caller's logging levels and warning filters as they were."""

from __future__ import annotations

import logging
import warnings

import torch

from mbsearch.architecture.zoo import reference_arch
from mbsearch.nn.cost import count_macs
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import export_onnx
from mbsearch.study.storage import open_storage


def test_cost_export_and_storage_do_not_change_global_logging_or_warnings(tmp_path) -> None:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    torch.manual_seed(0)
    model = build_model(arch)
    loggers = {name: logging.getLogger(name).level for name in ("fvcore", "torch.onnx", "optuna")}
    filters = list(warnings.filters)
    count_macs(model, arch)
    export_onnx(model, arch, fast=False)  # the dynamo path, which quiets torch.onnx's logger
    open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=10, grace_period=30, max_retry=1)
    assert {name: logging.getLogger(name).level for name in loggers} == loggers
    assert list(warnings.filters) == filters


def test_a_search_restores_the_callers_thread_count(tmp_path) -> None:
    """Issue 18: run_search set torch's thread count for its training and left it changed."""
    from mbsearch.search.loop import run_search
    from mbsearch.study.config import RunConfig

    before = torch.get_num_threads()
    torch.set_num_threads(2 if before != 2 else 1)
    expected = torch.get_num_threads()
    try:
        run_search(
            RunConfig(
                runs_dir=tmp_path, trials=1, sampler="random", train_size=64, val_size=64, epochs=0.5, train_threads=3
            )
        )
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
