"""`mbsearch supernet train` and the search's supernet evaluator: the settings, the data, and the supernet
that a search on that data finds. The training and scoring themselves are train/supernet.py's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mbsearch.architecture.sample import check_space_fits
from mbsearch.architecture.space import SearchSpace, load_space
from mbsearch.study.config import RunConfig
from mbsearch.study.supernet_config import SupernetConfig
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset, FolderReading, load_dataset
from mbsearch.train.device import resolve_device
from mbsearch.train.image_cache import default_cache_dir
from mbsearch.train.supernet import (
    SupernetIdentity,
    SupernetTraining,
    SupernetTrainResult,
    TrainedSupernet,
    default_dir,
    open_supernet,
    train_supernet,
)


def _data(space: SearchSpace, config: SupernetConfig) -> Dataset:
    reading = FolderReading(config.skip_bad_images, default_cache_dir(config.runs_dir))
    data = load_dataset(config.dataset, config.data_dir, config.input_size, config.channels, config.val_size,
                        config.seed, reading)  # fmt: skip
    check_space_fits(space, data.size, data.channels, data.num_classes)
    return data


def train_for(
    config: SupernetConfig, on_step: Callable[[int, int, float, float], None] | None = None
) -> SupernetTrainResult:
    """Train (or resume) the supernet `config` describes; returns its folder's result."""
    training = resolve_device(config.device)  # a device this machine lacks is refused before any work
    space = load_space(config.space)
    data = _data(space, config)
    budget = Budget(
        epochs=config.epochs, train_size=min(config.train_size or len(data.train), len(data.train)),
        batch_size=config.batch_size, lr=config.lr,
    )  # fmt: skip
    identity = SupernetIdentity.of(
        space, data, config.data_dir, config.val_size, budget, config.seed, config.latency_input_size
    )
    folder = config.out or default_dir(config.runs_dir, space, data.name, data.size)
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads or previous)
    try:
        return train_supernet(space, data, folder, identity, budget, SupernetTraining(config.seed, training, on_step))
    finally:
        torch.set_num_threads(previous)


def search_identity(config: RunConfig, space: SearchSpace, data: Dataset) -> dict[str, Any]:
    """What a search shares with the supernet it may use (SupernetIdentity.data_key)."""
    budget = Budget()  # not part of the data key
    return SupernetIdentity.of(
        space, data, config.data_dir, config.val_size, budget, config.seed, config.latency_input_size
    ).data_key()


def open_for_search(config: RunConfig, space: SearchSpace, data: Dataset) -> TrainedSupernet:
    """The supernet a `run --evaluator supernet` scores with, refused with one line where there is none
    for its space, data, split and input."""
    folder = config.supernet or default_dir(config.runs_dir, space, data.name, data.size)
    return open_supernet(space, Path(folder), search_identity(config, space, data))
