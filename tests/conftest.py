"""Shared fixtures. Tests run on real data, real training and real storage; nothing is mocked."""

from __future__ import annotations

import logging
import os

import pytest
import torch

# Two threads on two cores make timings and training erratic; tests pin one thread like the tool does.
torch.set_num_threads(1)
import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("optuna").setLevel(logging.WARNING)
os.environ.setdefault("MBSEARCH_NO_PROGRESS", "1")


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()
